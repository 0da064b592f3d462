"""``inspector run``: set up, then start and supervise the web, the workers and the watcher.

One machine, embedded defaults: a SQLite file and a folder queue under the data directory.
Setup runs in a child process, so this supervising process never loads the model's libraries.
Ctrl-C (or SIGTERM) stops every child cleanly: workers finish the batch in hand.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import FrameType

from inspector.settings import Settings
from service.settings import ServiceSettings
from service.setup import token_path
from service.supervisor import Child, Supervisor, child_env

log = logging.getLogger(__name__)

HEALTH_WAIT_SECONDS = 120.0


def command(log_level: str, *args: str) -> list[str]:
    """The command line of a child: this same program, another subcommand."""
    return [sys.executable, "-m", "service", "--log-level", log_level, *args]


def public_url(service: ServiceSettings) -> str:
    host = service.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{service.port}"


def wait_until_up(url: str, stop: threading.Event, timeout: float) -> bool:
    """True once ``url``/healthz answers 200; False on timeout or stop."""
    deadline = time.monotonic() + timeout
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200 and json.load(response).get("status") == "ok":
                    return True
        except (OSError, urllib.error.URLError, ValueError):
            pass
        stop.wait(0.25)
    return False


def children(
    settings: Settings, service: ServiceSettings, secret_key: str, log_level: str
) -> list[Child]:
    env = child_env(
        {
            "INSPECTOR_SECRET_KEY": secret_key,
            "INSPECTOR_HOST": service.host,
            "INSPECTOR_PORT": str(service.port),
            "INSPECTOR_DATA_DIR": str(settings.data_dir),
        }
    )
    result = [Child("web", command(log_level, "web"), env)]
    for n in range(1, service.run_workers + 1):
        result.append(Child(f"worker-{n}", command(log_level, "worker", "--quiet"), env))
    if service.run_watcher:
        result.append(Child("watcher", command(log_level, "watch"), env))
    return result


def banner(url: str, token: str, settings: Settings, service: ServiceSettings) -> str:
    lines = [
        "",
        f"Inspector is running at {url}",
        f"  data:      {settings.data_dir.resolve()}",
        f"  API token: {token}",
        "  try:       curl -H 'Authorization: Bearer <token>' -F files=@part.png "
        f"{url}/api/v1/jobs",
    ]
    if service.run_watcher:
        lines.append("  or drop images into the watched folders (default: data/inbox)")
    return "\n".join([*lines, "Press Ctrl-C to stop.", ""])


def port_problem(service: ServiceSettings) -> str | None:
    """Why the web could not listen on host:port (taken, or not an address here), or None."""
    try:
        infos = socket.getaddrinfo(service.host, service.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return f"cannot listen on {service.host}:{service.port}: {exc.strerror or exc}"
    return None


def run(settings: Settings, service: ServiceSettings, *, log_level: str = "WARNING") -> int:
    secret_key = service.secret(settings.data_dir)
    problem = port_problem(service)
    if problem:
        print(
            f"error: {problem}; is Inspector already running? Set INSPECTOR_PORT to use "
            "another port.",
            file=sys.stderr,
        )
        return 2
    status = subprocess.call(command(log_level, "setup"))
    if status != 0:
        print(f"error: setup failed (exit status {status}); nothing started", file=sys.stderr)
        return status
    token = token_path(settings).read_text().strip()

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    supervisor = Supervisor(children(settings, service, secret_key, log_level))
    try:
        supervisor.start()
        url = public_url(service)
        if wait_until_up(url, stop, HEALTH_WAIT_SECONDS):
            print(banner(url, token, settings, service), flush=True)
        elif not stop.is_set():
            print(
                f"warning: {url}/healthz did not answer within {HEALTH_WAIT_SECONDS:.0f} s; "
                "still trying (see the messages above)",
                file=sys.stderr,
                flush=True,
            )
        supervisor.run(stop)
    finally:
        supervisor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("Inspector stopped.", flush=True)
    return 0
