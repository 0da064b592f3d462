"""Workers' heartbeats: each worker says every few seconds that it is alive and what it holds.

Read by /readyz (is any worker up with a model?) and /metrics. Purely informative: leases, not
heartbeats, decide who may write an image's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from inspector.db.engine import reading, writing
from inspector.db.schema import utcnow, workers

# A worker not heard from for this long is taken for gone (workers beat every 5 s).
STALE_SECONDS = 20.0


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    hostname: str
    pid: int
    device: str
    models: tuple[str, ...]  # "name:version" loaded in the worker
    started_at: datetime
    last_seen_at: datetime


def beat(
    engine: Engine,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    device: str,
    models: Sequence[str],
    now: datetime | None = None,
) -> None:
    """Record that ``worker_id`` is alive now, holding ``models``."""
    now = now or utcnow()
    values = {"device": device, "models": list(models), "last_seen_at": now, "stopped_at": None}
    with writing(engine) as conn:
        updated = conn.execute(
            update(workers).where(workers.c.id == worker_id).values(**values)
        ).rowcount
        if not updated:
            conn.execute(
                insert(workers).values(
                    id=worker_id, hostname=hostname, pid=pid, started_at=now, **values
                )
            )


def stopped(engine: Engine, worker_id: str, *, now: datetime | None = None) -> None:
    """``worker_id`` shut down cleanly: it no longer counts as alive."""
    with writing(engine) as conn:
        conn.execute(
            update(workers).where(workers.c.id == worker_id).values(stopped_at=now or utcnow())
        )


def live_workers(
    engine: Engine, *, within_seconds: float, now: datetime | None = None
) -> list[WorkerRecord]:
    """Workers seen in the last ``within_seconds`` that have not stopped, newest first."""
    since = (now or utcnow()) - timedelta(seconds=within_seconds)
    with reading(engine) as conn:
        rows = conn.execute(
            select(workers)
            .where(workers.c.last_seen_at >= since, workers.c.stopped_at.is_(None))
            .order_by(workers.c.last_seen_at.desc())
        ).all()
    return [
        WorkerRecord(
            id=r.id,
            hostname=r.hostname,
            pid=r.pid,
            device=r.device,
            models=tuple(r.models or ()),
            started_at=r.started_at,
            last_seen_at=r.last_seen_at,
        )
        for r in rows
    ]
