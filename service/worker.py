"""``inspector worker``: one Celery worker (one per GPU) plus a poll thread, on one model.

Celery's solo pool runs the wake-ups in this process, where the model is loaded once; the
poll thread drains the database every few seconds, so a lost wake-up delays an image by at
most ``INSPECTOR_POLL_SECONDS`` and never loses it. Both drain through one lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from inspector.settings import Settings
from workers.celery_app import make_celery
from workers.config import WorkerSettings
from workers.heartbeat import run_heartbeat
from workers.poll import run_poll_loop

log = logging.getLogger(__name__)


def celery_argv(name: str, log_level: str, quiet: bool) -> list[str]:
    argv = ["--quiet"] if quiet else []  # a global option of the celery command: before "worker"
    return [
        *argv,
        "worker",
        "--pool=solo",  # the model lives in this process; one worker process per device
        "--concurrency=1",
        f"--loglevel={log_level.upper()}",
        f"--hostname={name}",
        # Wake-ups are all the broker carries: no events, no peer discovery (the folder queue
        # has no broadcast), no heartbeats.
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]


def serve(
    settings: Settings,
    worker: WorkerSettings,
    *,
    name: str | None = None,
    log_level: str = "info",
    quiet: bool = False,
) -> int:
    """Run until Celery is told to stop (SIGTERM/SIGINT: finish the batch in hand, then exit)."""
    app = make_celery(settings, worker)
    holder = app.inspector_processors
    processor = holder.get()  # check the database now
    loaded = processor.preload()  # and load the model now, not on the first image
    log.info("worker %s: ready with %s", processor.worker_id, loaded or "no model yet")
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_poll_loop,
            args=(holder.drain, worker.poll_seconds, stop),
            name="poll",
            daemon=True,
        ),
        threading.Thread(target=run_heartbeat, args=(processor, stop), name="heartbeat"),
    ]
    for thread in threads:
        thread.start()
    hostname = name or f"inspector-{os.getpid()}@{socket.gethostname()}"
    try:
        app.worker_main(celery_argv(hostname, log_level, quiet))
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        holder.close()
    return 0
