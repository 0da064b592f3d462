"""Alembic environment: the schema comes from inspector.db.schema, the database from the caller.

The connection is ``config.attributes["connection"]`` when given (``inspector.db.engine.upgrade``),
else ``INSPECTOR_DATABASE_URL``, else SQLite under ``INSPECTOR_DATA_DIR`` (default ``./data``).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.engine import Connection

from inspector.db.engine import default_database_url, make_engine
from inspector.db.schema import UTCDateTime, metadata

config = context.config
target_metadata = metadata

# Only the `alembic` command line configures logging; programmatic callers keep their own.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _render_item(kind: str, obj: object, autogen_context: AutogenContext) -> str | bool:
    # Migrations must not import the code's types: they outlive them.
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        transactional_ddl=True,  # both backends roll DDL back on failure
        compare_type=True,
        render_item=_render_item,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=default_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(default_database_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
