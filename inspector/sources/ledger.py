"""The never-twice ledger of watched files (table ``watched_files``), next to the jobs it made.

Taking files writes the job, its images and their ledger rows in one transaction: a crash
leaves either all of them or none, so a file is neither lost nor inspected twice. A file whose
content (sha256) this folder has already taken is recorded as a duplicate of that image and
not inspected again; it still gets the after-inspection action once that image is settled.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from inspector.db.engine import reading, writing
from inspector.db.queries import RESULT_COLUMNS, insert_job, set_stored_paths
from inspector.db.records import NewImage, StoredResult
from inspector.db.schema import images, jobs, results, utcnow, watched_files
from inspector.sources.config import WatchFolder

log = logging.getLogger(__name__)

SETTLED_STATUSES = ("done", "error")
_IN_CHUNK = 500  # values per IN (...) list, well under every backend's parameter limit


@dataclass(frozen=True)
class FoundFile:
    """A complete file found in a watched folder, ready to be taken."""

    path: str  # absolute
    filename: str  # relative to the watched folder: the image's name
    size_bytes: int
    mtime_ns: int
    sha256: str  # "" when it could not be read
    error: str | None = None  # why it could not be read: the image is an error at once


@dataclass(frozen=True)
class TakenFiles:
    """What one ``take_files`` did: the new job (None when every file was a duplicate)."""

    job_id: str | None
    images: int
    duplicates: int


@dataclass(frozen=True)
class SettledFile:
    """A ledger row whose image is settled (done or error) and whose file awaits its action."""

    id: int
    path: str  # where it was found
    current_path: str | None  # where it is, or (state "acting") is being put
    state: str  # pending or acting
    action: str | None  # set once acting
    duplicate: bool
    image_id: int
    job_id: str
    filename: str
    stored_path: str  # the image's file (for a duplicate, the earlier copy)
    sha256: str
    status: str  # the image's: done or error
    error: str | None
    line: str | None
    camera: str | None
    lot: str | None
    result: StoredResult | None
    found_at: datetime


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def known_files(engine: Engine, folder: WatchFolder) -> dict[str, tuple[int, int]]:
    """Path -> (size, mtime_ns) of the files the ledger holds from ``folder`` and where they
    are now; a file still there with the same size and time is not looked at again."""
    with reading(engine) as conn:
        rows = conn.execute(
            select(
                watched_files.c.current_path, watched_files.c.size_bytes, watched_files.c.mtime_ns
            ).where(
                watched_files.c.folder == folder.name, watched_files.c.current_path.is_not(None)
            )
        ).all()
    return {row.current_path: (row.size_bytes, row.mtime_ns) for row in rows}


def _lock_folder(conn: Connection, folder: WatchFolder) -> None:
    # Two watchers of one folder take turns (SQLite's BEGIN IMMEDIATE already serialises),
    # so the second sees the first's rows and records a duplicate instead of a second image.
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"inspector.watch:{folder.name}".encode())
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _earlier_images(conn: Connection, folder: WatchFolder, shas: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for chunk in _chunks(sorted(set(shas))):
        for sha, image_id in conn.execute(
            select(watched_files.c.sha256, func.min(watched_files.c.image_id))
            .where(
                watched_files.c.folder == folder.name,
                watched_files.c.sha256.in_(chunk),
                watched_files.c.duplicate.is_(False),
            )
            .group_by(watched_files.c.sha256)
        ):
            found[sha] = image_id
    return found


def take_files(engine: Engine, folder: WatchFolder, found: Sequence[FoundFile]) -> TakenFiles:
    """Record ``found`` in one transaction: a job (source "watch", the folder's metadata) for the
    files whose content is new to the folder, ledger rows for all of them."""
    if not found:
        return TakenFiles(None, 0, 0)
    now = utcnow()
    with writing(engine) as conn:
        _lock_folder(conn, folder)
        earlier = _earlier_images(conn, folder, [f.sha256 for f in found if f.sha256])
        new: list[FoundFile] = []
        first_in_batch: dict[str, int] = {}  # sha -> index in new
        copies: list[tuple[FoundFile, int | None, int | None]] = []  # image id or index in new
        for f in found:
            if f.sha256 and f.sha256 in earlier:
                copies.append((f, earlier[f.sha256], None))
            elif f.sha256 and f.sha256 in first_in_batch:
                copies.append((f, None, first_in_batch[f.sha256]))
            else:
                if f.sha256:
                    first_in_batch[f.sha256] = len(new)
                new.append(f)
        job_id = None
        image_ids: list[int] = []
        if new:
            job_id, image_ids = insert_job(
                conn,
                source="watch",
                files=[
                    NewImage(
                        filename=f.filename,
                        stored_path=f.path,
                        sha256=f.sha256,
                        size_bytes=f.size_bytes,
                    )
                    for f in new
                ],
                errors={n: f.error for n, f in enumerate(new) if f.error is not None},
                line=folder.line,
                camera=folder.camera,
                lot=folder.lot,
                priority=folder.priority,
                model_name=folder.model_name,
            )
        settled = not folder.acts_after
        common = {
            "folder": folder.name,
            "state": "settled" if settled else "pending",
            "action": "leave" if settled else None,
            "created_at": now,
            "settled_at": now if settled else None,
        }
        rows = [
            {**_ledger_values(f), "image_id": image_id, "duplicate": False, **common}
            for f, image_id in zip(new, image_ids, strict=True)
        ]
        for f, image_id, index in copies:
            original = image_id if image_id is not None else image_ids[index or 0]
            rows.append({**_ledger_values(f), "image_id": original, "duplicate": True, **common})
        conn.execute(insert(watched_files), rows)
    for f, _, _ in copies:
        log.info(
            "watch folder %s: %s has the content of a file taken before: not inspected again",
            folder.name,
            f.filename,
        )
    return TakenFiles(job_id, len(new), len(copies))


def _ledger_values(f: FoundFile) -> dict[str, object]:
    return {
        "path": f.path,
        "size_bytes": f.size_bytes,
        "mtime_ns": f.mtime_ns,
        "sha256": f.sha256,
        "current_path": f.path,
    }


def _newest_result() -> ColumnElement[bool]:
    other = results.alias("other_results")
    newest = select(func.max(other.c.id)).where(other.c.image_id == images.c.id).scalar_subquery()
    return and_(results.c.image_id == images.c.id, results.c.id == newest)


def settled_files(engine: Engine, folder: WatchFolder, *, limit: int = 500) -> list[SettledFile]:
    """Files of ``folder`` whose image is settled and whose after-inspection action is due
    (or was begun and not finished: state "acting"), oldest first."""
    query = (
        select(
            watched_files.c.id,
            watched_files.c.path,
            watched_files.c.current_path,
            watched_files.c.state,
            watched_files.c.action,
            watched_files.c.duplicate,
            watched_files.c.created_at.label("found_at"),
            images.c.id.label("image_id"),
            images.c.job_id,
            images.c.filename,
            images.c.stored_path,
            images.c.sha256,
            images.c.status,
            images.c.error,
            jobs.c.line,
            jobs.c.camera,
            jobs.c.lot,
            *RESULT_COLUMNS,
            results.c.created_at.label("result_at"),
        )
        .select_from(
            watched_files.join(images, images.c.id == watched_files.c.image_id)
            .join(jobs, jobs.c.id == images.c.job_id)
            .outerjoin(results, _newest_result())
        )
        .where(
            watched_files.c.folder == folder.name,
            or_(
                watched_files.c.state == "acting",
                and_(watched_files.c.state == "pending", images.c.status.in_(SETTLED_STATUSES)),
            ),
        )
        .order_by(watched_files.c.id)
        .limit(limit)
    )
    with reading(engine) as conn:
        rows = conn.execute(query).all()
    return [
        SettledFile(
            id=row.id,
            path=row.path,
            current_path=row.current_path,
            state=row.state,
            action=row.action,
            duplicate=bool(row.duplicate),
            image_id=row.image_id,
            job_id=row.job_id,
            filename=row.filename,
            stored_path=row.stored_path,
            sha256=row.sha256,
            status=row.status,
            error=row.error,
            line=row.line,
            camera=row.camera,
            lot=row.lot,
            found_at=row.found_at,
            result=StoredResult.of_row(row, row.result_at),
        )
        for row in rows
    ]


def begin_actions(engine: Engine, plans: Mapping[int, tuple[str, str | None]]) -> None:
    """Note, before touching any file, what will be done with each (ledger id -> action and
    target path), so that a crash half-way is finished on the next start, not repeated."""
    if not plans:
        return
    with writing(engine) as conn:
        conn.execute(
            update(watched_files)
            .where(watched_files.c.id == bindparam("b_id"), watched_files.c.state == "pending")
            .values(state="acting", action=bindparam("b_action"), current_path=bindparam("b_path")),
            [
                {"b_id": ledger_id, "b_action": action, "b_path": target}
                for ledger_id, (action, target) in plans.items()
            ],
        )


def finish_actions(
    engine: Engine,
    done: Mapping[int, tuple[str, str | None]],
    stored_paths: Mapping[int, str],
) -> None:
    """Settle ledger rows (id -> the action carried out and where the file now is, None: gone)
    and, in the same transaction, point moved images at their files' new places (image id ->
    path)."""
    if not done:
        return
    now = utcnow()
    with writing(engine) as conn:
        conn.execute(
            update(watched_files)
            .where(watched_files.c.id == bindparam("b_id"))
            .values(
                state="settled",
                action=bindparam("b_action"),
                current_path=bindparam("b_path"),
                settled_at=now,
            ),
            [
                {"b_id": ledger_id, "b_action": action, "b_path": where}
                for ledger_id, (action, where) in done.items()
            ],
        )
        set_stored_paths(conn, stored_paths)


def ledger_rows(engine: Engine, folder: WatchFolder | None = None) -> list[dict[str, object]]:
    """Every ledger row (of ``folder``), oldest first: for tests, benchmarks and inspection."""
    query = select(watched_files).order_by(watched_files.c.id)
    if folder is not None:
        query = query.where(watched_files.c.folder == folder.name)
    with reading(engine) as conn:
        return [dict(row) for row in conn.execute(query).mappings()]
