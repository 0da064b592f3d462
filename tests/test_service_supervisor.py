"""The supervisor restarts children that die and stops them all, by force if it must."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from service.supervisor import Child, Supervisor

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', "
    "flush=True); time.sleep(60)",
]


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_dead_child_is_started_again_and_all_stop() -> None:
    worker, web = Child("worker", SLEEPER), Child("web", SLEEPER)
    supervisor = Supervisor([worker, web], min_backoff=0.1, check_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,))
    supervisor.start()
    thread.start()
    try:
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: worker.pid != first and worker.alive())
        assert worker.restarts == 1
        assert web.restarts == 0 and web.alive()  # the others are left alone
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    for child in (worker, web):
        assert child.proc is not None and child.proc.returncode is not None
        assert not alive(child.proc.pid)


def test_back_off_grows_while_a_child_keeps_dying() -> None:
    crasher = Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"])
    supervisor = Supervisor([crasher], min_backoff=0.05, max_backoff=0.2, check_interval=0.02)
    stop = threading.Event()
    supervisor.start()
    thread = threading.Thread(target=supervisor.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: crasher.restarts >= 3)
        assert crasher.backoff == 0.2  # doubled up to the cap, not a tight loop
    finally:
        stop.set()
        thread.join(20)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    stubborn = Child("stubborn", STUBBORN)
    supervisor = Supervisor([stubborn], stop_timeout=1.0)
    supervisor.start()
    time.sleep(1.0)  # let it install its handler
    started = time.monotonic()
    supervisor.stop()
    assert time.monotonic() - started < 10
    assert stubborn.proc is not None and stubborn.proc.returncode == -signal.SIGKILL
