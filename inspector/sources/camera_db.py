"""The camera tables: state written by the capture process, triggers written by the web.

A capture process registers its cameras (``register_camera``), keeps their rows current
(``update_camera``, also a heartbeat) and stores each frame as a one-image job in one
transaction with its counters and its trigger (``insert_camera_frame``). A trigger is taken
by one conditional UPDATE (``take_trigger``), so it yields one frame whatever the number of
capture processes polling for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from inspector.db.engine import reading, writing
from inspector.db.queries import insert_job
from inspector.db.records import NewImage
from inspector.db.schema import as_utc, camera_triggers, cameras, utcnow
from inspector.errors import ConfigurationError

log = logging.getLogger(__name__)

# A capture process writes each camera's row at least this often while it runs; a row older
# than LOST_AFTER whose process did not say it stopped belongs to a process that is gone.
HEARTBEAT_SECONDS = 5.0
LOST_AFTER = timedelta(seconds=30)
TRIGGER_STATUSES = ("pending", "taken", "captured", "failed")


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else as_utc(now)


# -- records -------------------------------------------------------------------------------------
def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class CameraState:
    """One camera's row, with the triggers waiting for it."""

    id: str
    source: str
    mode: str
    interval_seconds: float | None
    every_nth: int | None
    line: str | None
    lot: str | None
    owner: str
    status: str  # as written by the capture process; see ``effective_status``
    connected: bool
    connected_at: datetime | None
    last_frame_at: datetime | None
    last_capture_at: datetime | None
    frames_read: int
    frames_captured: int
    errors: int
    failures: int
    retry_seconds: float | None
    next_retry_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    started_at: datetime
    updated_at: datetime
    stopped_at: datetime | None
    pending_triggers: int

    def effective_status(self, now: datetime | None = None) -> str:
        """``status``, or ``lost`` when its process stopped writing without saying so."""
        if self.status != "stopped" and _now(now) - self.updated_at > LOST_AFTER:
            return "lost"
        return self.status

    def is_connected(self, now: datetime | None = None) -> bool:
        """Connected by its own account, and that account is recent."""
        return self.connected and self.effective_status(now) == "connected"

    def seconds_since_last_frame(self, now: datetime | None = None) -> float | None:
        if self.last_frame_at is None:
            return None
        return max(0.0, (_now(now) - self.last_frame_at).total_seconds())

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        now = _now(now)
        since = self.seconds_since_last_frame(now)
        return {
            "id": self.id,
            "source": self.source,
            "mode": self.mode,
            "interval_seconds": self.interval_seconds,
            "every_nth": self.every_nth,
            "line": self.line,
            "lot": self.lot,
            "status": self.effective_status(now),
            "connected": self.is_connected(now),
            "connected_at": _iso(self.connected_at),
            "last_frame_at": _iso(self.last_frame_at),
            "seconds_since_last_frame": None if since is None else round(since, 3),
            "last_capture_at": _iso(self.last_capture_at),
            "frames_read": self.frames_read,
            "frames_captured": self.frames_captured,
            "errors": self.errors,
            "failures": self.failures,
            "retry_seconds": self.retry_seconds,
            "next_retry_at": _iso(self.next_retry_at),
            "last_error": self.last_error,
            "last_error_at": _iso(self.last_error_at),
            "owner": self.owner,
            "started_at": _iso(self.started_at),
            "updated_at": _iso(self.updated_at),
            "stopped_at": _iso(self.stopped_at),
            "pending_triggers": self.pending_triggers,
        }


@dataclass(frozen=True)
class CameraTrigger:
    """A trigger and what became of it."""

    id: int
    camera_id: str
    requested_at: datetime
    requested_by: str | None
    taken_at: datetime | None
    taken_by: str | None
    job_id: str | None
    error: str | None

    @property
    def status(self) -> str:
        """``pending`` (not taken yet), ``taken`` (its frame is being stored), ``captured``
        (``job_id`` holds the frame) or ``failed`` (``error`` says why)."""
        if self.job_id is not None:
            return "captured"
        if self.error is not None:
            return "failed"
        return "pending" if self.taken_at is None else "taken"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "camera_id": self.camera_id,
            "status": self.status,
            "requested_at": _iso(self.requested_at),
            "requested_by": self.requested_by,
            "taken_at": _iso(self.taken_at),
            "job_id": self.job_id,
            "error": self.error,
        }


@dataclass(frozen=True)
class PendingTrigger:
    """A trigger no capture process has taken yet."""

    id: int
    camera_id: str
    requested_at: datetime


class UnknownCameraError(ConfigurationError):
    """No camera of that id has ever been registered."""


# -- the capture process's writes -----------------------------------------------------------------
def _upsert(conn: Connection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(cameras)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(cameras)
    raise ConfigurationError(f"unsupported database {conn.dialect.name!r}")


def register_camera(
    engine: Engine,
    *,
    camera_id: str,
    source: str,
    mode: str,
    interval_seconds: float | None,
    every_nth: int | None,
    line: str | None,
    lot: str | None,
    owner: str,
    now: datetime | None = None,
) -> None:
    """Create or take over the camera's row for a new run of ``owner``: its configuration as
    given, status ``starting``; counters, last frame and last error are kept."""
    now = _now(now)
    config = {
        "source": source,
        "mode": mode,
        "interval_seconds": interval_seconds,
        "every_nth": every_nth,
        "line": line,
        "lot": lot,
        "owner": owner,
    }
    run = {
        "status": "starting",
        "connected": False,
        "connected_at": None,
        "failures": 0,
        "retry_seconds": None,
        "next_retry_at": None,
        "started_at": now,
        "updated_at": now,
        "stopped_at": None,
    }
    with writing(engine) as conn:
        statement = _upsert(conn).values(
            id=camera_id, frames_read=0, frames_captured=0, errors=0, **config, **run
        )
        conn.execute(statement.on_conflict_do_update(index_elements=["id"], set_=config | run))


def update_camera(
    engine: Engine,
    camera_id: str,
    *,
    owner: str,
    values: Mapping[str, Any],
    frames_read: int = 0,
    errors: int = 0,
    now: datetime | None = None,
) -> bool:
    """Write ``values`` (columns of ``cameras``) and add to the read and error counters, on the
    row ``owner`` registered; False when that row is gone or another process took it over."""
    now = _now(now)
    with writing(engine) as conn:
        updated = conn.execute(
            update(cameras)
            .where(cameras.c.id == camera_id, cameras.c.owner == owner)
            .values(
                **values,
                frames_read=cameras.c.frames_read + frames_read,
                errors=cameras.c.errors + errors,
                updated_at=now,
            )
        ).rowcount
    return bool(updated)


def mark_cameras_stopped(
    engine: Engine, camera_ids: Sequence[str], *, owner: str, now: datetime | None = None
) -> int:
    """Status ``stopped`` for those of ``camera_ids`` that ``owner`` runs; returns how many."""
    if not camera_ids:
        return 0
    now = _now(now)
    with writing(engine) as conn:
        return int(
            conn.execute(
                update(cameras)
                .where(cameras.c.id.in_(list(camera_ids)), cameras.c.owner == owner)
                .values(
                    status="stopped",
                    connected=False,
                    next_retry_at=None,
                    stopped_at=now,
                    updated_at=now,
                )
            ).rowcount
        )


def insert_camera_frame(
    engine: Engine,
    *,
    camera_id: str,
    owner: str,
    image: NewImage,
    grabbed_at: datetime,
    line: str | None,
    lot: str | None,
    priority: int,
    model_name: str | None,
    trigger_id: int | None = None,
    now: datetime | None = None,
) -> str:
    """One transaction: a job (source "camera") with the stored frame as its image, the
    camera's capture counter and time, and the trigger that asked for it; returns the job id."""
    now = _now(now)
    with writing(engine) as conn:
        job_id, _ = insert_job(
            conn,
            source="camera",
            files=[image],
            line=line,
            camera=camera_id,
            lot=lot,
            priority=priority,
            model_name=model_name,
        )
        conn.execute(
            update(cameras)
            .where(cameras.c.id == camera_id, cameras.c.owner == owner)
            .values(
                frames_captured=cameras.c.frames_captured + 1,
                last_capture_at=as_utc(grabbed_at),
                updated_at=now,
            )
        )
        if trigger_id is not None:
            conn.execute(
                update(camera_triggers)
                .where(camera_triggers.c.id == trigger_id)
                .values(job_id=job_id)
            )
    return job_id


def pending_triggers(engine: Engine, camera_ids: Sequence[str]) -> list[PendingTrigger]:
    """Triggers not taken yet for ``camera_ids``, oldest first."""
    if not camera_ids:
        return []
    with reading(engine) as conn:
        rows = conn.execute(
            select(
                camera_triggers.c.id, camera_triggers.c.camera_id, camera_triggers.c.requested_at
            )
            .where(
                camera_triggers.c.camera_id.in_(list(camera_ids)),
                camera_triggers.c.taken_at.is_(None),
            )
            .order_by(camera_triggers.c.id)
        ).all()
    return [PendingTrigger(r.id, r.camera_id, r.requested_at) for r in rows]


def take_trigger(
    engine: Engine,
    trigger_id: int,
    *,
    owner: str,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Take the trigger if no one has: True for exactly one caller. With ``error``, it is
    taken as failed at once (expired, say)."""
    now = _now(now)
    with writing(engine) as conn:
        # The condition is re-checked on the row itself: on PostgreSQL a second UPDATE waits
        # for the first to commit and then finds taken_at set; SQLite lets one writer in.
        taken = conn.execute(
            update(camera_triggers)
            .where(camera_triggers.c.id == trigger_id, camera_triggers.c.taken_at.is_(None))
            .values(taken_at=now, taken_by=owner, error=error)
        ).rowcount
    return bool(taken)


def fail_trigger(engine: Engine, trigger_id: int, error: str) -> None:
    """Note why a taken trigger got no frame."""
    with writing(engine) as conn:
        conn.execute(
            update(camera_triggers)
            .where(camera_triggers.c.id == trigger_id, camera_triggers.c.job_id.is_(None))
            .values(error=error)
        )


# -- the web's reads and writes -------------------------------------------------------------------
def _states(conn: Connection, camera_id: str | None = None) -> list[CameraState]:
    waiting = (
        select(func.count())
        .where(camera_triggers.c.camera_id == cameras.c.id, camera_triggers.c.taken_at.is_(None))
        .scalar_subquery()
    )
    query = select(cameras, waiting.label("pending_triggers")).order_by(cameras.c.id)
    if camera_id is not None:
        query = query.where(cameras.c.id == camera_id)
    rows = conn.execute(query).mappings().all()
    return [CameraState(**{**row, "connected": bool(row["connected"])}) for row in rows]


def list_cameras(engine: Engine) -> list[CameraState]:
    """Every camera ever registered, by id."""
    with reading(engine) as conn:
        return _states(conn)


def get_camera(engine: Engine, camera_id: str) -> CameraState | None:
    """One camera's state, or None."""
    with reading(engine) as conn:
        found = _states(conn, camera_id)
    return found[0] if found else None


def create_trigger(
    engine: Engine,
    camera_id: str,
    *,
    requested_by: str | None = None,
    now: datetime | None = None,
) -> CameraTrigger:
    """Ask the camera's capture process for a frame now; raises ``UnknownCameraError``."""
    now = _now(now)
    with writing(engine) as conn:
        known = conn.execute(select(cameras.c.id).where(cameras.c.id == camera_id)).first()
        if known is None:
            raise UnknownCameraError(f"no camera {camera_id!r}")
        row = (
            conn.execute(
                insert(camera_triggers)
                .returning(*camera_triggers.c)
                .values(camera_id=camera_id, requested_at=now, requested_by=requested_by)
            )
            .mappings()
            .one()
        )
    log.info("camera %s: trigger %d requested by %s", camera_id, row["id"], requested_by)
    return CameraTrigger(**row)


def get_trigger(engine: Engine, camera_id: str, trigger_id: int) -> CameraTrigger | None:
    """One trigger of the camera, or None."""
    with reading(engine) as conn:
        row = (
            conn.execute(
                select(camera_triggers).where(
                    camera_triggers.c.id == trigger_id, camera_triggers.c.camera_id == camera_id
                )
            )
            .mappings()
            .first()
        )
    return None if row is None else CameraTrigger(**row)
