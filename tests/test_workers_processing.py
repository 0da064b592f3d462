"""BatchProcessor against real databases and the trained demo model: every image settled once."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from inspector.db import queries as q
from inspector.db.records import NewImage
from inspector.db.schema import results
from inspector.inference import Classifier
from inspector.store import ModelStore
from workers.poll import run_poll_loop
from workers.processing import BatchProcessor


def new_image(path: Path) -> NewImage:
    data = path.read_bytes()
    return NewImage(
        filename=path.name,
        stored_path=str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
    )


def val_images(val_dir: Path, per_class: int) -> list[tuple[Path, str]]:
    """``per_class`` images of each demo class, with the class they belong to."""
    return [
        (p, cls.name)
        for cls in sorted(d for d in val_dir.iterdir() if d.is_dir())
        for p in sorted(cls.iterdir())[:per_class]
    ]


def processor(engine: Engine, store: ModelStore, **overrides: object) -> BatchProcessor:
    params: dict[str, object] = {
        "device": "cpu",
        "batch_size": 4,
        "lease_seconds": 60,
        "max_attempts": 3,
        "max_pixels": 10_000_000,
    }
    params.update(overrides)
    return BatchProcessor(engine, store, **params)  # type: ignore[arg-type]


@pytest.fixture
def mixed_job(
    engine: Engine, tmp_path: Path, demo_dirs: tuple[Path, Path]
) -> tuple[str, dict[str, str]]:
    """6 good images and 3 broken files; returns the job id and each filename's class."""
    good = val_images(demo_dirs[1], per_class=2)[:6]
    truth = {p.name: cls for p, cls in good}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("this is not an image\n")
    png = good[0][0].read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    files = [new_image(p) for p, _ in good] + [
        new_image(bad / n) for n in ("empty.png", "text.png", "truncated.png")
    ]
    return q.create_job(engine, source="upload", files=files), truth


def test_drain_settles_every_image_once(
    engine: Engine, store_of: ModelStore, mixed_job: tuple[str, dict[str, str]]
) -> None:
    job_id, truth = mixed_job
    worker = processor(engine, store_of)
    assert worker.drain() == 9
    rows = {r.filename: r for r in q.job_results(engine, job_id)}
    assert len(rows) == 9
    for name, cls in truth.items():
        row = rows[name]
        assert row.status == "done" and row.error is None and row.result is not None
        assert row.result.model_name == "demo"
        assert row.result.model_version == store_of.get("demo").metadata.version
        assert set(row.result.probabilities) >= {cls}
    right = sum(rows[n].result.label == cls for n, cls in truth.items())  # type: ignore[union-attr]
    assert right >= 4, {n: rows[n].result for n in truth}
    for name in ("empty.png", "text.png", "truncated.png"):
        row = rows[name]
        assert row.status == "error" and row.result is None, row
        assert row.error and name in row.error, row.error
    assert "empty" in (rows["empty.png"].error or "")
    assert "truncated" in (rows["truncated.png"].error or "")
    summary = q.job_summary(engine, job_id)
    assert summary is not None and summary.finished_at is not None
    assert (summary.done, summary.error) == (6, 3)
    assert worker.drain() == 0
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(results)).scalar_one() == 6


def test_unknown_model_is_a_permanent_error_naming_it(
    engine: Engine, store_of: ModelStore, demo_dirs: tuple[Path, Path]
) -> None:
    paths = [p for p, _ in val_images(demo_dirs[1], per_class=1)[:2]]
    job_id = q.create_job(
        engine, source="upload", files=[new_image(p) for p in paths], model_name="nosuch"
    )
    assert processor(engine, store_of).drain() == 2
    rows = q.job_results(engine, job_id)
    assert [r.status for r in rows] == ["error", "error"]
    for row in rows:
        assert row.result is None and row.attempts == 1
        assert row.error and "'nosuch'" in row.error and "demo" in row.error, row.error
    summary = q.job_summary(engine, job_id)
    assert summary is not None and summary.finished_at is not None


def test_an_exception_requeues_the_batch_until_max_attempts(
    engine: Engine,
    store_of: ModelStore,
    demo_dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = [p for p, _ in val_images(demo_dirs[1], per_class=1)[:3]]
    job_id = q.create_job(engine, source="upload", files=[new_image(p) for p in paths])

    def broken(self: Classifier, images: object, **_: object) -> object:
        raise RuntimeError("GPU fell over")

    monkeypatch.setattr(Classifier, "predict", broken)
    worker = processor(engine, store_of, max_attempts=2)
    assert worker.run_once() == 3  # the processor survives the exception
    rows = q.job_results(engine, job_id)
    assert [(r.status, r.attempts) for r in rows] == [("queued", 1)] * 3
    assert all("GPU fell over" in (r.error or "") for r in rows)

    assert worker.run_once() == 3
    rows = q.job_results(engine, job_id)
    assert [(r.status, r.attempts) for r in rows] == [("error", 2)] * 3
    for row in rows:
        assert row.error == "failed 2 times: RuntimeError: GPU fell over"
    assert worker.drain() == 0
    summary = q.job_summary(engine, job_id)
    assert summary is not None and summary.finished_at is not None

    monkeypatch.undo()  # the same worker classifies a new job once predict works again
    job2 = q.create_job(engine, source="upload", files=[new_image(paths[0])])
    assert worker.drain() == 1
    assert [r.status for r in q.job_results(engine, job2)] == ["done"]


def test_two_processors_in_threads_classify_each_image_once(
    engine: Engine, store_of: ModelStore, demo_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    sources = [p for p, _ in val_images(demo_dirs[1], per_class=8)][:40]
    copies = []
    for i, src in enumerate(sources):
        dst = tmp_path / "many" / f"{i:03d}_{src.name}"
        dst.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, dst)
        copies.append(dst)
    assert len(copies) == 40
    job_id = q.create_job(engine, source="upload", files=[new_image(p) for p in copies])
    workers = [processor(engine, store_of, worker_id=f"w{i}") for i in range(2)]
    for w in workers:
        w.classifier(None)  # load up front, so both threads race over the claims
    counts = [0, 0]
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            counts[i] = workers[i].drain()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert sum(counts) == 40
    rows = q.job_results(engine, job_id)
    assert [r.status for r in rows] == ["done"] * 40
    assert all(r.attempts == 1 for r in rows)
    with engine.connect() as conn:
        per_image = conn.execute(
            select(results.c.image_id, func.count()).group_by(results.c.image_id)
        ).all()
    assert len(per_image) == 40 and all(n == 1 for _, n in per_image)
    summary = q.job_summary(engine, job_id)
    assert summary is not None and summary.finished_at is not None


def test_production_model_is_loaded_once_and_reloaded_when_promoted(
    engine: Engine, store_of: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []
    real = store_of.get("demo").metadata.version

    def loader(store: ModelStore, ref: str, device: str, batch_size: int) -> Classifier:
        loads.append(ref)  # the store holds one version: load it whatever the pointer says
        return Classifier.from_store(store, f"demo:{real}", device=device, batch_size=batch_size)

    worker = processor(engine, store_of, loader=loader, recheck_seconds=0)
    first = worker.classifier(None)
    assert worker.classifier(None) is first and worker.classifier("demo") is first
    assert loads == ["demo"]  # the default is the store's one model: one load serves both
    version = first.meta.version
    monkeypatch.setattr(store_of, "production", lambda name: version + 1)  # a promotion
    assert worker.classifier(None) is not first
    assert loads == ["demo", "demo"]


def test_poll_loop_settles_a_job_without_any_wake_up(
    engine: Engine, store_of: ModelStore, demo_dirs: tuple[Path, Path]
) -> None:
    stop = threading.Event()
    worker = processor(engine, store_of)
    settled: list[int] = []
    thread = threading.Thread(target=lambda: settled.append(run_poll_loop(worker.drain, 0.1, stop)))
    thread.start()
    try:
        paths = [p for p, _ in val_images(demo_dirs[1], per_class=1)[:3]]
        job_id = q.create_job(engine, source="upload", files=[new_image(p) for p in paths])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            summary = q.job_summary(engine, job_id)
            if summary is not None and summary.finished_at is not None:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and settled == [3]
    assert [r.status for r in q.job_results(engine, job_id)] == ["done"] * 3


def test_a_batch_longer_than_its_lease_keeps_it(
    engine: Engine,
    store_of: ModelStore,
    demo_dirs: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lease is renewed while a slow batch runs, so no second worker takes its images."""
    paths = [p for p, _ in val_images(demo_dirs[1], per_class=1)[:2]]
    job_id = q.create_job(engine, source="upload", files=[new_image(p) for p in paths])
    predict = Classifier.predict
    rival_claims: list[int] = []

    def slow(self: Classifier, images: list, **kwargs: object) -> object:
        time.sleep(2.5)  # four times the lease
        rival_claims.append(rival.run_once())  # the rival finds nothing to take
        return predict(self, images, **kwargs)

    monkeypatch.setattr(Classifier, "predict", slow)
    rival = processor(engine, store_of, lease_seconds=0.6)
    worker = processor(engine, store_of, lease_seconds=0.6)
    worker.classifier(None)  # loaded before the clock matters
    assert worker.run_once() == 2
    assert rival_claims == [0]
    rows = q.job_results(engine, job_id)
    assert [(r.status, r.attempts) for r in rows] == [("done", 1)] * 2
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(results)).scalar_one() == 2
