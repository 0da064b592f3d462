"""A real Celery worker, end to end: intake through the web, a wake-up, verdicts in the database."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspector.db.engine import make_engine, upgrade
from inspector.settings import Settings
from inspector.store import ModelStore
from web.testing import web_service
from workers.broker import make_producer
from workers.config import WorkerSettings
from workers.enqueue import make_enqueue

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("INSPECTOR_TEST_REDIS_URL") or "redis://127.0.0.1:6379/15"
WAIT_SECONDS = 60


def redis_or_skip(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    finally:
        client.close()


@pytest.fixture
def worker_env(tmp_path: Path, store_of: ModelStore) -> dict[str, str]:
    data = tmp_path / "data"
    data.mkdir()
    env = {
        "INSPECTOR_DATA_DIR": str(data),
        "INSPECTOR_DATABASE_URL": f"sqlite:///{data / 'inspector.db'}",
        "INSPECTOR_MODEL_STORE": str(store_of.root),
        "INSPECTOR_DEVICE": "cpu",
        "INSPECTOR_BATCH_SIZE": "4",
        "INSPECTOR_QUEUE": f"inspector-test-{uuid.uuid4().hex[:8]}",
    }
    engine = make_engine(env["INSPECTOR_DATABASE_URL"])
    upgrade(engine)
    engine.dispose()
    return env


@pytest.fixture
def celery_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """``celery worker --pool=solo`` in a subprocess; yields its log file."""
    log_path = tmp_path / "worker.log"
    env = {**os.environ, **worker_env, "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "celery", "-A", "workers.worker:app", "worker",
        "--pool=solo", "--concurrency=1", "--loglevel=INFO", "--without-heartbeat",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield log_path
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def run_job_through_worker(worker_env: dict[str, str], log_path: Path, val_dir: Path) -> None:
    env = dict(worker_env)
    celery_app = make_producer(Settings.from_env(env), WorkerSettings.from_env(env))
    paths = [sorted((val_dir / cls).iterdir())[0] for cls in ("good", "scratch", "crack")]
    try:
        with web_service(
            Path(env["INSPECTOR_DATA_DIR"]), environ=env, enqueue=make_enqueue(celery_app)
        ) as svc:
            client = svc.client()
            response = client.post(
                "/api/v1/jobs",
                data={"files": [(io.BytesIO(p.read_bytes()), p.name) for p in paths]},
                headers=svc.auth,
            )
            assert response.status_code == 202, response.json
            job_id = response.json["job_id"]
            deadline = time.monotonic() + WAIT_SECONDS
            job: dict = {}
            while time.monotonic() < deadline:
                job = client.get(f"/api/v1/jobs/{job_id}", headers=svc.auth).json
                if job.get("finished_at"):
                    break
                time.sleep(0.5)
            log_text = log_path.read_text(errors="replace")[-4000:]
            assert job.get("finished_at"), f"job not finished: {job}\nworker log:\n{log_text}"
            body = client.get(f"/api/v1/jobs/{job_id}/results", headers=svc.auth).json
            entries = body["results"]
            assert sorted(e["filename"] for e in entries) == sorted(p.name for p in paths)
            for entry in entries:
                assert entry["status"] == "done", entry
                assert entry["error"] is None and entry["attempts"] == 1
                assert entry["model_name"] == "demo" and entry["model_version"] >= 1
                assert entry["label"] in entry["probabilities"]
                assert 0.0 <= entry["confidence"] <= 1.0
            assert job_id in log_text  # the worker's log lines carry the job id
    finally:
        celery_app.close()


def test_filesystem_broker_end_to_end(
    worker_env: dict[str, str], celery_worker: Path, demo_dirs: tuple[Path, Path]
) -> None:
    run_job_through_worker(worker_env, celery_worker, demo_dirs[1])
    assert (Path(worker_env["INSPECTOR_DATA_DIR"]) / "queue" / "messages").is_dir()


@pytest.fixture
def redis_env(worker_env: dict[str, str]) -> dict[str, str]:
    redis_or_skip(REDIS_URL)
    worker_env["INSPECTOR_BROKER_URL"] = REDIS_URL
    return worker_env


def test_redis_broker_end_to_end(
    redis_env: dict[str, str], celery_worker: Path, demo_dirs: tuple[Path, Path]
) -> None:
    run_job_through_worker(redis_env, celery_worker, demo_dirs[1])
