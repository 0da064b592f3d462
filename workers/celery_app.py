"""The Celery app: a wake-up task that drains the database's queue with a ``BatchProcessor``.

The broker carries only wake-ups; the database is the truth. So a lost or duplicated message
costs nothing, and a late ack plus requeue on a lost worker is all the delivery care needed.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from inspector.db.engine import check_revision, make_engine
from inspector.settings import Settings
from inspector.store import ModelStore
from workers.config import WorkerSettings
from workers.processing import BatchProcessor

log = logging.getLogger(__name__)

WAKE_TASK = "inspector.wake"


def queue_folders(settings: Settings) -> dict[str, Path]:
    """The filesystem broker's folders under ``<data_dir>/queue/``."""
    root = settings.data_dir / "queue"
    return {
        "data_folder_in": root / "messages",
        "data_folder_out": root / "messages",  # one host: producers and consumers share it
        "processed_folder": root / "processed",
        "control_folder": root / "control",
    }


def broker_config(settings: Settings, worker: WorkerSettings) -> dict[str, Any]:
    """broker_url and its transport options: Redis when configured, else the filesystem."""
    if worker.broker_url:
        return {
            "broker_url": worker.broker_url,
            # Longer than the longest drain, so an unacked wake-up is not redelivered mid-run.
            "broker_transport_options": {"visibility_timeout": worker.visibility_timeout},
        }
    folders = queue_folders(settings)
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            **{key: str(path) for key, path in folders.items()},
            "store_processed": False,
        },
    }


class ProcessorHolder:
    """One ``BatchProcessor`` per worker process, built on first use (after any fork)."""

    def __init__(self, settings: Settings, worker: WorkerSettings) -> None:
        self.settings = settings
        self.worker = worker
        self._processor: BatchProcessor | None = None
        self._lock = threading.Lock()

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
    app.conf.update(
        **broker_config(settings, worker_settings),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_default_queue=worker_settings.queue,
    )
    holder = ProcessorHolder(settings, worker_settings)
    app.inspector_processors = holder  # for the CLI and tests

    @app.task(name=WAKE_TASK, ignore_result=True)
    def wake(job_id: str | None = None) -> int:
        """Drain every claimable image (not only ``job_id``'s): the database decides the order."""
        processor = holder.get()
        n = processor.drain()
        log.info("wake-up for job %s: worker %s settled %d images", job_id, processor.worker_id, n)
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
