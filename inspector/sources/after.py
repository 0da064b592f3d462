"""What becomes of a watched file once its image is settled: left where it is, moved to
``processed/`` (verdict) or ``failed/`` (error) inside its watched folder, or deleted; and
optionally a JSON sidecar with the verdict written beside it.

Moving keeps the image servable: the image row's ``stored_path`` follows the file, in the same
transaction that settles the ledger row. A deleted file's image keeps its old path (the API
then answers that the file is gone).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Set
from typing import Any

from sqlalchemy import Engine

from inspector.sources.config import FAILED_DIR, PROCESSED_DIR, SIDECAR_SUFFIX, WatchFolder
from inspector.sources.ledger import SettledFile, begin_actions, finish_actions, settled_files

log = logging.getLogger(__name__)


def _unused(target: str, reserved: Set[str] = frozenset()) -> str:
    """``target``, or ``name.N.ext`` with the first N that names no file (nor a reserved one)."""
    stem, suffix = os.path.splitext(target)
    candidate, n = target, 1
    while os.path.lexists(candidate) or candidate in reserved:
        candidate = f"{stem}.{n}{suffix}"
        n += 1
    return candidate


def free_target(
    folder: WatchFolder, path: str, subdir: str, reserved: Set[str] = frozenset()
) -> str:
    """``<folder>/<subdir>/<path relative to folder>``, or ``name.N.ext`` when that is taken."""
    relative = os.path.relpath(path, folder.path)
    return _unused(os.path.join(folder.path, subdir, relative), reserved)


def plan_action(
    folder: WatchFolder, row: SettledFile, reserved: Set[str]
) -> tuple[str, str | None]:
    """The action for a settled file and where the file will be: (leave, path), (move,
    target) or (delete, None)."""
    done = row.status == "done"
    action = folder.after if done else folder.after_error
    if action == "move":
        return "move", free_target(
            folder, row.path, PROCESSED_DIR if done else FAILED_DIR, reserved
        )
    if action == "delete":
        return "delete", None
    return "leave", row.path


def carry_out(
    folder: WatchFolder, row: SettledFile, action: str, target: str | None
) -> tuple[str, str | None]:
    """Do ``action``; returns what was done and where the file now is (None: gone).

    Safe to repeat after a crash: a file already at its target counts as moved. A file that
    cannot be moved or deleted is left where it is, with a warning naming it and why.
    """
    source = row.path
    try:
        if action == "move" and target is not None:
            if not os.path.lexists(source):
                if os.path.lexists(target):
                    return "move", target  # moved before a crash, settled now
                log.warning(
                    "watch folder %s: %s is gone, nothing to move", folder.name, row.filename
                )
                return "leave", None
            os.makedirs(os.path.dirname(target), exist_ok=True)
            target = _unused(target)  # another file may have taken the name since
            shutil.move(source, target)
            return "move", target
        if action == "delete":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)
            return "delete", None
    except OSError as exc:
        log.warning(
            "watch folder %s: cannot %s %s (%s): left where it is",
            folder.name,
            action,
            source,
            exc.strerror or exc,
        )
    return "leave", source if os.path.lexists(source) else None


def sidecar_document(
    row: SettledFile, where: str | None, image_path: str | None = None
) -> dict[str, Any]:
    """The JSON written beside a settled file: its image, job, metadata and verdict.

    ``image_path``: where the image's own file is now, when it is not ``row.stored_path``
    (for a duplicate whose original was moved in the same batch)."""
    result = row.result
    return {
        "image_id": row.image_id,
        "job_id": row.job_id,
        "file": os.path.basename(where or row.path),
        "found_at_path": row.path,
        "path": where,
        "sha256": row.sha256 or None,
        "duplicate_of": (image_path or row.stored_path) if row.duplicate else None,
        "line": row.line,
        "camera": row.camera,
        "lot": row.lot,
        "status": row.status,
        "error": row.error,
        "result": None
        if result is None
        else {
            "label": result.label,
            "confidence": result.confidence,
            "defect_score": result.defect_score,
            "is_defect": result.is_defect,
            "flagged": result.flagged,
            "model_name": result.model_name,
            "model_version": result.model_version,
            "probabilities": result.probabilities,
            "created_at": result.created_at.isoformat(),
        },
    }


def write_sidecar(path: str, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` whole or not at all (a hidden temporary file, renamed)."""
    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def settle_files(
    engine: Engine, folder: WatchFolder, *, limit: int = 500
) -> list[tuple[SettledFile, str, str | None]]:
    """Carry out the after-inspection action of every file of ``folder`` whose image is
    settled (up to ``limit``); returns each file with what was done and where it is now."""
    rows = settled_files(engine, folder, limit=limit)
    if not rows:
        return []
    reserved: set[str] = set()
    plans: dict[int, tuple[str, str | None]] = {}
    for row in rows:
        if row.state == "acting":
            plans[row.id] = (row.action or "leave", row.current_path)
            continue
        plans[row.id] = plan_action(folder, row, reserved)
        if plans[row.id][1] is not None:
            reserved.add(str(plans[row.id][1]))
    begin_actions(engine, {row.id: plans[row.id] for row in rows if row.state == "pending"})
    outcomes: list[tuple[SettledFile, str, str | None]] = []
    done: dict[int, tuple[str, str | None]] = {}
    moved_images: dict[int, str] = {}
    for row in rows:
        action, target = plans[row.id]
        action, where = carry_out(folder, row, action, target)
        if folder.sidecar:
            try:
                document = sidecar_document(row, where, moved_images.get(row.image_id))
                write_sidecar((where or row.path) + SIDECAR_SUFFIX, document)
            except OSError as exc:
                log.warning(
                    "watch folder %s: cannot write the sidecar of %s (%s)",
                    folder.name,
                    row.filename,
                    exc.strerror or exc,
                )
        done[row.id] = (action, where)
        if action == "move" and where is not None and not row.duplicate:
            moved_images[row.image_id] = where
        outcomes.append((row, action, where))
    finish_actions(engine, done, moved_images)
    return outcomes
