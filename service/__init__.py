"""The processes of a deployment: ``inspector web``, ``worker``, ``setup`` and ``run``.

This package composes the core, the web and the workers; it is the only place that knows all
three. ``python -m service`` is the same command line as ``inspector``.
"""
