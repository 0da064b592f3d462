"""Watched folders with real file-system events in temporary folders: every file taken once,
only when complete, and the database rows checked (jobs, images, ledger, results)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import Engine, func, select

from inspector.db import queries as q
from inspector.db.records import NewResult
from inspector.db.schema import images, jobs, results, watched_files
from inspector.errors import ImageDecodeError
from inspector.imaging import read_image
from inspector.settings import Settings
from inspector.sources import folders as folders_module
from inspector.sources.config import WatchFolder, load_watch_folders
from inspector.sources.folders import FolderWatcher
from inspector.sources.service import run_watch
from inspector.store import ModelStore
from workers.processing import BatchProcessor

STABLE = 0.2  # seconds a file must stay unchanged: short, so the tests stay fast


def png_bytes(seed: int, size: int = 8) -> bytes:
    """A small PNG whose content differs for every seed."""
    rng = np.random.default_rng(seed)
    ok, encoded = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder(path: Path, **overrides: Any) -> WatchFolder:
    values: dict[str, Any] = {
        "path": path,
        "stability_seconds": STABLE,
        "rescan_seconds": 3600.0,  # only events and the start-up scan, unless a test says so
        "line": "L1",
        "camera": "cam-2",
        "lot": "lot-7",
    }
    values.update(overrides)
    return WatchFolder(**values)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


def watch_images(engine: Engine) -> list[Any]:
    """Every image of a watch job, with its job's metadata, in id order."""
    query = (
        select(images, jobs.c.source, jobs.c.line, jobs.c.camera, jobs.c.lot)
        .select_from(images.join(jobs, jobs.c.id == images.c.job_id))
        .order_by(images.c.id)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    assert all(r.source == "watch" for r in rows)
    return rows


def ledger(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(select(watched_files).order_by(watched_files.c.id)).all()


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


class QuickWorker:
    """Settles queued images as a worker would, without a model: an image that decodes gets a
    fixed verdict, one that does not an error (the real BatchProcessor runs in one test)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def drain(self) -> int:
        total = 0
        while claimed := q.claim_images(
            self.engine, worker_id="quick", limit=200, lease_seconds=60
        ):
            verdicts, errors = [], []
            for image in claimed:
                try:
                    read_image(image.stored_path)
                except ImageDecodeError as exc:
                    errors.append((image.id, str(exc)))
                    continue
                verdicts.append(
                    NewResult(
                        image_id=image.id,
                        model_name="quick",
                        model_version=1,
                        label="ok",
                        confidence=0.9,
                        defect_score=0.1,
                        is_defect=False,
                        flagged=False,
                        probabilities={"ok": 0.9, "scratch": 0.1},
                        scale_probabilities={64: {"ok": 0.9, "scratch": 0.1}},
                    )
                )
            if verdicts:
                q.record_results(self.engine, worker_id="quick", results=verdicts)
            if errors:
                q.record_errors(
                    self.engine, worker_id="quick", errors=errors, max_attempts=3, permanent=True
                )
            total += len(claimed)
        return total


@dataclass
class Running:
    watcher: FolderWatcher
    enqueued: list[str] = field(default_factory=list)


@contextmanager
def watching(engine: Engine, *folders: WatchFolder, worker: Any = None) -> Iterator[Running]:
    """A FolderWatcher started here (folders opened, start-up scan done) and looping on a
    thread; with ``worker``, a thread that drains it whenever a job is enqueued."""
    stop = threading.Event()
    wake = threading.Event()
    failures: list[BaseException] = []

    def enqueue(job_id: str) -> None:
        running.enqueued.append(job_id)
        wake.set()

    def guarded(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # re-raised in the test
                failures.append(exc)

        return run

    def work() -> None:
        while not stop.is_set():
            wake.wait(0.05)
            wake.clear()
            worker.drain()

    watcher = FolderWatcher(engine, folders, enqueue)
    running = Running(watcher)
    watcher.start()
    threads = [threading.Thread(target=guarded(lambda: watcher.loop(stop)), daemon=True)]
    if worker is not None:
        threads.append(threading.Thread(target=guarded(work), daemon=True))
    for thread in threads:
        thread.start()
    try:
        yield running
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        watcher.close()
    assert not failures, failures
    assert not any(t.is_alive() for t in threads)


def write_files(where: Path, count: int, first_seed: int = 0) -> dict[str, bytes]:
    where.mkdir(parents=True, exist_ok=True)
    written = {}
    for n in range(count):
        data = png_bytes(first_seed + n)
        path = where / f"img_{first_seed + n:05d}.png"
        path.write_bytes(data)
        written[str(path)] = data
    return written


# -- the tests -------------------------------------------------------------------------------------
def test_a_burst_of_1000_files_is_taken_once_each_and_moved_after_inspection(
    engine: Engine, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with watching(
        engine, folder(inbox, after="move", sidecar=False), worker=QuickWorker(engine)
    ) as running:
        written = write_files(inbox, 1000)
        wait_for(lambda: count(engine, results) == 1000, timeout=60, what="1000 results")
        wait_for(
            lambda: all(r.state == "settled" for r in ledger(engine)),
            what="every file moved",
        )
    rows = watch_images(engine)
    assert len(rows) == 1000
    by_name = {r.filename: r for r in rows}
    assert len(by_name) == 1000
    for path, data in written.items():
        row = by_name[os.path.basename(path)]
        assert row.sha256 == sha256(data) and row.size_bytes == len(data)
        assert row.status == "done"
        assert (row.line, row.camera, row.lot) == ("L1", "cam-2", "lot-7")
        # The file moved to processed/, and the image row followed it.
        assert row.stored_path == str(inbox / "processed" / os.path.basename(path))
        assert Path(row.stored_path).read_bytes() == data
    assert sorted(p.name for p in inbox.iterdir()) == ["processed"]
    entries = ledger(engine)
    assert len(entries) == 1000
    assert len({e.path for e in entries}) == 1000
    assert not any(e.duplicate for e in entries)
    assert {e.action for e in entries} == {"move"}
    assert {e.image_id for e in entries} == {r.id for r in rows}
    assert len(running.enqueued) == len(set(running.enqueued)) == count(engine, jobs)
    assert all(summary.finished_at is not None for summary in q.list_jobs(engine, limit=10_000))


def test_a_file_written_slowly_is_taken_once_after_it_is_complete(
    engine: Engine, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = png_bytes(1, size=64)
    chunks = [data[i : i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]
    assert len(chunks) >= 8
    with watching(engine, folder(inbox, stability_seconds=0.5)):
        path = inbox / "slow.png"
        with path.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                time.sleep(0.1)  # well under the stability interval
                assert watch_images(engine) == [], "taken while still being written"
        wait_for(lambda: len(watch_images(engine)) == 1, what="the slow file")
        time.sleep(3 * 0.5)  # nothing more happens to it
    [row] = watch_images(engine)
    assert row.filename == "slow.png" and row.stored_path == str(path)
    assert row.size_bytes == len(data) and row.sha256 == sha256(data)
    assert [(e.path, e.size_bytes, e.sha256) for e in ledger(engine)] == [
        (str(path), len(data), sha256(data))
    ]


def test_files_dropped_while_the_watcher_was_stopped_are_found_at_start_up(
    engine: Engine, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    config = folder(inbox, recursive=True)
    first = write_files(inbox, 3)
    with watching(engine, config):
        wait_for(lambda: len(watch_images(engine)) == 3, what="the files there at start")
    # Stopped: new files, one in a new sub-folder, and one old file rewritten.
    later = write_files(inbox, 2, first_seed=100)
    later.update(write_files(inbox / "sub", 1, first_seed=200))
    rewritten = sorted(first)[0]
    Path(rewritten).write_bytes(png_bytes(300))
    with watching(engine, config):
        wait_for(lambda: len(watch_images(engine)) == 7, what="the files dropped meanwhile")
        time.sleep(3 * STABLE)
    rows = watch_images(engine)
    assert len(rows) == 7
    paths = [r.stored_path for r in rows]
    assert sorted(paths[:3]) == sorted(first)
    assert sorted(paths[3:]) == sorted([*later, rewritten])
    assert {r.sha256 for r in rows[3:] if r.stored_path == rewritten} == {sha256(png_bytes(300))}
    assert {r.filename for r in rows if "sub" in r.stored_path} == {
        os.path.join("sub", "img_00200.png")
    }
    assert len(ledger(engine)) == 7


def test_temporary_names_are_ignored_until_renamed_into_place(
    engine: Engine, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = ["a.png.part", "b.png.tmp", ".c.png", "d.png~", "notes.txt"]
    with watching(engine, folder(inbox)):
        for n, name in enumerate(names):
            (inbox / name).write_bytes(png_bytes(n))
        time.sleep(4 * STABLE)
        assert watch_images(engine) == []
        os.rename(inbox / "a.png.part", inbox / "a.png")
        os.rename(inbox / ".c.png", inbox / "c.png")
        wait_for(lambda: len(watch_images(engine)) == 2, what="the renamed files")
        time.sleep(3 * STABLE)
    rows = watch_images(engine)
    assert sorted(r.filename for r in rows) == ["a.png", "c.png"]
    assert {r.filename: r.sha256 for r in rows} == {
        "a.png": sha256(png_bytes(0)),
        "c.png": sha256(png_bytes(2)),
    }
    assert len(ledger(engine)) == 2


def test_a_duplicate_copy_is_not_inspected_twice(engine: Engine, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    data = png_bytes(7)
    config = folder(inbox, after="move", sidecar=True)
    with watching(engine, config, worker=QuickWorker(engine)):
        (inbox / "first.png").write_bytes(data)
        (inbox / "same-batch-copy.png").write_bytes(data)
        wait_for(lambda: len(ledger(engine)) == 2, what="both files in the ledger")
        (inbox / "later-copy.png.part").write_bytes(data)
        os.rename(inbox / "later-copy.png.part", inbox / "later-copy.png")
        wait_for(lambda: len(ledger(engine)) == 3, what="the later copy")
        wait_for(
            lambda: all(e.state == "settled" for e in ledger(engine)),
            what="all three moved",
        )
    [image] = watch_images(engine)
    assert image.sha256 == sha256(data) and image.status == "done"
    assert count(engine, results) == 1
    entries = ledger(engine)
    assert [e.duplicate for e in entries] == [False, True, True]
    assert {e.image_id for e in entries} == {image.id}
    original = next(e for e in entries if not e.duplicate)
    assert image.stored_path == original.current_path
    processed = inbox / "processed"
    assert sorted(p.name for p in processed.iterdir() if p.suffix == ".png") == sorted(
        [os.path.basename(e.path) for e in entries]
    )
    for e in entries:
        sidecar = json.loads(Path(e.current_path + ".json").read_text())
        assert sidecar["image_id"] == image.id
        assert sidecar["status"] == "done" and sidecar["result"]["label"] == "ok"
        assert sidecar["duplicate_of"] == (image.stored_path if e.duplicate else None)
        assert (sidecar["line"], sidecar["camera"], sidecar["lot"]) == ("L1", "cam-2", "lot-7")


def test_polling_mode_finds_files_without_file_system_events(
    engine: Engine, tmp_path: Path
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    config = folder(share, polling=True, poll_seconds=0.1, recursive=True)
    with watching(engine, config, worker=QuickWorker(engine)) as running:
        [watched] = running.watcher._folders
        assert type(watched.observer).__name__ == "PollingObserver"
        written = write_files(share, 5)
        written.update(write_files(share / "night-shift", 2, first_seed=50))
        wait_for(lambda: count(engine, results) == 7, what="7 results")
    rows = watch_images(engine)
    assert sorted(r.stored_path for r in rows) == sorted(written)
    assert all(r.status == "done" for r in rows)
    assert len(ledger(engine)) == 7


def test_unreadable_files_become_errors_and_move_to_failed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    real_open = open

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if "locked" in os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    # Tests run as root, which reads any file: the watcher's reads of "locked" files fail.
    monkeypatch.setattr(folders_module, "open", guarded_open, raising=False)
    with watching(engine, folder(inbox, after="move", sidecar=True), worker=QuickWorker(engine)):
        (inbox / "good.png").write_bytes(png_bytes(1))
        (inbox / "corrupt.png").write_bytes(b"this is not an image\n")
        (inbox / "locked.png").write_bytes(png_bytes(2))
        wait_for(
            lambda: len(ledger(engine)) == 3 and all(e.state == "settled" for e in ledger(engine)),
            what="three files settled",
        )
    rows = {r.filename: r for r in watch_images(engine)}
    assert rows["good.png"].status == "done"
    assert rows["corrupt.png"].status == "error" and "corrupt.png" in rows["corrupt.png"].error
    assert rows["locked.png"].status == "error"
    assert "cannot read file (Permission denied)" in rows["locked.png"].error
    assert rows["locked.png"].attempts == 0  # never reached a worker
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [
        "good.png",
        "good.png.json",
    ]
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == [
        "corrupt.png",
        "corrupt.png.json",
        "locked.png",
        "locked.png.json",
    ]
    sidecar = json.loads((inbox / "failed" / "locked.png.json").read_text())
    assert sidecar["status"] == "error" and "Permission denied" in sidecar["error"]
    assert sidecar["result"] is None
    locked_job = q.job_summary(engine, rows["locked.png"].job_id)
    assert locked_job is not None and locked_job.finished_at is not None


def test_bad_folders_are_reported_and_the_others_keep_working(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = tmp_path / "good"
    good.mkdir()
    missing = tmp_path / "not-yet"
    a_file = tmp_path / "a-file.png"
    a_file.write_bytes(b"x")
    caplog.set_level(logging.INFO, logger="inspector.sources")
    configs = [folder(missing, rescan_seconds=0.3), folder(a_file), folder(good)]
    with watching(engine, *configs) as running:
        assert running.watcher.problems == {
            str(missing): "does not exist",
            str(a_file): "is not a folder",
        }
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(str(missing) in m and "does not exist" in m for m in errors), errors
        assert any(str(a_file) in m and "is not a folder" in m for m in errors), errors
        (good / "one.png").write_bytes(png_bytes(1))
        wait_for(lambda: len(watch_images(engine)) == 1, what="the good folder's file")
        # The missing folder appears (a share mounted late): it is watched from then on.
        missing.mkdir()
        (missing / "two.png").write_bytes(png_bytes(2))
        wait_for(lambda: len(watch_images(engine)) == 2, what="the late folder's file")
        assert running.watcher.problems == {str(a_file): "is not a folder"}
    assert sorted(r.stored_path for r in watch_images(engine)) == sorted(
        [str(good / "one.png"), str(missing / "two.png")]
    )
    assert any("is available again" in r.getMessage() for r in caplog.records)


def test_an_exception_in_the_event_handler_does_not_kill_the_observer(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    real_hint = FolderWatcher._hint

    def flaky_hint(self: FolderWatcher, key: str, path: str, is_directory: bool) -> None:
        if "boom" in path:
            raise RuntimeError("handler bug")
        real_hint(self, key, path, is_directory)

    monkeypatch.setattr(FolderWatcher, "_hint", flaky_hint)
    with watching(engine, folder(inbox)) as running:
        (inbox / "boom.png").write_bytes(png_bytes(1))
        time.sleep(0.2)
        (inbox / "fine.png").write_bytes(png_bytes(2))
        wait_for(lambda: len(watch_images(engine)) == 1, what="the file after the failure")
        [watched] = running.watcher._folders
        assert watched.observer is not None and watched.observer.is_alive()
        # The rescan finds what the failed events missed.
        watched.next_rescan = 0.0
        wait_for(lambda: len(watch_images(engine)) == 2, what="the rescan")
    assert sorted(r.filename for r in watch_images(engine)) == ["boom.png", "fine.png"]
    assert any("failed on event" in r.getMessage() for r in caplog.records)


def test_run_watch_end_to_end_with_the_batch_processor(
    engine: Engine,
    tmp_path: Path,
    store_of: ModelStore,
    demo_dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``inspector run`` defaults: <data_dir>/inbox, created; the real worker classifies."""
    for key in ("INSPECTOR_WATCH_CONFIG", "INSPECTOR_WATCH_DIRS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("INSPECTOR_WATCH_STABILITY_SECONDS", str(STABLE))
    monkeypatch.setenv("INSPECTOR_WATCH_AFTER", "move")
    settings = Settings.from_env({"INSPECTOR_DATA_DIR": str(tmp_path / "data")})
    [inbox_config] = load_watch_folders(settings)
    inbox = tmp_path / "data" / "inbox"
    assert inbox_config.path == inbox and inbox_config.create and not inbox.exists()
    worker = BatchProcessor(engine, store_of, device="cpu", batch_size=8, lease_seconds=60)
    stop, wake = threading.Event(), threading.Event()
    woken: list[str] = []

    def enqueue(job_id: str) -> None:
        woken.append(job_id)
        wake.set()

    def work() -> None:
        while not stop.is_set():
            if wake.wait(0.05):
                wake.clear()
                worker.drain()

    threads = [
        threading.Thread(target=run_watch, args=(settings, engine, enqueue, stop), daemon=True),
        threading.Thread(target=work, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        wait_for(inbox.is_dir, what="the inbox to be created")
        sources = [p for cls in sorted(demo_dirs[1].iterdir()) for p in sorted(cls.iterdir())[:1]]
        for source in sources[:3]:
            shutil.copy(source, inbox / f"part.{source.name}")
            os.rename(inbox / f"part.{source.name}", inbox / source.name)
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        wait_for(
            lambda: len(ledger(engine)) == 4 and all(e.state == "settled" for e in ledger(engine)),
            timeout=60,
            what="4 files inspected and moved",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    rows = {r.filename: r for r in watch_images(engine)}
    assert len(rows) == 4 and woken
    for source in sources[:3]:
        row = rows[source.name]
        assert row.status == "done"
        assert row.stored_path == str(inbox / "processed" / source.name)
        [verdict] = [r for r in q.job_results(engine, row.job_id) if r.image_id == row.id]
        assert verdict.result is not None and verdict.result.model_name == "demo"
        record = q.get_image(engine, row.id)
        assert record is not None and Path(record.stored_path).is_file()
    assert rows["broken.png"].status == "error"
    assert (inbox / "failed" / "broken.png").is_file()
    assert count(engine, results) == 3
