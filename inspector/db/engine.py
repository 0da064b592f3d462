"""Engines for SQLite and PostgreSQL set up for many concurrent workers, and Alembic migrations.

Nothing connects until a function here is called with a URL or an engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import ConnectionPoolEntry

from inspector.db.errors import DatabaseRevisionError
from inspector.errors import ConfigurationError
from inspector.settings import Settings

log = logging.getLogger(__name__)

# The repository's migrations/ folder, next to the inspector package.
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution option: on SQLite, begin with a plain (deferred) BEGIN, for transactions that only
# read; every other transaction takes the write lock at BEGIN IMMEDIATE.
READ_ONLY = "inspector_read_only"


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One write transaction (on SQLite ``BEGIN IMMEDIATE``: the write lock up front)."""
    with engine.begin() as conn:
        yield conn


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """One read-only transaction (on SQLite a plain ``BEGIN``, taking no write lock)."""
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """``INSPECTOR_DATABASE_URL``, else SQLite: ``<INSPECTOR_DATA_DIR or ./data>/inspector.db``."""
    return Settings.from_env(environ).database_url


def _sqlite_file(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for ``url``; on SQLite WAL, a busy timeout, foreign keys and eager write locks.

    pysqlite's own deferred BEGIN lets two writers both start reading and then deadlock when
    each tries to upgrade to the write lock ("database is locked" at once, whatever the busy
    timeout). Here SQLAlchemy emits BEGIN itself (SQLAlchemy's documented recipe): BEGIN
    IMMEDIATE, unless the connection carries the ``READ_ONLY`` execution option.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"invalid database URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    if backend != "sqlite":
        raise ConfigurationError(
            f"unsupported database {backend!r} in {parsed.render_as_string(hide_password=True)}: "
            "use postgresql+psycopg2://... or sqlite:///PATH"
        )
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    timeout = int(sqlite_busy_timeout_ms)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # pysqlite emits no BEGIN of its own
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={timeout}")  # first: the others may wait
            if path is not None:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the repository's migrations, usable from any directory."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise ConfigurationError(
            f"Alembic migrations not found at {MIGRATIONS_DIR}: run from a checkout of the "
            "repository (the migrations folder is not part of the installed package)"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision the code expects: the head of the migration scripts."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise ConfigurationError(f"no migration scripts in {MIGRATIONS_DIR / 'versions'}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    with engine.connect() as conn:
        conn.execution_options(**{READ_ONLY: True})
        return MigrationContext.configure(conn).get_current_revision()


def check_revision(engine: Engine) -> str:
    """The database's revision, after checking it is the one the code expects."""
    expected = head_revision()
    current = current_revision(engine)
    where = engine.url.render_as_string(hide_password=True)
    if current is None:
        raise DatabaseRevisionError(
            f"database {where} has no Inspector schema (not initialised), code expects "
            f"revision {expected}: run `inspector db upgrade`"
        )
    if current != expected:
        raise DatabaseRevisionError(
            f"database {where} at revision {current}, code expects {expected}: "
            "run `inspector db upgrade`"
        )
    return current


def _migrate(engine_or_url: Engine | str, revision: str, *, up: bool) -> None:
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    try:
        # One transaction: on SQLite and PostgreSQL the DDL is rolled back if a step fails.
        with engine.begin() as conn:
            config = alembic_config(conn)
            if up:
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        if isinstance(engine_or_url, str):
            engine.dispose()
    log.info(
        "database %s %s to %s",
        engine.url.render_as_string(hide_password=True),
        "upgraded" if up else "downgraded",
        revision,
    )


def upgrade(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Migrate the database up to ``revision`` (Alembic, in one transaction)."""
    _migrate(engine_or_url, revision, up=True)


def downgrade(engine_or_url: Engine | str, revision: str) -> None:
    """Migrate the database down to ``revision`` (``"base"``: drop every table)."""
    _migrate(engine_or_url, revision, up=False)
