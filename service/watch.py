"""``inspector watch``: the watched folders (and cameras) feeding the queue, until stopped.

Files become jobs in the database first; the Celery wake-up only tells the workers to look.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from inspector.db.engine import check_revision, make_engine
from inspector.settings import Settings
from inspector.sources.camera_config import load_cameras
from inspector.sources.cameras import run_cameras
from inspector.sources.config import load_watch_folders
from inspector.sources.folders import check_watch_folders
from inspector.sources.service import run_watch
from workers.broker import make_producer
from workers.config import WorkerSettings
from workers.enqueue import make_enqueue

log = logging.getLogger(__name__)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set ``stop``: the watchers finish the file in hand and return."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("%s: stopping the watchers", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def serve(settings: Settings, worker: WorkerSettings) -> int:
    engine = make_engine(settings.database_url)
    producer = make_producer(settings, worker)
    try:
        check_revision(engine)
        enqueue = make_enqueue(producer)
        stop = threading.Event()
        stop_on_signals(stop)
        folders = load_watch_folders(settings)
        cameras = load_cameras(settings)
        for folder in folders:
            problem = check_watch_folders([folder]).get(folder.name)
            print(f"watching {folder.path}" + (f": {problem} (retried)" if problem else ""))
        for camera in cameras:
            print(f"camera {camera.id}: {camera.mode} from {camera.shown_source}")
        runners: list[tuple[str, Callable[[], None]]] = [
            ("folders", lambda: run_watch(settings, engine, enqueue, stop, folders)),
        ]
        if cameras:
            runners.append(
                ("cameras", lambda: run_cameras(settings, engine, enqueue, stop, cameras))
            )
        threads = [threading.Thread(target=fn, name=name) for name, fn in runners]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads) and not stop.wait(0.5):
            pass
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        producer.close()
        engine.dispose()
    return 0
