"""The Celery app: a wake-up task that drains the database's queue with a ``BatchProcessor``.

The broker carries only wake-ups; the database is the truth. So a lost or duplicated message
costs nothing, and a late ack plus requeue on a lost worker is all the delivery care needed.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from inspector.db.engine import check_revision, make_engine
from inspector.settings import Settings
from inspector.store import ModelStore
from workers.broker import WAKE_TASK, celery_config
from workers.config import WorkerSettings
from workers.processing import BatchProcessor

log = logging.getLogger(__name__)


class ProcessorHolder:
    """One ``BatchProcessor`` per worker process, built on first use (after any fork)."""

    def __init__(self, settings: Settings, worker: WorkerSettings) -> None:
        self.settings = settings
        self.worker = worker
        self._processor: BatchProcessor | None = None
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # a wake-up and the poll thread take turns

    def get(self) -> BatchProcessor:
        with self._lock:
            if self._processor is None:
                engine = make_engine(self.settings.database_url)
                check_revision(engine)
                self._processor = BatchProcessor(
                    engine,
                    ModelStore(self.settings.model_store_dir),
                    device=self.settings.device,
                    batch_size=self.settings.batch_size,
                    lease_seconds=self.worker.lease_seconds,
                    max_attempts=self.worker.max_attempts,
                    max_pixels=self.settings.max_image_pixels,
                    default_model=self.worker.default_model,
                )
                log.info("worker %s: ready", self._processor.worker_id)
            return self._processor

    def drain(self) -> int:
        """Settle every claimable image; a second caller waits, then finds what is left."""
        processor = self.get()
        with self._drain_lock:
            return processor.drain()

    def close(self) -> None:
        with self._lock:
            if self._processor is not None:
                self._processor.engine.dispose()
                self._processor = None


def make_celery(
    settings: Settings | None = None, worker_settings: WorkerSettings | None = None
) -> Celery:
    """The Celery app for ``settings`` (default: read from the environment now)."""
    settings = settings or Settings.from_env()
    worker_settings = worker_settings or WorkerSettings.from_env()
    app = Celery("inspector", set_as_current=False)
    app.conf.update(celery_config(settings, worker_settings))
    holder = ProcessorHolder(settings, worker_settings)
    app.inspector_processors = holder  # for the CLI and tests

    @app.task(name=WAKE_TASK, ignore_result=True)
    def wake(job_id: str | None = None) -> int:
        """Drain every claimable image (not only ``job_id``'s): the database decides the order."""
        n = holder.drain()
        log.info(
            "wake-up for job %s: worker %s settled %d images", job_id, holder.get().worker_id, n
        )
        return n

    # Prefork children build the model and engine right after the fork, never in the parent;
    # the solo pool (no fork) builds them on the first wake-up.
    def _init(**_: Any) -> None:
        holder.get()

    def _shutdown(**_: Any) -> None:
        holder.close()

    worker_process_init.connect(_init, weak=False)
    worker_process_shutdown.connect(_shutdown, weak=False)
    return app
