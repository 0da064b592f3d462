"""The broker side of the queue, without the model: what the web needs to send a wake-up.

Importing this module loads Celery's configuration helpers only (no torch), so the intake
service can publish wake-ups and check the broker without the worker's dependencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from inspector.settings import Settings
from workers.config import WorkerSettings

WAKE_TASK = "inspector.wake"
# How often a worker looks into the folder queue for a wake-up (Kombu's default is 1 s).
FOLDER_POLL_SECONDS = 0.1


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
            "polling_interval": FOLDER_POLL_SECONDS,
        },
    }


def celery_config(settings: Settings, worker: WorkerSettings) -> dict[str, Any]:
    """Celery's settings for the worker and the producer alike.

    The broker only wakes workers, so: acknowledge late (a wake-up taken by a worker that dies
    is delivered again), prefetch one, keep no results.
    """
    return {
        **broker_config(settings, worker),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": worker.queue,
    }


def make_producer(settings: Settings, worker: WorkerSettings) -> Celery:
    """A Celery app that only sends wake-ups (no tasks registered, no model imported)."""
    app = Celery("inspector-producer", set_as_current=False)
    app.conf.update(celery_config(settings, worker))
    return app


def broker_ready(app: Celery, timeout: float = 2.0) -> str:
    """Connect to ``app``'s broker once; raises when it cannot be reached, else names it."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        return str(conn.as_uri())
