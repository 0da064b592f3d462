"""Watched folders: latency from a file becoming complete to its result row, and a burst.

Latency: files are written one by one into a watched folder (``--interval`` apart); each one's
latency is its result row's ``created_at`` minus the moment its writer closed it, with inotify
events and then with the polling observer. The floor is the stability interval (a file must
stay unchanged that long); the target is p95 < stability + 1 s with inotify.

Burst: ``--burst`` files written as fast as possible; timed until every image is settled,
then checked: each file is one image, none twice, every image has its result.

The worker is the real ``BatchProcessor`` in a thread of this process, woken by the watcher's
enqueue, with a fresh compact network (the weights do not change the timing) on the CPU.

    .venv/bin/python benchmarks/watch_latency.py --latency-files 40 --burst 10000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from common import register_fresh_model, save_result
from sqlalchemy import Engine, func, select

from inspector.db.engine import make_engine, upgrade
from inspector.db.schema import images, results, watched_files
from inspector.sources.config import WatchFolder
from inspector.sources.folders import FolderWatcher
from inspector.store import ModelStore
from workers.processing import BatchProcessor


def png(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    ok, encoded = cv2.imencode(".png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    assert ok
    return encoded.tobytes()


def make_store(root: Path, size: int) -> ModelStore:
    classes = ("ok", "scratch", "dent")
    return register_fresh_model(root, arch="vgg11_bn", width=0.125, scales=(size,), classes=classes)


@contextmanager
def running(engine: Engine, store: ModelStore, folder: WatchFolder) -> Iterator[FolderWatcher]:
    """The watcher and one worker thread (woken by enqueue, polling every 0.5 s besides)."""
    stop, wake = threading.Event(), threading.Event()
    worker = BatchProcessor(
        engine, store, device="cpu", batch_size=64, lease_seconds=300, default_model="bench"
    )
    watcher = FolderWatcher(engine, [folder], lambda job_id: wake.set())

    def work() -> None:
        while not stop.is_set():
            wake.wait(0.5)
            wake.clear()
            worker.drain()

    watcher.start()
    threads = [
        threading.Thread(target=watcher.loop, args=(stop,), name="watch", daemon=True),
        threading.Thread(target=work, name="work", daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield watcher
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        watcher.close()


def result_times(engine: Engine, folder: Path) -> dict[str, datetime]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(images.c.stored_path, results.c.created_at)
            .select_from(images.join(results, results.c.image_id == images.c.id))
            .where(images.c.stored_path.startswith(str(folder) + os.sep))
        ).all()
    return {row.stored_path: row.created_at for row in rows}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency(engine: Engine, store: ModelStore, where: Path, *, polling: bool) -> dict[str, float]:
    where.mkdir()
    folder = WatchFolder(
        path=where,
        stability_seconds=args.stability,
        polling=polling,
        poll_seconds=args.poll_seconds,
        rescan_seconds=3600.0,
    )
    closed: dict[str, datetime] = {}
    with running(engine, store, folder):
        for n in range(args.latency_files):
            path = where / f"frame_{n:04d}.png"
            with open(path, "wb") as out:
                out.write(png(1_000_000 + n + (10_000 if polling else 0), args.size))
            closed[str(path)] = datetime.now(UTC)
            time.sleep(args.interval)
        deadline = time.monotonic() + 60
        while len(result_times(engine, where)) < len(closed) and time.monotonic() < deadline:
            time.sleep(0.05)
    done = result_times(engine, where)
    missing = sorted(set(closed) - set(done))
    if missing:
        raise SystemExit(f"{len(missing)} files got no result within 60 s, e.g. {missing[0]}")
    seconds = [(done[p] - t).total_seconds() for p, t in closed.items()]
    return {
        "files": len(seconds),
        "p50_s": round(statistics.median(seconds), 3),
        "p95_s": round(percentile(seconds, 95), 3),
        "max_s": round(max(seconds), 3),
    }


def burst(engine: Engine, store: ModelStore, where: Path) -> dict[str, object]:
    where.mkdir()
    payloads = [png(n, args.size) for n in range(args.burst)]
    folder = WatchFolder(
        path=where, stability_seconds=args.stability, rescan_seconds=3600.0, after=args.after
    )
    mine = images.c.stored_path.startswith(str(where) + os.sep)  # processed/ is inside
    with running(engine, store, folder):
        started = time.monotonic()
        for n, data in enumerate(payloads):
            (where / f"burst_{n:05d}.png").write_bytes(data)
        written = time.monotonic() - started
        deadline = started + args.burst_timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                settled = conn.execute(
                    select(func.count())
                    .select_from(images)
                    .where(mine, images.c.status.in_(("done", "error")))
                ).scalar_one()
            if settled >= args.burst:
                break
            time.sleep(0.1)
        all_settled = time.monotonic() - started
        if args.after != "leave":
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    open_rows = conn.execute(
                        select(func.count())
                        .select_from(watched_files)
                        .where(
                            watched_files.c.folder == folder.name,
                            watched_files.c.state != "settled",
                        )
                    ).scalar_one()
                if open_rows == 0:
                    break
                time.sleep(0.1)
        all_acted = time.monotonic() - started
    with engine.connect() as conn:
        rows = conn.execute(select(images.c.id, images.c.sha256, images.c.status).where(mine)).all()
        verdicts = conn.execute(
            select(func.count())
            .select_from(results.join(images, images.c.id == results.c.image_id))
            .where(mine)
        ).scalar_one()
        ledger = conn.execute(
            select(func.count())
            .select_from(watched_files)
            .where(watched_files.c.folder == folder.name)
        ).scalar_one()
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    return {
        "files": args.burst,
        "images": len(rows),
        "distinct_contents": len({row.sha256 for row in rows}),
        "taken_twice": len(rows) - len({row.sha256 for row in rows}),
        "statuses": by_status,
        "results": verdicts,
        "ledger_rows": ledger,
        "after": args.after,
        "write_seconds": round(written, 2),
        "all_settled_seconds": round(all_settled, 2),
        "all_after_actions_seconds": round(all_acted, 2) if args.after != "leave" else None,
        "files_per_second": round(args.burst / all_settled, 1),
        "all_inspected": by_status.get("done", 0) == args.burst == verdicts,
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        url = args.database_url or f"sqlite:///{tmp / 'inspector.db'}"
        engine = make_engine(url)
        upgrade(engine)
        store = make_store(tmp / "models", args.size)
        figures: dict[str, object] = {
            "database": engine.dialect.name,
            "device": f"CPU, {torch.get_num_threads()} threads (shared with the watcher)",
            "cpu_count": os.cpu_count(),
            "load_average_at_start": round(load, 2),
            "model": "vgg11_bn width 0.125, fresh weights",
            "image_size": args.size,
            "stability_seconds": args.stability,
            "poll_seconds": args.poll_seconds,
        }
        inotify = latency(engine, store, tmp / "events", polling=False)
        print(f"inotify: {json.dumps(inotify)}", flush=True)
        polled = latency(engine, store, tmp / "polling", polling=True)
        print(f"polling: {json.dumps(polled)}", flush=True)
        figures["latency_inotify"] = inotify
        figures["latency_polling"] = polled
        figures["target_inotify_p95_s"] = round(args.stability + 1.0, 3)
        figures["target_met"] = inotify["p95_s"] < args.stability + 1.0
        if args.burst:
            bursts = burst(engine, store, tmp / "burst")
            print(f"burst: {json.dumps(bursts)}", flush=True)
            figures["burst"] = bursts
        engine.dispose()
    figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
    save_result(f"watch_latency-{figures['database']}-burst{args.burst}-cpu.json", figures)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--latency-files", type=int, default=40)
    p.add_argument("--interval", type=float, default=0.3, help="seconds between latency files")
    p.add_argument("--stability", type=float, default=0.5)
    p.add_argument("--poll-seconds", type=float, default=0.5)
    p.add_argument("--burst", type=int, default=10_000)
    p.add_argument("--burst-timeout", type=float, default=900.0)
    p.add_argument("--after", choices=["leave", "move", "delete"], default="move")
    p.add_argument("--size", type=int, default=64, help="side of the generated PNGs")
    p.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    args = p.parse_args()
    sys.exit(main())
