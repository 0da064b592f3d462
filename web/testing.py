"""For tests of the web service: an app on a migrated throwaway database, a token, images."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from inspector.db.engine import make_engine, upgrade
from inspector.db.queries import create_token
from inspector.settings import Settings
from web.app import create_app
from web.state import Enqueue, ReadyCheck


def png_bytes(seed: int = 0, size: int = 16) -> bytes:
    """A small PNG of noise, different for each seed."""
    import cv2  # imported here: the web service itself never decodes images
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return bytes(encoded.tobytes())


@dataclass
class WebService:
    """An app, its engine, and a valid token for it."""

    app: Flask
    engine: Engine
    settings: Settings
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> FlaskClient:
        return self.app.test_client()


@contextmanager
def web_service(
    data_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    enqueue: Enqueue | None = None,
    ready_checks: Sequence[ReadyCheck] = (),
    engine: Engine | None = None,
    migrate: bool = True,
) -> Iterator[WebService]:
    """The app on ``engine`` or a new SQLite file in ``data_dir``, migrated unless told not."""
    env = {"INSPECTOR_DATA_DIR": str(data_dir), **(environ or {})}
    settings = Settings.from_env(env)
    own = engine is None
    engine = engine if engine is not None else make_engine(settings.database_url)
    try:
        token = ""
        if migrate:
            upgrade(engine)
            token = create_token(engine, "tests")
        app = create_app(
            settings,
            engine=engine,
            enqueue=enqueue,
            ready_checks=ready_checks,
            environ=env,
            config={"TESTING": True},
        )
        yield WebService(app=app, engine=engine, settings=settings, token=token)
    finally:
        if own:
            engine.dispose()


def multipart_body(
    files: Sequence[tuple[str, str, bytes]], fields: Mapping[str, str] | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body of ``(field, filename, bytes)`` parts and plain ``fields``;
    returns the body and its Content-Type, for HTTP clients without a multipart encoder."""
    import uuid

    boundary = f"inspector-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
            f"{value}\r\n".encode()
        )
    for field, filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        )
        parts.append(head.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
