"""Turning a request's images into ``NewImage`` rows: uploads streamed to disk, or files and
folders named by path checked to lie inside the allowed roots, each with its sha256 and size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from inspector.db.records import NewImage
from inspector.imaging import is_image_file

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_FILENAME_CHARS = 512  # images.filename
MAX_STORED_PATH_CHARS = 1024  # images.stored_path


class PathRefused(Exception):
    """A requested path cannot be taken; the message names it and says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def new_intake_folder(data_dir: Path) -> Path:
    """A new, empty folder ``<data_dir>/images/<intake id>`` for one request's uploads.

    Named by an id of our own: ``create_job`` mints the job id inside its transaction, and the
    files must be on disk, with their final paths, before that transaction.
    """
    folder = data_dir / "images" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def remove_intake_folder(folder: Path) -> None:
    """Undo ``store_uploads`` when the job could not be created: no orphaned files."""
    shutil.rmtree(folder, ignore_errors=True)


def _copy_hashing(source: IO[bytes], target: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with target.open("xb") as out:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def store_uploads(uploads: Sequence[FileStorage], folder: Path) -> list[NewImage]:
    """Stream each upload to ``folder/<n>_<safe name>``; the original name goes to the row.

    Empty uploads are kept too: the worker records why they cannot be decoded.
    """
    stored = []
    for n, upload in enumerate(uploads):
        original = upload.filename or f"upload-{n}"
        safe = secure_filename(original) or "upload"
        target = folder / f"{n}_{safe}"
        sha256, size = _copy_hashing(upload.stream, target)
        stored.append(
            NewImage(filename=original, stored_path=str(target), sha256=sha256, size_bytes=size)
        )
    return stored


def _hash_file(path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _inside(real: str, roots: Sequence[Path]) -> bool:
    return any(os.path.commonpath([real, str(root)]) == str(root) for root in roots)


def _referenced(shown: str, real: str, filename: str) -> NewImage:
    if len(real) > MAX_STORED_PATH_CHARS:
        raise PathRefused(shown, f"path longer than {MAX_STORED_PATH_CHARS} characters")
    try:
        sha256, size = _hash_file(real)
    except OSError as exc:
        raise PathRefused(shown, f"cannot read it ({exc.strerror or exc})") from None
    return NewImage(
        filename=filename[-MAX_FILENAME_CHARS:], stored_path=real, sha256=sha256, size_bytes=size
    )


def _walk(shown: str, folder: str, roots: Sequence[Path]) -> list[tuple[str, str, str]]:
    """(shown, real path, name relative to ``folder``) of every image file under ``folder``.

    Symlinked sub-folders are not descended; a symlinked file must resolve inside a root too.
    """
    found = []
    for here, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if not is_image_file(name):
                continue
            path = os.path.join(here, name)
            real = os.path.realpath(path)
            relative = os.path.relpath(path, folder)
            shown_file = os.path.join(shown, relative)
            if not _inside(real, roots):
                raise PathRefused(shown_file, "is a link to a file outside the allowed roots")
            if os.path.isfile(real):
                found.append((shown_file, real, relative))
    return found


def resolve_paths(paths: Sequence[str], roots: Sequence[Path]) -> list[NewImage]:
    """The images that ``paths`` (files, or folders walked for image files) name, in place.

    Every path must be absolute and resolve, symlinks and ``..`` followed, inside one of
    ``roots``; files named directly are taken whatever their extension. A file reached twice
    is taken once.
    """
    if not roots:
        raise PathRefused(
            paths[0] if paths else "paths",
            "no folders are open to path intake (INSPECTOR_ALLOWED_ROOTS is empty)",
        )
    candidates: list[tuple[str, str, str]] = []
    for shown in paths:
        if not os.path.isabs(shown):
            raise PathRefused(shown, "must be an absolute path")
        real = os.path.realpath(shown)
        if not _inside(real, roots):
            allowed = os.pathsep.join(str(r) for r in roots)
            raise PathRefused(shown, f"is outside the allowed roots ({allowed})")
        if os.path.isdir(real):
            found = _walk(shown, real, roots)
            if not found:
                raise PathRefused(shown, "folder holds no image files")
            candidates.extend(found)
        elif os.path.isfile(real):
            candidates.append((shown, real, os.path.basename(shown)))
        elif os.path.exists(real):
            raise PathRefused(shown, "is neither a regular file nor a folder")
        else:
            raise PathRefused(shown, "does not exist")
    seen: set[str] = set()
    taken = []
    for shown, real, filename in candidates:
        if real in seen:
            continue
        seen.add(real)
        taken.append(_referenced(shown, real, filename))
    return taken
