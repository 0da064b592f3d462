"""``inspector web``: the intake service and API under gunicorn, wired to the broker.

Each gunicorn process builds its own app after the fork (no connection crosses a fork). The
app gets the Celery wake-up and readiness checks for the broker and for a live worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from sqlalchemy import Engine

from inspector.db import heartbeats
from inspector.db.engine import make_engine
from inspector.settings import Settings
from service.settings import ServiceSettings
from web.app import create_app
from workers.broker import broker_ready, make_producer
from workers.config import WorkerSettings
from workers.enqueue import make_enqueue

log = logging.getLogger(__name__)


def build_app(
    settings: Settings, service: ServiceSettings, worker: WorkerSettings, secret_key: str
) -> Flask:
    """The Flask app with the wake-up and readiness checks of a real deployment."""
    producer = make_producer(settings, worker)
    engine = make_engine(settings.database_url)

    def broker() -> str:
        return broker_ready(producer)

    def workers() -> str:
        return workers_ready(engine)

    return create_app(
        settings,
        engine=engine,
        enqueue=make_enqueue(producer),
        ready_checks=[broker, workers],
        config={"SECRET_KEY": secret_key},
    )


def workers_ready(engine: Engine) -> str:
    """Names the live workers and their models; raises when none holds a model."""
    live = heartbeats.live_workers(engine, within_seconds=heartbeats.STALE_SECONDS)
    with_model = [w for w in live if w.models]
    if not with_model:
        seen = f"{len(live)} worker(s) up but none has loaded a model" if live else "no worker"
        raise RuntimeError(
            f"{seen} in the last {heartbeats.STALE_SECONDS:.0f} s: start one with "
            "`inspector worker` and make sure the model store holds a model"
        )
    described = ", ".join(f"{w.id} ({'+'.join(w.models)} on {w.device})" for w in with_model)
    return f"{len(with_model)} worker(s): {described}"


class GunicornServer(BaseApplication):
    """Gunicorn run from Python, so ``inspector web`` takes the same settings as the rest."""

    def __init__(self, factory: Callable[[], Flask], options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.factory()


def gunicorn_options(service: ServiceSettings, log_level: str) -> dict[str, Any]:
    return {
        "bind": f"{service.host}:{service.port}",
        "workers": service.web_processes,
        # Threads, because /inspect holds its request open while it waits for the verdict.
        "worker_class": "gthread",
        "threads": service.web_threads,
        "timeout": 120,
        "graceful_timeout": 20,
        "loglevel": log_level.lower(),
        "errorlog": "-",
        "preload_app": False,
        "proc_name": "inspector-web",
    }


def serve(
    settings: Settings,
    service: ServiceSettings,
    worker: WorkerSettings,
    *,
    log_level: str = "info",
) -> int:
    """Run gunicorn until it is stopped (SIGTERM/SIGINT); returns its exit status."""
    secret_key = service.secret(settings.data_dir)  # fails here, before any fork, when missing

    def factory() -> Flask:
        return build_app(settings, service, worker, secret_key)

    GunicornServer(factory, gunicorn_options(service, log_level)).run()
    return 0
