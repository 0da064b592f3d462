"""Entry point for the ``celery`` command: ``celery -A workers.worker:app worker``.

Importing this module builds the app from the environment, so only the celery command should.
"""

from __future__ import annotations

from workers.celery_app import make_celery

app = make_celery()
