"""The batch workers: Celery wiring around ``workers.processing.BatchProcessor``."""
