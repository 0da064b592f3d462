"""Image sources other than the REST intake: watched folders (``run_watch``)."""
