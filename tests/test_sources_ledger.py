"""The watch ledger and the after-inspection actions, without a watcher: taking files is one
transaction, copies are recorded and not inspected, and an action cut short by a crash is
finished, not repeated, on the next pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import Engine

from inspector.db import queries as q
from inspector.sources.after import settle_files
from inspector.sources.config import WatchFolder
from inspector.sources.ledger import (
    FoundFile,
    begin_actions,
    known_files,
    ledger_rows,
    settled_files,
    take_files,
)
from tests.test_sources_watch import QuickWorker, png_bytes


def found(folder: Path, name: str, data: bytes, error: str | None = None) -> FoundFile:
    path = folder / name
    path.write_bytes(data)
    st = path.stat()
    return FoundFile(
        path=str(path),
        filename=name,
        size_bytes=st.st_size,
        mtime_ns=st.st_mtime_ns,
        sha256="" if error else hashlib.sha256(data).hexdigest(),
        error=error,
    )


def test_taking_files_writes_one_job_and_records_copies(engine: Engine, tmp_path: Path) -> None:
    folder = WatchFolder(path=tmp_path, line="L2", lot="P-9", priority=3)
    a, b = png_bytes(1), png_bytes(2)
    taken = take_files(
        engine,
        folder,
        [found(tmp_path, "a.png", a), found(tmp_path, "b.png", b), found(tmp_path, "a2.png", a)],
    )
    assert (taken.images, taken.duplicates) == (2, 1) and taken.job_id is not None
    summary = q.job_summary(engine, taken.job_id)
    assert summary is not None
    assert (summary.source, summary.line, summary.lot, summary.priority, summary.total) == (
        "watch",
        "L2",
        "P-9",
        3,
        2,
    )
    rows = ledger_rows(engine, folder)
    assert [(r["path"], r["duplicate"], r["state"], r["action"]) for r in rows] == [
        (str(tmp_path / "a.png"), False, "settled", "leave"),
        (str(tmp_path / "b.png"), False, "settled", "leave"),
        (str(tmp_path / "a2.png"), True, "settled", "leave"),
    ]
    assert rows[2]["image_id"] == rows[0]["image_id"]
    # Another copy, later: no job at all.
    again = take_files(engine, folder, [found(tmp_path, "a3.png", a)])
    assert (again.job_id, again.images, again.duplicates) == (None, 0, 1)
    assert len(q.job_results(engine, taken.job_id)) == 2
    assert known_files(engine, folder) == {
        r["path"]: (r["size_bytes"], r["mtime_ns"]) for r in ledger_rows(engine, folder)
    }
    # The same content in another folder is another line's image: taken there.
    other = WatchFolder(path=tmp_path / "other")
    (tmp_path / "other").mkdir()
    assert take_files(engine, other, [found(tmp_path / "other", "a.png", a)]).images == 1


def test_a_file_that_cannot_be_read_is_an_error_image_at_once(
    engine: Engine, tmp_path: Path
) -> None:
    folder = WatchFolder(path=tmp_path, after="move")
    taken = take_files(
        engine,
        folder,
        [found(tmp_path, "locked.png", b"x", error="locked.png: cannot read file (EIO)")],
    )
    assert taken.job_id is not None
    [image] = q.job_results(engine, taken.job_id)
    assert (image.status, image.error, image.sha256) == (
        "error",
        "locked.png: cannot read file (EIO)",
        "",
    )
    summary = q.job_summary(engine, taken.job_id)
    assert summary is not None and summary.finished_at is not None
    [(row, action, where)] = settle_files(engine, folder)
    assert (action, where) == ("move", str(tmp_path / "failed" / "locked.png"))
    assert row.status == "error"


def test_after_actions_move_delete_and_never_overwrite(engine: Engine, tmp_path: Path) -> None:
    moving = tmp_path / "moving"
    deleting = tmp_path / "deleting"
    moving.mkdir()
    deleting.mkdir()
    (moving / "processed").mkdir()
    (moving / "processed" / "a.png").write_bytes(b"an older a.png")
    move = WatchFolder(path=moving, after="move", sidecar=True)
    delete = WatchFolder(path=deleting, after="delete")
    take_files(engine, move, [found(moving, "a.png", png_bytes(1))])
    take_files(
        engine,
        delete,
        [found(deleting, "b.png", png_bytes(2)), found(deleting, "bad.png", b"not an image")],
    )
    assert settled_files(engine, move) == []  # nothing settled before a worker ran
    QuickWorker(engine).drain()
    [(row, action, where)] = settle_files(engine, move)
    assert (action, where) == ("move", str(moving / "processed" / "a.1.png"))
    assert (moving / "processed" / "a.png").read_bytes() == b"an older a.png"
    assert (moving / "processed" / "a.1.png").read_bytes() == png_bytes(1)
    assert (moving / "processed" / "a.1.png.json").is_file()
    image = q.get_image(engine, row.image_id)
    assert image is not None and image.stored_path == where
    outcomes = {r.filename: (a, w) for r, a, w in settle_files(engine, delete)}
    assert outcomes == {
        "b.png": ("delete", None),
        "bad.png": ("move", str(deleting / "failed" / "bad.png")),  # errors are kept
    }
    assert sorted(p.name for p in deleting.iterdir()) == ["failed"]
    assert [r["current_path"] for r in ledger_rows(engine, delete)] == [
        None,
        str(deleting / "failed" / "bad.png"),
    ]
    assert settle_files(engine, move) == [] and settle_files(engine, delete) == []


def test_an_action_cut_short_by_a_crash_is_finished_not_repeated(
    engine: Engine, tmp_path: Path
) -> None:
    folder = WatchFolder(path=tmp_path, after="move")
    take_files(
        engine,
        folder,
        [found(tmp_path, "moved.png", png_bytes(1)), found(tmp_path, "not-yet.png", png_bytes(2))],
    )
    QuickWorker(engine).drain()
    first, second = settled_files(engine, folder)
    target_1 = str(tmp_path / "processed" / "moved.png")
    target_2 = str(tmp_path / "processed" / "not-yet.png")
    begin_actions(engine, {first.id: ("move", target_1), second.id: ("move", target_2)})
    # The crash: the first file had been moved, the second not, the ledger not settled.
    (tmp_path / "processed").mkdir()
    Path(first.path).rename(target_1)
    assert [r.state for r in settled_files(engine, folder)] == ["acting", "acting"]
    outcomes = [(r.filename, a, w) for r, a, w in settle_files(engine, folder)]
    assert outcomes == [("moved.png", "move", target_1), ("not-yet.png", "move", target_2)]
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == [
        "moved.png",
        "not-yet.png",
    ]
    for row in (first, second):
        image = q.get_image(engine, row.image_id)
        assert image is not None and Path(image.stored_path).parent == tmp_path / "processed"
    assert [r["state"] for r in ledger_rows(engine, folder)] == ["settled", "settled"]
