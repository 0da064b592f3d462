"""The production web app (``inspector web``): no torch, a broker check, a real wake-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from inspector.db import heartbeats
from inspector.db.engine import make_engine, upgrade
from inspector.settings import Settings
from service.settings import ServiceSettings
from service.webserver import build_app, gunicorn_options
from workers.config import WorkerSettings

REPO = Path(__file__).resolve().parent.parent


def migrated(tmp_path: Path) -> Settings:
    settings = Settings.from_env({"INSPECTOR_DATA_DIR": str(tmp_path)})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    return settings


def alive(settings: Settings, models: list[str]) -> None:
    engine = make_engine(settings.database_url)
    heartbeats.beat(engine, worker_id="w1", hostname="h", pid=1, device="cpu", models=models)
    engine.dispose()


def test_the_production_app_imports_no_torch_and_checks_the_folder_queue(tmp_path: Path) -> None:
    settings = migrated(tmp_path)
    alive(settings, ["demo:1"])
    code = (
        "import json, sys\n"
        "from inspector.settings import Settings\n"
        "from service.settings import ServiceSettings\n"
        "from service.webserver import build_app\n"
        "from workers.config import WorkerSettings\n"
        f"s = Settings.from_env({{'INSPECTOR_DATA_DIR': {str(tmp_path)!r}}})\n"
        "app = build_app(s, ServiceSettings(), WorkerSettings(), 'k' * 32)\n"
        "r = app.test_client().get('/readyz')\n"
        "print(json.dumps(r.json))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout.strip().splitlines()[-1])
    assert body["status"] == "ok", body
    assert body["checks"]["broker"]["detail"].startswith("filesystem:")
    assert body["checks"]["workers"]["detail"] == "1 worker(s): w1 (demo:1 on cpu)"


def test_readyz_fails_without_a_worker_holding_a_model(tmp_path: Path) -> None:
    settings = migrated(tmp_path)
    app = build_app(settings, ServiceSettings(), WorkerSettings(), "k" * 32)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.json["failed"] == ["workers"]
    assert "no worker in the last 20 s" in response.json["checks"]["workers"]["detail"]
    alive(settings, [])  # up, but its model did not load
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "none has loaded a model" in response.json["checks"]["workers"]["detail"]
    alive(settings, ["demo:1"])
    assert app.test_client().get("/readyz").status_code == 200


def test_an_unreachable_broker_makes_readyz_fail(tmp_path: Path) -> None:
    settings = migrated(tmp_path)
    worker = WorkerSettings(broker_url="redis://127.0.0.1:1/0")
    app = build_app(settings, ServiceSettings(), worker, "k" * 32)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["failed"] == ["broker", "workers"]
    assert response.json["checks"]["database"]["ok"]


def test_gunicorn_runs_threads_on_the_configured_address() -> None:
    options = gunicorn_options(ServiceSettings(host="0.0.0.0", port=9000, web_threads=4), "info")
    assert options["bind"] == "0.0.0.0:9000"
    assert (options["worker_class"], options["threads"]) == ("gthread", 4)
    assert options["preload_app"] is False  # each process builds its app after the fork
