"""``inspector setup``: what a machine needs before the service starts, done idempotently.

Creates or migrates the database, makes sure the model store can serve a model (on first run
it trains the demo model, with a progress bar) and keeps a local API token in
``<data_dir>/api-token`` (readable by its owner only) for ``inspector run`` to print.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy import Engine

from inspector.db import queries
from inspector.db.engine import check_revision, make_engine, upgrade
from inspector.settings import Settings

log = logging.getLogger(__name__)

LOCAL_TOKEN_NAME = "local"


def token_path(settings: Settings) -> Path:
    return settings.data_dir / "api-token"


def ensure_local_token(engine: Engine, path: Path) -> str:
    """The token kept in ``path`` while it is still valid; otherwise a new one, kept there."""
    if path.is_file():
        token = path.read_text().strip()
        if token and queries.verify_token(engine, token) is not None:
            return token
        path.unlink()
    queries.revoke_token(engine, LOCAL_TOKEN_NAME)  # its file was lost: a new one replaces it
    token = queries.create_token(engine, LOCAL_TOKEN_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def setup(settings: Settings, *, progress: bool = True) -> str:
    """Database at the newest revision, a model to serve, a local token; returns the token."""
    from inspector.demo import ensure_model
    from inspector.store import ModelStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine)
        revision = check_revision(engine)
        print(f"database {engine.url.render_as_string(hide_password=True)} at revision {revision}")
        store = ModelStore(settings.model_store_dir)
        if store.names():
            print(f"models in {store.root}: {', '.join(store.names())}")
        else:
            print("no model yet: training the compact demo model (a few minutes on a CPU)...")
            name = ensure_model(settings, store, progress=progress)
            print(f"trained and registered model {name!r} in {store.root}")
        return ensure_local_token(engine, token_path(settings))
    finally:
        engine.dispose()
