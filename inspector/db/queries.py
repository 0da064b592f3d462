"""The batch service's reads and writes, each one short transaction on an Engine.

Images are leased, not locked: a worker claims a few (``claim_images``), and only while it
still holds the lease can it record their results or errors. A lease that expires makes the
image claimable again, so a crashed worker's images are picked up by the others.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Row,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from inspector.db.engine import reading, writing
from inspector.db.records import (
    ClaimedImage,
    ImageRecord,
    ImageResult,
    JobSummary,
    NewImage,
    NewResult,
    StoredResult,
)
from inspector.db.schema import (
    JOB_SOURCES,
    OPEN_STATUSES,
    api_tokens,
    as_utc,
    images,
    jobs,
    results,
    utcnow,
)
from inspector.errors import ConfigurationError

log = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "finished")
# verify_token writes last_used_at at most this often per token, to keep reads read-only.
TOKEN_TOUCH_INTERVAL = timedelta(seconds=60)


def _now(now: datetime | None) -> datetime:
    return utcnow() if now is None else as_utc(now)


# -- jobs ----------------------------------------------------------------------------------------
def create_job(
    engine: Engine,
    *,
    source: str,
    files: Sequence[NewImage],
    line: str | None = None,
    camera: str | None = None,
    lot: str | None = None,
    priority: int = 0,
    model_name: str | None = None,
) -> str:
    """Insert a job and all its images (queued) in one transaction; returns the job id."""
    with writing(engine) as conn:
        job_id, _ = insert_job(
            conn,
            source=source,
            files=files,
            line=line,
            camera=camera,
            lot=lot,
            priority=priority,
            model_name=model_name,
        )
    return job_id


def _finish_jobs(conn: Connection, job_ids: Iterable[str], now: datetime) -> None:
    """Set finished_at on those of ``job_ids`` whose images have all reached done or error."""
    ids = sorted(set(job_ids))
    if not ids:
        return
    # Lock the jobs first (PostgreSQL; SQLite already holds the write lock): two workers
    # completing a job's last two images concurrently would otherwise each still see the
    # other's image as running, and neither would mark the job finished.
    conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids)).order_by(jobs.c.id).with_for_update())
    still_open = (
        select(images.c.id)
        .where(images.c.job_id == jobs.c.id, images.c.status.in_(OPEN_STATUSES))
        .exists()
    )
    conn.execute(
        update(jobs)
        .where(jobs.c.id.in_(ids), jobs.c.finished_at.is_(None), ~still_open)
        .values(finished_at=now, started_at=func.coalesce(jobs.c.started_at, now))
    )


def insert_job(
    conn: Connection,
    *,
    source: str,
    files: Sequence[NewImage],
    errors: Mapping[int, str] | None = None,
    line: str | None = None,
    camera: str | None = None,
    lot: str | None = None,
    priority: int = 0,
    model_name: str | None = None,
) -> tuple[str, list[int]]:
    """``create_job`` inside the caller's transaction, so other rows can commit with the job.

    Returns the job id and its image ids in the order of ``files``. ``errors`` maps an index
    of ``files`` to the reason it cannot be inspected (the intake could not read it): that
    image is recorded as an error at once, and a job of such images alone is finished.
    """
    if source not in JOB_SOURCES:
        raise ConfigurationError(
            f"unknown job source {source!r}: expected one of {', '.join(JOB_SOURCES)}"
        )
    if not files:
        raise ConfigurationError("a job needs at least one image, got none")
    failed = dict(errors or {})
    job_id = uuid.uuid4().hex
    now = utcnow()
    conn.execute(
        insert(jobs).values(
            id=job_id,
            created_at=now,
            source=source,
            line=line,
            camera=camera,
            lot=lot,
            priority=priority,
            model_name=model_name,
            total_images=len(files),
        )
    )
    image_ids = (
        conn.execute(
            insert(images).returning(images.c.id, sort_by_parameter_order=True),
            [
                {
                    "job_id": job_id,
                    "filename": f.filename,
                    "stored_path": f.stored_path,
                    "sha256": f.sha256,
                    "size_bytes": f.size_bytes,
                    "priority": priority,
                    "status": "error" if n in failed else "queued",
                    "error": failed.get(n),
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
                for n, f in enumerate(files)
            ],
        )
        .scalars()
        .all()
    )
    if failed:
        _finish_jobs(conn, [job_id], now)
    log.info(
        "job %s: %d images queued, %d refused at intake (source %s)",
        job_id,
        len(files) - len(failed),
        len(failed),
        source,
    )
    return job_id, list(image_ids)


def set_stored_paths(conn: Connection, paths: Mapping[int, str]) -> None:
    """Point images at the new places of their files (moved after inspection), inside the
    caller's transaction, so that an image's file can still be served."""
    if paths:
        conn.execute(
            update(images).where(images.c.id == bindparam("image_id")),
            [{"image_id": image_id, "stored_path": path} for image_id, path in paths.items()],
        )


# -- claiming and leases -------------------------------------------------------------------------
def _expired(now: datetime) -> ColumnElement[bool]:
    return and_(images.c.status == "running", images.c.lease_expires_at < now)


def _mark_started(conn: Connection, job_ids: Sequence[str], now: datetime) -> None:
    # SKIP LOCKED: a job locked by another claimer is being marked started by it; waiting
    # here instead could deadlock two claimers that lock the same new jobs in another order.
    unstarted = (
        conn.execute(
            select(jobs.c.id)
            .where(jobs.c.id.in_(job_ids), jobs.c.started_at.is_(None))
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    if unstarted:
        conn.execute(update(jobs).where(jobs.c.id.in_(unstarted)).values(started_at=now))


def _fail_exhausted(conn: Connection, now: datetime, max_attempts: int) -> int:
    """Images whose lease expired after their last allowed attempt go to error."""
    rows = conn.execute(
        select(images.c.id, images.c.job_id, images.c.attempts)
        .where(_expired(now), images.c.attempts >= max_attempts)
        .with_for_update(skip_locked=True)
    ).all()
    for row in rows:
        conn.execute(
            update(images)
            .where(images.c.id == row.id)
            .values(
                status="error",
                error=f"failed {row.attempts} times: lease expired while running "
                "(worker lost or too slow)",
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
        )
        log.warning(
            "image %d of job %s: gave up after %d attempts", row.id, row.job_id, row.attempts
        )
    _finish_jobs(conn, (r.job_id for r in rows), now)
    return len(rows)


def claim_images(
    engine: Engine,
    *,
    worker_id: str,
    limit: int,
    lease_seconds: float,
    now: datetime | None = None,
    max_attempts: int | None = None,
) -> list[ClaimedImage]:
    """Lease up to ``limit`` images to ``worker_id``: highest priority first, then oldest.

    Claimable are queued images and running ones whose lease has expired; with
    ``max_attempts``, an expired image that has had its attempts goes to error instead.
    No two concurrent claimers get the same image: PostgreSQL skips rows another claimer
    has locked (FOR UPDATE SKIP LOCKED), SQLite lets one writer in at a time.
    """
    if limit < 1:
        raise ConfigurationError(f"claim limit must be at least 1, got {limit}")
    if lease_seconds <= 0:
        raise ConfigurationError(f"lease_seconds must be positive, got {lease_seconds}")
    now = _now(now)
    expires = now + timedelta(seconds=lease_seconds)
    with writing(engine) as conn:
        if max_attempts is not None:
            _fail_exhausted(conn, now, max_attempts)
        ids = (
            conn.execute(
                select(images.c.id)
                .where(or_(images.c.status == "queued", _expired(now)))
                .order_by(images.c.priority.desc(), images.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        if not ids:
            return []
        rows = conn.execute(
            update(images)
            .where(images.c.id.in_(ids))
            .values(
                status="running",
                lease_owner=worker_id,
                lease_expires_at=expires,
                attempts=images.c.attempts + 1,
                updated_at=now,
            )
            .returning(
                images.c.id,
                images.c.job_id,
                images.c.filename,
                images.c.stored_path,
                images.c.sha256,
                images.c.size_bytes,
                images.c.priority,
                images.c.attempts,
            )
        ).all()
        job_ids = sorted({r.job_id for r in rows})
        _mark_started(conn, job_ids, now)
        models = dict(
            conn.execute(select(jobs.c.id, jobs.c.model_name).where(jobs.c.id.in_(job_ids))).all()
        )
    claimed = [
        ClaimedImage(
            id=r.id,
            job_id=r.job_id,
            filename=r.filename,
            stored_path=r.stored_path,
            sha256=r.sha256,
            size_bytes=r.size_bytes,
            priority=r.priority,
            attempts=r.attempts,
            model_name=models[r.job_id],
            lease_expires_at=expires,
        )
        for r in rows
    ]
    claimed.sort(key=lambda c: (-c.priority, c.id))
    return claimed


def extend_lease(
    engine: Engine,
    *,
    worker_id: str,
    image_ids: Sequence[int],
    lease_seconds: float,
    now: datetime | None = None,
) -> list[int]:
    """Push back the lease of the images ``worker_id`` still holds; returns their ids."""
    now = _now(now)
    with writing(engine) as conn:
        return sorted(
            conn.execute(
                update(images)
                .where(
                    images.c.id.in_(list(image_ids)),
                    images.c.status == "running",
                    images.c.lease_owner == worker_id,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
                .returning(images.c.id)
            )
            .scalars()
            .all()
        )


def release_expired(
    engine: Engine, *, now: datetime | None = None, max_attempts: int | None = None
) -> int:
    """Requeue running images whose lease has expired (claiming does this too); returns how many.

    With ``max_attempts``, those that have had their attempts go to error instead.
    """
    now = _now(now)
    with writing(engine) as conn:
        failed = _fail_exhausted(conn, now, max_attempts) if max_attempts is not None else 0
        expired = (
            conn.execute(select(images.c.id).where(_expired(now)).with_for_update(skip_locked=True))
            .scalars()
            .all()
        )
        if expired:
            conn.execute(
                update(images)
                .where(images.c.id.in_(expired))
                .values(status="queued", lease_owner=None, lease_expires_at=None, updated_at=now)
            )
    return failed + len(expired)


def _insert_ignoring_duplicates(conn: Connection) -> Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(results).on_conflict_do_nothing(
            index_elements=["image_id", "model_name", "model_version"]
        )
    if conn.dialect.name == "sqlite":
        return sqlite.insert(results).on_conflict_do_nothing(
            index_elements=["image_id", "model_name", "model_version"]
        )
    raise ConfigurationError(f"unsupported database {conn.dialect.name!r}")


def _leased(image_ids: Iterable[int], worker_id: str) -> ColumnElement[bool]:
    return and_(
        images.c.id.in_(sorted(set(image_ids))),
        images.c.status == "running",
        images.c.lease_owner == worker_id,
    )


def record_results(
    engine: Engine,
    *,
    worker_id: str,
    results: Sequence[NewResult],
    now: datetime | None = None,
) -> int:
    """Store verdicts and mark their images done, for images ``worker_id`` still leases.

    Returns how many images were completed. Verdicts for images whose lease went to another
    worker are dropped; a second verdict for the same image and model version is ignored.
    """
    wanted = {r.image_id for r in results}
    if not wanted:
        return 0
    now = _now(now)
    with writing(engine) as conn:
        owned = conn.execute(
            update(images)
            .where(_leased(wanted, worker_id))
            .values(
                status="done", lease_owner=None, lease_expires_at=None, error=None, updated_at=now
            )
            .returning(images.c.id, images.c.job_id)
        ).all()
        owned_ids = {row.id for row in owned}
        rows = [_result_row(r, now) for r in results if r.image_id in owned_ids]
        if rows:
            conn.execute(_insert_ignoring_duplicates(conn), rows)
        _finish_jobs(conn, (row.job_id for row in owned), now)
    if len(owned_ids) < len(wanted):
        lost = len(wanted) - len(owned_ids)
        log.warning(
            "worker %s: %d of %d results dropped (lease lost)", worker_id, lost, len(wanted)
        )
    return len(owned_ids)


def _result_row(result: NewResult, now: datetime) -> dict[str, Any]:
    return {
        "image_id": result.image_id,
        "model_name": result.model_name,
        "model_version": result.model_version,
        "label": result.label,
        "confidence": float(result.confidence),
        "defect_score": float(result.defect_score),
        "is_defect": bool(result.is_defect),
        "flagged": bool(result.flagged),
        "probabilities": {str(k): float(v) for k, v in result.probabilities.items()},
        "scale_probabilities": {
            str(scale): {str(k): float(v) for k, v in probs.items()}
            for scale, probs in result.scale_probabilities.items()
        },
        "created_at": now,
    }


def record_errors(
    engine: Engine,
    *,
    worker_id: str,
    errors: Sequence[tuple[int, str]],
    max_attempts: int,
    permanent: bool,
    now: datetime | None = None,
) -> int:
    """Record failures of images ``worker_id`` still leases; returns how many were recorded.

    ``permanent`` (the file cannot be decoded): error at once, with the reason. Otherwise
    (a crash, an exception) the image is queued again, until it has had ``max_attempts``:
    then error with "failed N times: <last reason>".
    """
    if max_attempts < 1:
        raise ConfigurationError(f"max_attempts must be at least 1, got {max_attempts}")
    now = _now(now)
    reasons = dict(errors)
    job_ids: set[str] = set()
    with writing(engine) as conn:
        rows = conn.execute(
            select(images.c.id, images.c.job_id, images.c.attempts)
            .where(_leased(reasons, worker_id))
            .order_by(images.c.id)
            .with_for_update()
        ).all()
        for row in rows:
            reason = reasons[row.id]
            if permanent:
                status, message = "error", reason
            elif row.attempts >= max_attempts:
                status, message = "error", f"failed {row.attempts} times: {reason}"
            else:
                status, message = "queued", reason  # the last reason stays visible
            conn.execute(
                update(images)
                .where(images.c.id == row.id)
                .values(
                    status=status,
                    error=message,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=now,
                )
            )
            if status == "error":
                job_ids.add(row.job_id)
        _finish_jobs(conn, job_ids, now)
    return len(rows)


# -- reading -------------------------------------------------------------------------------------
def _summaries(conn: Connection, job_rows: Sequence[Row[Any]]) -> list[JobSummary]:
    ids = [row.id for row in job_rows]
    counts: dict[str, dict[str, int]] = {job_id: {} for job_id in ids}
    if ids:
        for job_id, status, n in conn.execute(
            select(images.c.job_id, images.c.status, func.count())
            .where(images.c.job_id.in_(ids))
            .group_by(images.c.job_id, images.c.status)
        ):
            counts[job_id][status] = n
    verdicts: dict[str, tuple[int, int]] = {}
    if ids:
        for job_id, defects, flagged in conn.execute(
            select(
                images.c.job_id,
                func.count().filter(results.c.is_defect),
                func.count().filter(results.c.flagged),
            )
            .select_from(images.join(results, _newest_result()))
            .where(images.c.job_id.in_(ids))
            .group_by(images.c.job_id)
        ):
            verdicts[job_id] = (defects, flagged)
    return [
        JobSummary(
            id=row.id,
            created_at=row.created_at,
            source=row.source,
            line=row.line,
            camera=row.camera,
            lot=row.lot,
            priority=row.priority,
            model_name=row.model_name,
            total=row.total_images,
            queued=counts[row.id].get("queued", 0),
            running=counts[row.id].get("running", 0),
            done=counts[row.id].get("done", 0),
            error=counts[row.id].get("error", 0),
            defects=verdicts.get(row.id, (0, 0))[0],
            flagged=verdicts.get(row.id, (0, 0))[1],
            started_at=row.started_at,
            finished_at=row.finished_at,
        )
        for row in job_rows
    ]


def _newest_result() -> ColumnElement[bool]:
    """Join condition: an image's newest verdict (one re-run with a new model has several)."""
    other = results.alias("other_results")
    newest = select(func.max(other.c.id)).where(other.c.image_id == images.c.id).scalar_subquery()
    return and_(results.c.image_id == images.c.id, results.c.id == newest)


def job_summary(engine: Engine, job_id: str) -> JobSummary | None:
    """A job with its counts by status, or None if there is no such job."""
    with reading(engine) as conn:
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else _summaries(conn, [row])[0]


def list_jobs(
    engine: Engine,
    *,
    limit: int = 50,
    offset: int = 0,
    status: str | None = None,
    line: str | None = None,
    since: datetime | None = None,
) -> list[JobSummary]:
    """Jobs newest first; ``status`` is queued, running or finished (see ``JobSummary``)."""
    query = select(jobs).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
    if status == "queued":
        query = query.where(jobs.c.started_at.is_(None), jobs.c.finished_at.is_(None))
    elif status == "running":
        query = query.where(jobs.c.started_at.is_not(None), jobs.c.finished_at.is_(None))
    elif status == "finished":
        query = query.where(jobs.c.finished_at.is_not(None))
    elif status is not None:
        raise ConfigurationError(
            f"unknown job status {status!r}: expected one of {', '.join(JOB_STATUSES)}"
        )
    if line is not None:
        query = query.where(jobs.c.line == line)
    if since is not None:
        query = query.where(jobs.c.created_at >= as_utc(since))
    with reading(engine) as conn:
        rows = conn.execute(query.limit(limit).offset(offset)).all()
        return _summaries(conn, rows)


# What ``StoredResult.of_row`` reads (with a created_at of the query's choosing), for queries
# that outer-join an image's newest result.
RESULT_COLUMNS = (
    results.c.id.label("result_id"),
    results.c.model_name,
    results.c.model_version,
    results.c.label,
    results.c.confidence,
    results.c.defect_score,
    results.c.is_defect,
    results.c.flagged,
    results.c.probabilities,
    results.c.scale_probabilities,
)


def job_results(engine: Engine, job_id: str) -> list[ImageResult]:
    """Every image of a job in intake order, each with its newest verdict or None."""
    query = (
        select(
            images.c.id,
            images.c.filename,
            images.c.sha256,
            images.c.status,
            images.c.attempts,
            images.c.error,
            *RESULT_COLUMNS,
            results.c.created_at,
        )
        .select_from(images.outerjoin(results, _newest_result()))
        .where(images.c.job_id == job_id)
        .order_by(images.c.id)
    )
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    return [
        ImageResult(
            image_id=row.id,
            filename=row.filename,
            sha256=row.sha256,
            status=row.status,
            attempts=row.attempts,
            error=row.error,
            result=StoredResult.of_row(row, row.created_at),
        )
        for row in rows
    ]


def get_image(engine: Engine, image_id: int) -> ImageRecord | None:
    """One image row, or None."""
    with reading(engine) as conn:
        row = conn.execute(select(images).where(images.c.id == image_id)).mappings().first()
    return None if row is None else ImageRecord(**row)


def queue_depth(engine: Engine) -> int:
    """Images waiting or being classified."""
    with reading(engine) as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(images).where(images.c.status.in_(OPEN_STATUSES))
            ).scalar_one()
        )


# -- API tokens ----------------------------------------------------------------------------------
def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(engine: Engine, name: str) -> str:
    """A new API token named ``name``; returns the token, of which only a hash is stored.

    A revoked token's name can be given to a new token (the old row is replaced).
    """
    name = name.strip()
    if not name or len(name) > 128:
        raise ConfigurationError(f"token name must be 1 to 128 characters, got {name!r}")
    token = secrets.token_urlsafe(32)
    values = {
        "token_hash": _token_hash(token),
        "created_at": utcnow(),
        "last_used_at": None,
        "revoked_at": None,
    }
    try:
        with writing(engine) as conn:
            replaced = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_not(None))
                .values(**values)
            ).rowcount
            if not replaced:
                conn.execute(insert(api_tokens).values(name=name, **values))
    except IntegrityError:
        raise ConfigurationError(
            f"an active token named {name!r} already exists: revoke it first or pick another name"
        ) from None
    log.info("API token %r created", name)
    return token


def verify_token(engine: Engine, token: str, *, now: datetime | None = None) -> str | None:
    """The name of the active token ``token``, or None; notes when it was last used."""
    now = _now(now)
    digest = _token_hash(token)
    with reading(engine) as conn:
        row = conn.execute(
            select(api_tokens.c.name, api_tokens.c.last_used_at).where(
                api_tokens.c.token_hash == digest, api_tokens.c.revoked_at.is_(None)
            )
        ).first()
    if row is None:
        return None
    if row.last_used_at is None or now - row.last_used_at >= TOKEN_TOUCH_INTERVAL:
        with writing(engine) as conn:
            conn.execute(
                update(api_tokens).where(api_tokens.c.token_hash == digest).values(last_used_at=now)
            )
    return str(row.name)


def revoke_token(engine: Engine, name: str) -> bool:
    """Revoke the active token ``name``; False if there is none."""
    with writing(engine) as conn:
        revoked = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ).rowcount
    if revoked:
        log.info("API token %r revoked", name)
    return bool(revoked)
