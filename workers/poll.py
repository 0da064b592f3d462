"""Polling: drain the database every few seconds, for when no broker wake-up arrives."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def run_poll_loop(drain: Callable[[], int], interval: float, stop_event: threading.Event) -> int:
    """Call ``drain`` (e.g. ``BatchProcessor.drain``), then wait ``interval`` seconds or until
    ``stop_event``; returns the images settled.

    An error in one round (the database briefly away) is logged and the loop goes on.
    """
    total = 0
    while not stop_event.is_set():
        try:
            total += drain()
        except Exception:  # keep polling: the next round retries
            log.exception("poll round failed; retrying in %.0f s", interval)
        stop_event.wait(interval)
    return total
