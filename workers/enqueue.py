"""The web's wake-up: ``make_enqueue(app)`` is what ``web.create_app(enqueue=...)`` takes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from workers.broker import WAKE_TASK

log = logging.getLogger(__name__)


def make_enqueue(celery_app: Celery) -> Callable[[str], None]:
    """A function that sends ``inspector.wake(job_id)``; the job is already in the database."""

    def enqueue(job_id: str) -> None:
        celery_app.send_task(WAKE_TASK, args=(job_id,))
        log.info("job %s: wake-up sent", job_id)

    return enqueue
