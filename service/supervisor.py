"""Start child processes, restart the ones that die, stop them all cleanly.

Plain ``subprocess``: what ``inspector run`` uses to keep the web, the workers and the
watcher up on one machine. A child that dies is started again after a back-off that doubles
while it keeps dying young (1 s up to 30 s) and resets once it has stayed up a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MIN_BACKOFF = 1.0
MAX_BACKOFF = 30.0
STABLE_SECONDS = 60.0  # a child up this long is healthy again: its back-off resets


@dataclass
class Child:
    """One supervised command."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = MIN_BACKOFF
    due_at: float | None = None  # when a dead child is to be started again

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Keeps ``children`` running until ``stop()``; ``events`` reports starts and deaths."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        stop_timeout: float = 30.0,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        check_interval: float = 0.2,
    ) -> None:
        self.children = list(children)
        self.stop_timeout = stop_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.check_interval = check_interval
        self._stopping = threading.Event()

    def _start(self, child: Child) -> None:
        env = None if child.env is None else dict(child.env)
        child.proc = subprocess.Popen(list(child.argv), env=env)
        child.started_at = time.monotonic()
        child.due_at = None
        log.warning("started %s (pid %d)", child.name, child.proc.pid)

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def check(self) -> None:
        """One round: notice dead children, start the ones whose back-off is over."""
        now = time.monotonic()
        for child in self.children:
            if self._stopping.is_set():
                return
            if child.due_at is not None:
                if now >= child.due_at:
                    child.restarts += 1
                    self._start(child)
                continue
            if child.proc is None or child.proc.poll() is None:
                continue
            if now - child.started_at >= STABLE_SECONDS:
                child.backoff = self.min_backoff
            log.error(
                "%s (pid %d) exited with status %s; starting it again in %.0f s",
                child.name,
                child.proc.pid,
                child.proc.returncode,
                child.backoff,
            )
            child.due_at = now + child.backoff
            child.backoff = min(child.backoff * 2, self.max_backoff)

    def run(self, stop: threading.Event) -> None:
        """Supervise until ``stop`` is set, then stop every child."""
        try:
            while not stop.wait(self.check_interval):
                self.check()
        finally:
            self.stop()

    def stop(self) -> None:
        """SIGTERM to every child (each finishes what it holds), SIGKILL after the timeout."""
        self._stopping.set()
        alive = [c for c in self.children if c.alive()]
        for child in alive:
            assert child.proc is not None
            log.warning("stopping %s (pid %d)", child.name, child.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in alive:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) did not stop; killing it", child.name, child.proc.pid)
                child.proc.kill()
                child.proc.wait()


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``: children read the same settings."""
    return {**os.environ, **extra}
