"""Migrations, revision checks and engine set-up, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError, StatementError

from inspector.db import schema
from inspector.db.engine import (
    check_revision,
    current_revision,
    default_database_url,
    downgrade,
    head_revision,
    make_engine,
    upgrade,
)
from inspector.db.errors import DatabaseRevisionError
from inspector.errors import ConfigurationError

TABLES = {
    "jobs",
    "images",
    "results",
    "api_tokens",
    "watched_files",
    "workers",
    "cameras",
    "camera_triggers",
    "alembic_version",
}


def _differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, schema.metadata))


def test_upgrade_creates_the_schema_of_the_metadata(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert set(inspect(empty_engine).get_table_names()) == TABLES
    assert _differences(empty_engine) == []
    assert current_revision(empty_engine) == head_revision()
    assert check_revision(empty_engine) == head_revision()
    unique = inspect(empty_engine).get_unique_constraints("results")
    assert [u["column_names"] for u in unique] == [["image_id", "model_name", "model_version"]]


def test_check_revision_on_an_empty_database(empty_engine: Engine) -> None:
    with pytest.raises(DatabaseRevisionError, match="not initialised") as info:
        check_revision(empty_engine)
    assert "run `inspector db upgrade`" in str(info.value)
    assert head_revision() in str(info.value)


def test_check_revision_after_downgrade_and_at_an_old_revision(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    downgrade(empty_engine, "base")
    assert set(inspect(empty_engine).get_table_names()) == {"alembic_version"}
    with pytest.raises(DatabaseRevisionError, match="not initialised"):
        check_revision(empty_engine)

    upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0000'"))
    expected = f"at revision 0000, code expects {head_revision()}: run `inspector db upgrade`"
    with pytest.raises(DatabaseRevisionError, match=expected):
        check_revision(empty_engine)


def test_upgrade_from_a_url_in_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'inspector.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        assert check_revision(engine) == head_revision()
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_sqlite_connections_are_set_up_for_concurrency(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'inspector.db'}")
    try:
        assert (tmp_path / "a" / "b").is_dir()
        with engine.connect() as conn:
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
        assert pragmas == {
            "journal_mode": "wal",
            "busy_timeout": 30000,
            "foreign_keys": 1,
            "synchronous": 1,  # NORMAL
        }
    finally:
        engine.dispose()


def test_sqlite_write_transactions_take_the_lock_at_begin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inspector.db'}"
    upgrade(url)
    first, second = make_engine(url), make_engine(url, sqlite_busy_timeout_ms=50)
    try:
        with first.begin() as conn:
            conn.execute(select(schema.jobs.c.id)).all()  # a read only: BEGIN IMMEDIATE though
            with (
                pytest.raises(OperationalError, match="database is locked"),
                second.begin() as other,
            ):
                other.execute(select(schema.jobs.c.id)).all()
    finally:
        first.dispose()
        second.dispose()


def test_foreign_keys_are_enforced(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    row = {
        "job_id": "0" * 32,
        "filename": "a.png",
        "stored_path": "/x/a.png",
        "sha256": "0" * 64,
        "size_bytes": 1,
        "priority": 0,
        "status": "queued",
        "attempts": 0,
    }
    with pytest.raises(IntegrityError), empty_engine.begin() as conn:
        conn.execute(insert(schema.images).values(**row))
    with empty_engine.connect() as conn:
        assert conn.execute(select(schema.images)).all() == []


def test_timestamps_are_stored_in_utc_and_read_back_aware(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    local = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    with empty_engine.begin() as conn:
        conn.execute(
            insert(schema.jobs).values(
                id="a" * 32, created_at=local, source="paths", total_images=0, priority=0
            )
        )
    with empty_engine.connect() as conn:
        stored = conn.execute(select(schema.jobs.c.created_at)).scalar_one()
        later = conn.execute(
            select(schema.jobs.c.id).where(schema.jobs.c.created_at > local - timedelta(seconds=1))
        ).all()
    assert stored == local
    assert stored.tzinfo == UTC
    assert stored.hour == 7
    assert len(later) == 1
    with pytest.raises(StatementError, match="naive datetime"), empty_engine.begin() as conn:
        conn.execute(
            insert(schema.jobs).values(
                id="b" * 32, created_at=datetime(2026, 3, 1), source="paths", total_images=0
            )
        )


def test_default_database_url(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://u@db/inspector"
    assert default_database_url({"INSPECTOR_DATABASE_URL": url}) == url
    assert default_database_url({"INSPECTOR_DATA_DIR": str(tmp_path)}) == (
        f"sqlite:///{tmp_path / 'inspector.db'}"
    )
    assert default_database_url({}) == f"sqlite:///{Path('data').resolve() / 'inspector.db'}"


def test_make_engine_refuses_other_databases() -> None:
    with pytest.raises(ConfigurationError, match="unsupported database 'mysql'"):
        make_engine("mysql://u:secret@host/db")
    with pytest.raises(ConfigurationError, match="invalid database URL"):
        make_engine("not a url")
