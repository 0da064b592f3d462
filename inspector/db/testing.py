"""Throwaway databases for tests: a PostgreSQL schema of their own, dropped afterwards.

Concurrent test runs against one PostgreSQL server each get a uniquely named schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import OperationalError

from inspector.db.engine import make_engine
from inspector.errors import InspectorError

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


class DatabaseUnavailableError(InspectorError):
    """The database server for the tests cannot be reached."""


def postgres_test_url() -> str:
    """``INSPECTOR_TEST_POSTGRES_URL``, else the local server on 127.0.0.1:5432."""
    return os.environ.get("INSPECTOR_TEST_POSTGRES_URL") or DEFAULT_TEST_POSTGRES_URL


@contextmanager
def scratch_postgres(url: str, *, connect_timeout: int = 5) -> Iterator[str]:
    """Create a uniquely named schema; yield a URL whose connections use it; drop it after."""
    schema = f"inspector_test_{uuid.uuid4().hex[:12]}"
    base = make_url(url).update_query_dict({"connect_timeout": str(connect_timeout)})
    admin = make_engine(base.render_as_string(hide_password=False))
    shown = admin.url.render_as_string(hide_password=True)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(f"PostgreSQL not reachable at {shown}: {reason}") from exc
    scoped = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextmanager
def scratch_postgres_engine(url: str) -> Iterator[Engine]:
    """An engine on a fresh, empty schema of ``url``'s database (see ``scratch_postgres``)."""
    with scratch_postgres(url) as scoped:
        engine = make_engine(scoped)
        try:
            yield engine
        finally:
            engine.dispose()
