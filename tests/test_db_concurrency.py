"""Concurrent claimers never share an image: threads on both databases, processes on SQLite."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from inspector.db import queries as q
from inspector.db.engine import make_engine, upgrade
from inspector.db.records import NewImage, NewResult
from inspector.db.schema import images, jobs, results

IMAGES = 200
JOBS = 10  # of 20 images each, so many jobs see their last images finish concurrently


def queue_jobs(engine: Engine) -> None:
    per_job = IMAGES // JOBS
    for j in range(JOBS):
        files = [
            NewImage(f"{j}-{i}.png", f"/tmp/{j}-{i}.png", hashlib.sha256(b"%d" % i).hexdigest(), 1)
            for i in range(per_job)
        ]
        q.create_job(engine, source="paths", files=files, priority=j % 3)


def drain(engine: Engine, worker_id: str, seed: int) -> list[int]:
    """Claim small batches and record a verdict for each image until nothing is left."""
    rng = random.Random(seed)
    claimed: list[int] = []
    while True:
        batch = q.claim_images(
            engine, worker_id=worker_id, limit=rng.randint(1, 6), lease_seconds=300
        )
        if not batch:
            return claimed
        claimed.extend(c.id for c in batch)
        time.sleep(0.002 + rng.random() * 0.008)  # "inference", outside any transaction
        verdicts = [
            NewResult(c.id, "steel", 1, "good", 0.9, 0.1, False, False, {"good": 0.9}, {})
            for c in batch
        ]
        recorded = q.record_results(engine, worker_id=worker_id, results=verdicts)
        assert recorded == len(batch), f"{worker_id} lost {len(batch) - recorded} leases"


def drain_in_process(url: str, worker: str, barrier: Any, threads: int) -> list[list[int]]:
    """A separate process with its own engine: ``threads`` claimers, started together."""
    engine = make_engine(url)
    try:
        barrier.wait(timeout=60)
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(drain, engine, f"{worker}-t{t}", t) for t in range(threads)]
            return [f.result() for f in futures]
    finally:
        engine.dispose()


def _process_main(url: str, worker: str, barrier: Any, out: Any) -> None:
    try:
        out.put((worker, drain_in_process(url, worker, barrier, threads=2), None))
    except BaseException as exc:  # report it: a child's traceback is otherwise lost
        out.put((worker, [], f"{type(exc).__name__}: {exc}"))


def assert_all_done_once(engine: Engine, claims: list[list[int]]) -> None:
    every = [image_id for worker in claims for image_id in worker]
    assert len(every) == IMAGES, "an image was claimed twice or never"
    assert len(set(every)) == IMAGES
    with engine.connect() as conn:
        statuses = conn.execute(
            select(images.c.status, images.c.attempts, func.count()).group_by(
                images.c.status, images.c.attempts
            )
        ).all()
        assert [tuple(s) for s in statuses] == [("done", 1, IMAGES)]
        assert conn.execute(select(func.count()).select_from(results)).scalar_one() == IMAGES
        unfinished = conn.execute(select(jobs.c.id).where(jobs.c.finished_at.is_(None))).all()
        assert unfinished == [], "a job whose images are all done was not marked finished"
    assert q.queue_depth(engine) == 0


def test_threads_claim_each_image_exactly_once(engine: Engine) -> None:
    queue_jobs(engine)
    start = threading.Barrier(4)

    def work(n: int) -> list[int]:
        start.wait(timeout=30)
        return drain(engine, f"w{n}", n)

    with ThreadPoolExecutor(4) as pool:
        claims = list(pool.map(work, range(4)))
    # Not asserted: that every thread got work. SQLite's busy handler is not fair, and a
    # waiting thread can lose the lock to the others for a while.
    assert_all_done_once(engine, claims)


def test_sqlite_processes_claim_each_image_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'inspector.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        queue_jobs(engine)
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited locks
        barrier, out = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_process_main, args=(url, f"p{n}", barrier, out)) for n in (0, 1)
        ]
        for p in procs:
            p.start()
        reports = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert [p.exitcode for p in procs] == [0, 0]
        errors = [f"{worker}: {error}" for worker, _, error in reports if error]
        assert errors == []
        claims = [thread for _, threads, _ in reports for thread in threads]
        assert_all_done_once(engine, claims)
        per_process = {worker: sum(map(len, threads)) for worker, threads, _ in reports}
        assert all(per_process.values()), f"a process got no work: {per_process}"
    finally:
        engine.dispose()
