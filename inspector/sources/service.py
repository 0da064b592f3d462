"""The watch service's entry point: ``run_watch`` blocks, watching folders, until told to stop.

Called by ``inspector watch`` and by the ``inspector run`` supervisor, which pass the settings,
an engine on a migrated database and the workers' wake-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy import Engine

from inspector.settings import Settings
from inspector.sources.config import WatchFolder, load_watch_folders
from inspector.sources.folders import FolderWatcher

log = logging.getLogger(__name__)


def run_watch(
    settings: Settings,
    engine: Engine,
    enqueue: Callable[[str], None],
    stop: threading.Event,
    folders: Sequence[WatchFolder] | None = None,
) -> None:
    """Watch ``folders`` (default: ``load_watch_folders(settings)``) until ``stop`` is set.

    Each complete new file becomes an image of a job (source "watch") in the database; then
    ``enqueue(job_id)`` wakes the workers. A folder that cannot be watched is logged with the
    reason and tried again later; nothing about one folder or one file stops the others.
    """
    chosen = load_watch_folders(settings) if folders is None else list(folders)
    FolderWatcher(engine, chosen, enqueue).run(stop)
    log.info("watching stopped (%d folders)", len(chosen))
