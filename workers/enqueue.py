"""The web's wake-up: ``make_enqueue(app)`` is what ``web.create_app(enqueue=...)`` takes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Celery

from workers.broker import WAKE_TASK

log = logging.getLogger(__name__)


# A wake-up is worth little time: when the broker is away, give up fast (the job is already in
# the database and polling workers will find it) rather than stall an upload or the watcher.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def make_enqueue(celery_app: Celery) -> Callable[[str], None]:
    """A function that sends ``inspector.wake(job_id)``; the job is already in the database.

    It raises when the broker cannot be reached within about a second; callers log that and go
    on.
    """

    def enqueue(job_id: str) -> None:
        celery_app.send_task(WAKE_TASK, args=(job_id,), retry=True, retry_policy=PUBLISH_RETRY)
        log.info("job %s: wake-up sent", job_id)

    return enqueue
