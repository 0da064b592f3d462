"""The tables of the batch service (SQLAlchemy Core); Alembic migrations are checked against them.

Times are stored in UTC and always read back timezone-aware, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# Named constraints, so migrations can refer to them and autogenerate compares them stably.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_SOURCES = ("upload", "paths", "inspect", "watch", "camera")
IMAGE_STATUSES = ("queued", "running", "done", "error")
OPEN_STATUSES = ("queued", "running")
# A watched file: waiting for its image's verdict, its after-inspection action under way
# (current_path already names the target), or settled.
WATCHED_FILE_STATES = ("pending", "acting", "settled")
AFTER_ACTIONS = ("leave", "move", "delete")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused, as its zone would be a guess."""
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware time")
    return value.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that stores UTC and reads back aware datetimes everywhere.

    SQLite keeps no zone: values are stored as naive UTC text (which also sorts correctly)
    and get their UTC zone back on reading.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


metadata = MetaData(naming_convention=NAMING_CONVENTION)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("source", String(16), nullable=False),
    Column("line", String(128)),
    Column("camera", String(128)),
    Column("lot", String(128)),
    Column("priority", Integer, nullable=False, default=0),
    Column("model_name", String(64)),  # requested model; NULL: the production version
    Column("total_images", Integer, nullable=False),
    Column("started_at", UTCDateTime()),  # first claim of one of its images
    Column("finished_at", UTCDateTime()),  # its last image reached done or error
    CheckConstraint(_in("source", JOB_SOURCES), name="source"),
    Index(None, "created_at"),
)

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", ForeignKey("jobs.id"), nullable=False, index=True),
    Column("filename", String(512), nullable=False),
    Column("stored_path", String(1024), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", Integer, nullable=False),
    # A copy of the job's priority, so claiming reads one table through one index.
    Column("priority", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False, default="queued"),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", UTCDateTime()),
    Column("error", Text),
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow, onupdate=utcnow),
    CheckConstraint(_in("status", IMAGE_STATUSES), name="status"),
    Index("ix_images_claim", "status", "priority", "id"),
)

results = Table(
    "results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", ForeignKey("images.id"), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("label", String(128), nullable=False),
    Column("confidence", Float, nullable=False),
    Column("defect_score", Float, nullable=False),
    Column("is_defect", Boolean, nullable=False),
    Column("flagged", Boolean, nullable=False),
    Column("probabilities", JSON, nullable=False),  # {class: p}
    Column("scale_probabilities", JSON, nullable=False),  # {"224": {class: p}, ...}
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    # One verdict per image and model version, whoever tries to write a second one.
    UniqueConstraint("image_id", "model_name", "model_version"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex of the token
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("last_used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
)

# The watched-folder ledger: every file a watcher took (or recognised as a copy of one it took),
# so that no file is inspected twice, whatever the restarts, rescans and duplicate events.
watched_files = Table(
    "watched_files",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("folder", String(1024), nullable=False),  # the watched folder it was found in
    Column("path", String(1024), nullable=False),  # where it was found
    Column("size_bytes", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),  # empty when the file could not be read
    # The image that inspected this content; for a duplicate, the earlier file's image.
    Column("image_id", ForeignKey("images.id"), nullable=False, index=True),
    Column("duplicate", Boolean, nullable=False, default=False),
    Column("state", String(16), nullable=False, default="pending"),
    Column("action", String(16)),  # chosen once the verdict is in: leave, move or delete
    Column("current_path", String(1024)),  # where the file is (or is going); NULL: deleted
    Column("created_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("settled_at", UTCDateTime()),
    CheckConstraint(_in("state", WATCHED_FILE_STATES), name="state"),
    CheckConstraint(f"action IS NULL OR {_in('action', AFTER_ACTIONS)}", name="action"),
    Index(None, "folder", "sha256"),
    Index(None, "folder", "state"),
)

# Workers report here every few seconds: which models they hold, on which device. /readyz and
# /metrics read it; a worker not seen for a while is gone (its leases expire on their own).
workers = Table(
    "workers",
    metadata,
    Column("id", String(128), primary_key=True),  # host:pid:random, as in images.lease_owner
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("device", String(32), nullable=False),
    Column("models", JSON, nullable=False),  # ["name:version", ...] loaded in this process
    Column("started_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("last_seen_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("stopped_at", UTCDateTime()),
    Index(None, "last_seen_at"),
)

# Cameras: one row per configured camera, written by the capture process (``inspector watch``)
# that runs it; the web and /metrics only read it. Counters add up over restarts.
CAMERA_MODES = ("interval", "every_nth", "trigger")
# starting: registered, not open yet; retrying: waiting to open again after a failure or a
# drop; ended: a video file reached its end; stopped: its capture process stopped cleanly.
CAMERA_STATUSES = ("starting", "connected", "retrying", "ended", "stopped")

cameras = Table(
    "cameras",
    metadata,
    Column("id", String(128), primary_key=True),  # also jobs.camera of its frames
    Column("source", String(1024), nullable=False),  # URL (password hidden), device or file
    Column("mode", String(16), nullable=False),
    Column("interval_seconds", Float),  # mode interval
    Column("every_nth", Integer),  # mode every_nth
    Column("line", String(128)),
    Column("lot", String(128)),
    Column("owner", String(128), nullable=False),  # host:pid of the capture process
    Column("status", String(16), nullable=False, default="starting"),
    Column("connected", Boolean, nullable=False, default=False),
    Column("connected_at", UTCDateTime()),
    Column("last_frame_at", UTCDateTime()),  # last frame read from the camera
    Column("last_capture_at", UTCDateTime()),  # last frame stored as an image
    Column("frames_read", BigInteger, nullable=False, default=0),
    Column("frames_captured", BigInteger, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),  # in a row, reset by a frame
    Column("retry_seconds", Float),  # the current back-off while retrying
    Column("next_retry_at", UTCDateTime()),
    Column("last_error", Text),
    Column("last_error_at", UTCDateTime()),
    Column("started_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("updated_at", UTCDateTime(), nullable=False, default=utcnow),  # also a heartbeat
    Column("stopped_at", UTCDateTime()),
    CheckConstraint(_in("mode", CAMERA_MODES), name="mode"),
    CheckConstraint(_in("status", CAMERA_STATUSES), name="status"),
)

# A trigger asks a camera's capture process for one frame now (a PLC, a light barrier). The web
# inserts it; a capture process takes it once (a conditional UPDATE), stores the frame as a job.
camera_triggers = Table(
    "camera_triggers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("camera_id", ForeignKey("cameras.id"), nullable=False),
    Column("requested_at", UTCDateTime(), nullable=False, default=utcnow),
    Column("requested_by", String(128)),  # the API token's name
    Column("taken_at", UTCDateTime()),
    Column("taken_by", String(128)),  # cameras.owner of the process that took it
    Column("job_id", ForeignKey("jobs.id")),  # the job of its frame
    Column("error", Text),  # why it got no frame (expired, camera down, ...)
    Index(None, "camera_id", "taken_at"),
)
