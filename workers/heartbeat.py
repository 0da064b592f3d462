"""A worker's heartbeat: every few seconds, "alive, holding these models", in the database."""

from __future__ import annotations

import logging
import os
import socket
import threading

from inspector.db import heartbeats
from inspector.devices import select_device
from workers.processing import BatchProcessor

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0


def beat_once(processor: BatchProcessor) -> None:
    heartbeats.beat(
        processor.engine,
        worker_id=processor.worker_id,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        device=str(select_device(processor.device)),
        models=processor.loaded_models(),
    )


def run_heartbeat(
    processor: BatchProcessor, stop: threading.Event, interval: float = HEARTBEAT_SECONDS
) -> None:
    """Beat every ``interval`` seconds until ``stop``; then record the clean stop."""
    while True:
        try:
            beat_once(processor)
        except Exception:  # the database briefly away: the next beat retries
            log.exception("worker %s: heartbeat failed", processor.worker_id)
        if stop.wait(interval):
            break
    try:
        heartbeats.stopped(processor.engine, processor.worker_id)
    except Exception:
        log.exception("worker %s: could not record the stop", processor.worker_id)
