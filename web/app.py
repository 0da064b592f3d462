"""The app factory: settings, engine and wake-up in; a Flask app with its blueprints out.

Nothing happens at import time; ``create_app`` reads the environment once and opens no
connection (the engine connects on the first request that needs it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask
from sqlalchemy import Engine

from inspector.db.engine import make_engine
from inspector.settings import Settings
from web import api, cameras, health, metrics
from web.config import WebSettings
from web.errors import register_error_handlers
from web.metrics import WebMetrics
from web.state import EXTENSION_KEY, Enqueue, ReadyCheck, WebState

log = logging.getLogger(__name__)

# Multipart parts (files and fields) one request may carry; Flask's default of 1000 would cap
# a batch upload at under 1000 images.
MAX_FORM_PARTS = 20_000


def log_enqueue(job_id: str) -> None:
    """The default wake-up: none. Workers also poll the database, so the job is not lost."""
    log.info("job %s: no queue configured; workers will find it by polling", job_id)


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    enqueue: Enqueue | None = None,
    config: Mapping[str, Any] | None = None,
    ready_checks: Sequence[ReadyCheck] = (),
    environ: Mapping[str, str] | None = None,
) -> Flask:
    """The intake service and API.

    ``settings`` and the web's own ``WebSettings`` come from ``environ`` (default: the process
    environment) unless given; ``engine`` defaults to one on ``settings.database_url``;
    ``enqueue(job_id)`` wakes the workers after a job is written; ``ready_checks`` are run by
    /readyz after the database check; ``config`` overrides Flask's configuration last.
    """
    env = os.environ if environ is None else environ
    settings = settings or Settings.from_env(env)
    web_settings = WebSettings.from_env(env)
    engine = engine if engine is not None else make_engine(settings.database_url)

    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=web_settings.max_upload_bytes,
        MAX_FORM_PARTS=MAX_FORM_PARTS,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the fields in their order
    if config:
        app.config.update(config)

    web_metrics = WebMetrics(engine)
    app.extensions[EXTENSION_KEY] = WebState(
        settings=settings,
        web=web_settings,
        engine=engine,
        enqueue=enqueue or log_enqueue,
        ready_checks=tuple(ready_checks),
        metrics=web_metrics,
    )
    # Fixed order: metrics hooks first so they time everything, errors before any view.
    web_metrics.init_app(app)
    register_error_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(cameras.bp)
    return app
