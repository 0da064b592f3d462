"""``inspector run`` end to end over HTTP: set-up, web and worker under the supervisor, a batch
posted with a corrupt file in it, every result row checked, a killed worker restarted, Ctrl-C.

Once on the embedded defaults (SQLite, folder queue) and once on PostgreSQL and Redis, set by
the two variables an operator sets.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import func, select

from inspector.db.engine import make_engine
from inspector.db.schema import images, results
from inspector.db.testing import DatabaseUnavailableError, postgres_test_url, scratch_postgres
from inspector.store import ModelStore
from tests.test_workers_celery import REDIS_URL, redis_or_skip
from web.testing import multipart_body

REPO = Path(__file__).resolve().parent.parent
START_SECONDS = 120
JOB_SECONDS = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["embedded", "postgresql+redis"])
def run_env(request: pytest.FixtureRequest, tmp_path: Path, store_of: ModelStore) -> Iterator[dict]:
    data = tmp_path / "data"
    env = {
        "INSPECTOR_DATA_DIR": str(data),
        "INSPECTOR_MODEL_STORE": str(store_of.root),
        "INSPECTOR_DEVICE": "cpu",
        "INSPECTOR_BATCH_SIZE": "4",
        "INSPECTOR_PORT": str(free_port()),
        "INSPECTOR_WEB_PROCESSES": "1",
        "INSPECTOR_POLL_SECONDS": "2",
        "INSPECTOR_WATCH_STABILITY_SECONDS": "0.3",
    }
    with ExitStack() as stack:
        if request.param == "postgresql+redis":
            redis_or_skip(REDIS_URL)
            try:
                url = stack.enter_context(scratch_postgres(postgres_test_url()))
            except DatabaseUnavailableError as exc:
                pytest.skip(str(exc))
            env["INSPECTOR_DATABASE_URL"] = url
            env["INSPECTOR_BROKER_URL"] = REDIS_URL
            env["INSPECTOR_QUEUE"] = f"inspector-test-{uuid.uuid4().hex[:8]}"
        yield env


class Stack:
    """``inspector run`` in a subprocess, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.env = env
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                cwd=REPO,
                env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = ""
        self.token = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout: float, after: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.compile(pattern).search(self.log(), after)
            if found:
                return found
            assert self.proc.poll() is None, f"inspector run exited:\n{self.log()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in time; log:\n{self.log()[-4000:]}")

    def wait_until_running(self) -> None:
        self.url = self.wait_for_log(r"Inspector is running at (\S+)", START_SECONDS)[1]
        self.token = self.wait_for_log(r"API token: (\S+)", 5)[1]

    def wait_until_ready(self) -> dict:
        deadline = time.monotonic() + START_SECONDS
        body: dict = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=10) as response:
                    return dict(json.load(response))
            except urllib.error.HTTPError as exc:
                body = json.load(exc)
            time.sleep(0.5)
        raise AssertionError(f"not ready: {body}\n{self.log()[-4000:]}")

    def request(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> dict:
        headers = {"Authorization": f"Bearer {self.token}"}
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(self.url + path, body, headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            return dict(json.load(response))

    def post_images(self, files: list[tuple[str, bytes]]) -> str:
        body, ctype = multipart_body([("files", name, data) for name, data in files], {"lot": "L7"})
        answer = self.request("POST", "/api/v1/jobs", body, ctype)
        return str(answer["job_id"])

    def wait_for_job(self, job_id: str) -> dict:
        deadline = time.monotonic() + JOB_SECONDS
        job: dict = {}
        while time.monotonic() < deadline:
            job = self.request("GET", f"/api/v1/jobs/{job_id}")
            if job.get("finished_at"):
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not finished: {job}\n{self.log()[-4000:]}")

    def jobs_from(self, source: str) -> list[dict]:
        return [j for j in self.request("GET", "/api/v1/jobs")["jobs"] if j["source"] == source]

    def wait_for(self, probe: Callable[[], list], what: str) -> list:
        deadline = time.monotonic() + JOB_SECONDS
        while time.monotonic() < deadline:
            found = probe()
            if found:
                return found
            time.sleep(0.3)
        raise AssertionError(f"no {what} in time\n{self.log()[-4000:]}")

    def pid_of(self, name: str, after: int = 0) -> tuple[int, int]:
        """The pid of the newest start of ``name`` logged after offset ``after``."""
        self.wait_for_log(rf"started {name} \(pid (\d+)\)", START_SECONDS, after)
        *_, last = re.finditer(rf"started {name} \(pid (\d+)\)", self.log()[after:])
        return int(last[1]), after + last.end()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_serves_a_batch_restarts_a_dead_worker_and_stops_cleanly(
    run_env: dict[str, str], tmp_path: Path, demo_dirs: tuple[Path, Path]
) -> None:
    val = demo_dirs[1]
    picked = [p for cls in ("good", "scratch", "crack") for p in sorted((val / cls).iterdir())[:2]]
    files = [(p.name, p.read_bytes()) for p in picked] + [("torn.png", b"\x89PNG\r\n\x1a\n")]
    stack = Stack(run_env, tmp_path / "run.log")
    try:
        stack.wait_until_running()
        assert stack.url == f"http://127.0.0.1:{run_env['INSPECTOR_PORT']}"
        stack.wait_until_ready()  # the worker has loaded the model and said so

        job_id = stack.post_images(files)
        job = stack.wait_for_job(job_id)
        assert job["counts"]["done"] == len(picked) and job["counts"]["error"] == 1, job
        entries = stack.request("GET", f"/api/v1/jobs/{job_id}/results")["results"]
        by_name = {e["filename"]: e for e in entries}
        assert sorted(by_name) == sorted(name for name, _ in files)
        assert by_name["torn.png"]["status"] == "error" and by_name["torn.png"]["error"]
        for path in picked:
            entry = by_name[path.name]
            assert entry["status"] == "done" and entry["model_name"] == "demo", entry
            assert abs(sum(entry["probabilities"].values()) - 1.0) < 1e-3
            assert set(entry["scale_probabilities"]) == {"64", "96"}
        correct = sum(by_name[p.name]["label"] == p.parent.name for p in picked)
        assert correct >= len(picked) - 2, entries  # the tiny model, but not noise

        # The database holds exactly one result per inspected image.
        engine = make_engine(
            run_env.get("INSPECTOR_DATABASE_URL")
            or (f"sqlite:///{Path(run_env['INSPECTOR_DATA_DIR']) / 'inspector.db'}")
        )
        try:
            with engine.connect() as conn:
                ids = conn.execute(select(images.c.id).where(images.c.job_id == job_id)).all()
                n_results = conn.execute(
                    select(func.count())
                    .select_from(results)
                    .where(results.c.image_id.in_([i for (i,) in ids]))
                ).scalar_one()
        finally:
            engine.dispose()
        assert (len(ids), n_results) == (len(files), len(picked))

        # An image dropped into the inbox (written under a temporary name, then renamed) is
        # found by the watcher and inspected like any other.
        inbox = Path(run_env["INSPECTOR_DATA_DIR"]) / "inbox"
        (inbox / "dropped.png.part").write_bytes(picked[0].read_bytes())
        (inbox / "dropped.png.part").rename(inbox / "dropped.png")
        watched = stack.wait_for(lambda: stack.jobs_from("watch"), "a job from the inbox")
        done = stack.wait_for_job(watched[0]["id"])
        assert (done["total"], done["counts"]["done"]) == (1, 1), done
        [entry] = stack.request("GET", f"/api/v1/jobs/{done['id']}/results")["results"]
        assert entry["filename"] == "dropped.png" and entry["label"] in entry["probabilities"]

        # A worker killed outright is started again, and the next job is served.
        worker_pid, seen = stack.pid_of("worker-1")
        assert "exited with status" not in stack.log()  # nothing has died on its own so far
        os.kill(worker_pid, signal.SIGKILL)
        new_pid, _ = stack.pid_of("worker-1", after=seen)
        assert new_pid != worker_pid
        second = stack.wait_for_job(stack.post_images(files[:2]))
        assert second["counts"]["done"] == 2

        web_pid, _ = stack.pid_of("web")
        assert stack.log().count("exited with status") == 1  # only the killed one died
        stack.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert stack.proc.wait(60) == 0, stack.log()[-4000:]
        assert "Inspector stopped." in stack.log()
        watcher_pid, _ = stack.pid_of("watcher")
        assert not alive(new_pid) and not alive(web_pid) and not alive(watcher_pid)
    finally:
        if stack.proc.poll() is None:  # a failed test: stop the children too, not only run
            stack.proc.send_signal(signal.SIGINT)
            try:
                stack.proc.wait(60)
            except subprocess.TimeoutExpired:
                stack.proc.kill()
                stack.proc.wait()
