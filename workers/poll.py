"""Polling: drain the database every few seconds, for when no broker wake-up arrives."""

from __future__ import annotations

import logging
import threading

from workers.processing import BatchProcessor

log = logging.getLogger(__name__)


def run_poll_loop(processor: BatchProcessor, interval: float, stop_event: threading.Event) -> int:
    """Drain, then wait ``interval`` seconds (or until ``stop_event``); returns images settled.

    An error in one round (the database briefly away) is logged and the loop goes on.
    """
    total = 0
    while not stop_event.is_set():
        try:
            total += processor.drain()
        except Exception:  # keep polling: the next round retries
            log.exception("worker %s: poll round failed", processor.worker_id)
        stop_event.wait(interval)
    return total
