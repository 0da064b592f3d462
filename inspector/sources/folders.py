"""The folder watcher: finds complete image files in watched folders and turns them into jobs.

File-system events (watchdog: inotify, or a polling observer for network shares) are only
hints that say where to look. The truth is a scan: at start-up, on a schedule, and of the paths
the hints name. A file is taken once its size and modification time have not changed for the
folder's stability interval and it reads the same before and after hashing; temporary names are
skipped until renamed. Taking writes a job (source "watch"), its images (the files referenced
in place) and the ledger rows in one transaction, then wakes the workers. Once an image is
settled, the folder's after-inspection action runs (see ``inspector.sources.after``).

Everything but the observers' own threads runs on one thread, in ``FolderWatcher.step``: a
failure there (a file, the database briefly away) is logged and retried, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from inspector.sources.after import settle_files
from inspector.sources.config import FAILED_DIR, PROCESSED_DIR, WatchFolder
from inspector.sources.ledger import FoundFile, known_files, take_files

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]

HASH_CHUNK_BYTES = 1 << 20
READ_ATTEMPTS = 3  # a file that cannot be read this many times becomes an error image
TICK_SECONDS = 0.1  # the longest the loop sleeps: how quickly a stop is noticed
SETTLE_SECONDS = 0.25  # how often settled images are looked for, when a folder acts after
PROBLEM_RETRY_SECONDS = 10.0  # an unusable folder is looked at again this often (at most)
ERROR_BACKOFF_SECONDS = 5.0  # after an unexpected failure (e.g. the database is away)
MAX_JOB_IMAGES = 256  # files taken together go into jobs of at most this many images
MAX_READS_PER_STEP = 2048  # files hashed in one step, so a huge burst does not stall the loop
HINT_EVENTS = frozenset({"created", "modified", "moved", "closed", "deleted"})


def folder_problem(path: Path) -> str | None:
    """Why the folder ``path`` cannot be watched, in words; None when it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be reached ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "is not readable (permission denied)"
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return None


def check_watch_folders(folders: Sequence[WatchFolder]) -> dict[str, str]:
    """Folder -> why it cannot be watched, for those that cannot (created ones count as fine)."""
    return {
        f.name: problem
        for f in folders
        if not f.create and (problem := folder_problem(f.path)) is not None
    }


@dataclass
class _Candidate:
    """A file seen but not yet taken: its size and time, and since when they have held."""

    size: int
    mtime_ns: int
    since: float
    failures: int = 0


class _Hints(FileSystemEventHandler):
    """Passes the paths of file-system events on; never lets an exception reach the observer,
    whose thread would otherwise die (the rescans would still find the files, only later)."""

    def __init__(self, key: str, sink: Callable[[str, str, bool], None]) -> None:
        super().__init__()
        self._key = key
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            if event.event_type not in HINT_EVENTS:
                return
            for raw in (event.src_path, event.dest_path):
                if raw:
                    self._sink(self._key, os.fsdecode(raw), event.is_directory)
        except Exception:
            log.exception(
                "watch folder %s: failed on event %s; the next rescan finds what it missed",
                self._key,
                event,
            )


class _Watched:
    """The state of one watched folder."""

    def __init__(self, config: WatchFolder) -> None:
        self.config = config
        self.key = config.name
        self.root = str(config.path)
        self.observer: BaseObserver | None = None
        self.opened = False
        self.problem: str | None = None
        self.known: dict[str, tuple[int, int]] = {}  # taken files still in place
        self.candidates: dict[str, _Candidate] = {}
        self.next_rescan = 0.0
        self.next_settle = 0.0
        self.paused_until = 0.0

    def owns_dir(self, path: str) -> bool:
        """Whether the files directly in folder ``path`` belong to this watched folder: the
        folder itself, or (recursive) a sub-folder other than processed/, failed/ or hidden."""
        if path == self.root:
            return True
        if not self.config.recursive or not path.startswith(self.root + os.sep):
            return False
        parts = os.path.relpath(path, self.root).split(os.sep)
        return parts[0] not in (PROCESSED_DIR, FAILED_DIR) and not any(
            p.startswith(".") for p in parts
        )

    def owns(self, path: str) -> bool:
        """Whether a file at ``path`` belongs to this watched folder."""
        return self.owns_dir(os.path.dirname(path))


class FolderWatcher:
    """Watches ``folders``, takes their complete files as jobs and wakes the workers.

    ``start`` opens the folders (a folder that cannot be watched is reported with the reason
    and tried again later; the others go on), ``step`` does whatever is due, ``run`` loops
    until a stop event, ``close`` stops the observers.
    """

    def __init__(
        self,
        engine: Engine,
        folders: Sequence[WatchFolder],
        enqueue: Enqueue,
        *,
        max_job_images: int = MAX_JOB_IMAGES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.enqueue = enqueue
        self.max_job_images = max_job_images
        self._clock = clock
        self._folders = [_Watched(f) for f in folders]
        self._by_key = {w.key: w for w in self._folders}
        self._hints: queue.SimpleQueue[tuple[str, str, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()

    @property
    def problems(self) -> dict[str, str]:
        """Folder -> why it is not being watched right now."""
        return {w.key: w.problem for w in self._folders if w.problem is not None}

    @property
    def pending(self) -> int:
        """Files seen and not yet taken (waiting to be complete)."""
        return sum(len(w.candidates) for w in self._folders)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """``start``, then ``step`` whenever something is due, until ``stop`` is set."""
        self.start()
        try:
            self.loop(stop)
        finally:
            self.close()

    def loop(self, stop: threading.Event) -> None:
        """``step`` whenever something is due, until ``stop`` is set (after ``start``)."""
        while not stop.is_set():
            try:
                self.step()
                pause = self._pause()
            except Exception:  # each folder's work is guarded already; this is the last net
                log.exception("watching: a step failed; going on")
                pause = ERROR_BACKOFF_SECONDS
            self._wake.wait(pause)
            self._wake.clear()

    def start(self) -> None:
        """Open every folder: start its observer and scan what is already there."""
        now = self._clock()
        for w in self._folders:
            self._guarded(w, now, self._open)
        if not self._folders:
            log.warning("no folders to watch")

    def close(self) -> None:
        """Stop the observers (files seen but not yet taken are found again at the next start)."""
        for w in self._folders:
            self._stop_observer(w)

    def step(self) -> None:
        """Look at the hinted paths, rescan what is due, take complete files, act on settled
        ones."""
        now = self._clock()
        self._drain_hints(now)
        for w in self._folders:
            if now >= w.paused_until:
                self._guarded(w, now, self._step_folder)

    def _guarded(self, w: _Watched, now: float, action: Callable[[_Watched, float], None]) -> None:
        try:
            action(w, now)
        except Exception:
            log.exception(
                "watch folder %s: failed, trying again in %.0f s", w.key, ERROR_BACKOFF_SECONDS
            )
            w.paused_until = now + ERROR_BACKOFF_SECONDS

    def _pause(self) -> float:
        now = self._clock()
        due = now + TICK_SECONDS
        for w in self._folders:
            if now < w.paused_until:
                due = min(due, w.paused_until)
                continue
            due = min(due, w.next_rescan)
            if not w.opened:
                continue
            if w.candidates:
                oldest = min(c.since for c in w.candidates.values())
                due = min(due, oldest + w.config.stability_seconds)
            if w.config.acts_after:
                due = min(due, w.next_settle)
        return max(0.0, due - now)

    def _step_folder(self, w: _Watched, now: float) -> None:
        if not w.opened:
            if now >= w.next_rescan:
                self._open(w, now)
            if not w.opened:
                return
        if now >= w.next_rescan:
            self._rescan(w, now)
            if not w.opened:
                return
        self._take_ready(w)
        if w.config.acts_after and now >= w.next_settle:
            self._settle(w)

    # -- opening and rescanning ----------------------------------------------------------------
    def _report(self, w: _Watched, problem: str, now: float) -> None:
        if problem != w.problem:
            log.error(
                "watch folder %s %s: not watched; looking again every %.3g s, the other folders "
                "are watched",
                w.key,
                problem,
                min(w.config.rescan_seconds, PROBLEM_RETRY_SECONDS),
            )
        w.problem = problem
        w.next_rescan = now + min(w.config.rescan_seconds, PROBLEM_RETRY_SECONDS)

    def _open(self, w: _Watched, now: float) -> None:
        if w.config.create:
            try:
                w.config.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._report(w, f"cannot be created ({exc.strerror or exc})", now)
                return
        problem = folder_problem(w.config.path)
        if problem is not None:
            self._report(w, problem, now)
            return
        if w.problem is not None:
            log.info("watch folder %s is available again", w.key)
        w.problem = None
        w.known = known_files(self.engine, w.config)
        self._start_observer(w)
        w.opened = True
        self._scan(w, w.root, now, full=True)
        w.next_rescan = now + w.config.rescan_seconds
        c = w.config
        log.info(
            "watching %s%s (%s; complete after %.3g s unchanged; rescan every %.3g s; after "
            "inspection: %s, errors: %s%s): %d files already known, %d to look at",
            w.key,
            " and its sub-folders" if c.recursive else "",
            f"polling every {c.poll_seconds:.3g} s" if c.polling else "file-system events",
            c.stability_seconds,
            c.rescan_seconds,
            c.after,
            c.after_error,
            ", JSON sidecars" if c.sidecar else "",
            len(w.known),
            len(w.candidates),
        )

    def _close_folder(self, w: _Watched) -> None:
        self._stop_observer(w)
        w.opened = False
        w.candidates.clear()

    def _rescan(self, w: _Watched, now: float) -> None:
        problem = folder_problem(w.config.path)
        if problem is not None:
            self._close_folder(w)
            self._report(w, problem, now)
            return
        if w.observer is not None and not w.observer.is_alive():
            log.warning("watch folder %s: its event observer stopped; restarting it", w.key)
            self._start_observer(w)
        self._scan(w, w.root, now, full=True)
        w.next_rescan = now + w.config.rescan_seconds

    def _start_observer(self, w: _Watched) -> None:
        self._stop_observer(w)
        kinds: list[tuple[str, Callable[[], BaseObserver]]] = [
            ("polling", lambda: PollingObserver(timeout=w.config.poll_seconds))
        ]
        if not w.config.polling:
            kinds.insert(0, ("events", Observer))
        for kind, make in kinds:
            observer = make()
            observer.name = f"watch-{kind}:{w.key}"
            observer.daemon = True
            try:
                observer.schedule(_Hints(w.key, self._hint), w.root, recursive=w.config.recursive)
                observer.start()
            except Exception as exc:
                log.warning(
                    "watch folder %s: cannot start %s (%s)", w.key, kind, exc, exc_info=True
                )
                continue
            w.observer = observer
            return
        w.observer = None
        log.warning(
            "watch folder %s: no observer; files are found by rescans every %.3g s only",
            w.key,
            w.config.rescan_seconds,
        )

    def _stop_observer(self, w: _Watched) -> None:
        observer, w.observer = w.observer, None
        if observer is None:
            return
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)
        except Exception:
            log.exception("watch folder %s: stopping its observer failed", w.key)

    def _scan(self, w: _Watched, top: str, now: float, *, full: bool) -> None:
        """Consider every wanted file under ``top``; a full scan also forgets the candidates
        and known files that are no longer there."""
        seen: set[str] = set()
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as exc:
                if folder == w.root:
                    raise
                log.debug("watch folder %s: cannot list %s (%s)", w.key, folder, exc)
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if w.owns_dir(entry.path):
                            stack.append(entry.path)
                        continue
                    if not w.config.wants(entry.name):
                        continue
                    st = entry.stat()
                except OSError:
                    continue  # gone since listing, or a dangling link
                if stat.S_ISREG(st.st_mode):
                    seen.add(entry.path)
                    self._consider(w, entry.path, st.st_size, st.st_mtime_ns, now)
        if full:
            for path in [p for p in w.candidates if p not in seen]:
                del w.candidates[path]
            w.known = {p: v for p, v in w.known.items() if p in seen}

    def _consider(self, w: _Watched, path: str, size: int, mtime_ns: int, now: float) -> None:
        if w.known.get(path) == (size, mtime_ns):
            return
        candidate = w.candidates.get(path)
        if candidate is None:
            w.candidates[path] = _Candidate(size, mtime_ns, now)
        elif (candidate.size, candidate.mtime_ns) != (size, mtime_ns):
            candidate.size, candidate.mtime_ns, candidate.since = size, mtime_ns, now

    # -- hints -----------------------------------------------------------------------------------
    def _hint(self, key: str, path: str, is_directory: bool) -> None:
        """Called on the observers' threads: queue the path and wake the loop."""
        self._hints.put((key, path, is_directory))
        self._wake.set()

    def _drain_hints(self, now: float) -> None:
        hinted: dict[tuple[str, str], bool] = {}
        while True:
            try:
                key, path, is_directory = self._hints.get_nowait()
            except queue.Empty:
                break
            hinted[key, path] = hinted.get((key, path), False) or is_directory
        for (key, path), is_directory in hinted.items():
            w = self._by_key.get(key)
            if w is None or not w.opened:
                continue
            try:
                self._look_at(w, path, is_directory, now)
            except Exception:
                log.exception("watch folder %s: failed to look at %s; a rescan will", key, path)

    def _look_at(self, w: _Watched, path: str, is_directory: bool, now: float) -> None:
        if is_directory:
            if path == w.root:
                w.next_rescan = now  # the folder itself changed: is it still there?
            elif w.owns_dir(path) and os.path.isdir(path):
                self._scan(w, path, now, full=False)  # moved in whole: no event per file
            return
        if not w.owns(path) or not w.config.wants(os.path.basename(path)):
            return
        try:
            st = os.stat(path)
        except FileNotFoundError:
            w.candidates.pop(path, None)
            return
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self._consider(w, path, st.st_size, st.st_mtime_ns, now)

    # -- taking files ----------------------------------------------------------------------------
    def _take_ready(self, w: _Watched) -> None:
        stability = w.config.stability_seconds
        now = self._clock()
        due = sorted((c.since, p) for p, c in w.candidates.items() if now - c.since >= stability)
        batch: list[FoundFile] = []
        for _, path in due[:MAX_READS_PER_STEP]:
            found = self._read(w, path)
            if found is None:
                continue
            batch.append(found)
            if len(batch) >= self.max_job_images:
                self._take(w, batch)
                batch = []
        if batch:
            self._take(w, batch)

    def _read(self, w: _Watched, path: str) -> FoundFile | None:
        """The file at ``path`` if it is still unchanged and reads the same throughout; else
        None (changed: it waits another stability interval; gone: forgotten)."""
        candidate = w.candidates[path]
        expected = (candidate.size, candidate.mtime_ns)
        filename = os.path.relpath(path, w.root)
        digest = hashlib.sha256()
        try:
            latest = os.stat(path)
            unchanged = (latest.st_size, latest.st_mtime_ns) == expected
            if unchanged:
                with open(path, "rb") as source:
                    while chunk := source.read(HASH_CHUNK_BYTES):
                        digest.update(chunk)
                latest = os.stat(path)
                unchanged = (latest.st_size, latest.st_mtime_ns) == expected
        except FileNotFoundError:
            del w.candidates[path]
            return None
        except OSError as exc:
            candidate.failures += 1
            reason = f"{filename}: cannot read file ({exc.strerror or exc})"
            if candidate.failures < READ_ATTEMPTS:
                log.warning("watch folder %s: %s; trying again", w.key, reason)
                candidate.since = self._clock()
                return None
            return FoundFile(path, filename, candidate.size, candidate.mtime_ns, "", reason)
        if not unchanged:  # still being written: wait another stability interval
            candidate.size, candidate.mtime_ns = latest.st_size, latest.st_mtime_ns
            candidate.since = self._clock()
            return None
        return FoundFile(
            path=path,
            filename=filename,
            size_bytes=candidate.size,
            mtime_ns=candidate.mtime_ns,
            sha256=digest.hexdigest(),
        )

    def _take(self, w: _Watched, batch: list[FoundFile]) -> None:
        taken = take_files(self.engine, w.config, batch)
        for found in batch:
            w.candidates.pop(found.path, None)
            w.known[found.path] = (found.size_bytes, found.mtime_ns)
        if taken.job_id is None:
            return
        log.info(
            "watch folder %s: job %s with %d images%s",
            w.key,
            taken.job_id,
            taken.images,
            f" ({taken.duplicates} copies of files taken before skipped)"
            if taken.duplicates
            else "",
        )
        try:
            self.enqueue(taken.job_id)
        except Exception as exc:  # the workers poll the database too
            log.warning(
                "watch folder %s: job %s: waking the workers failed (%s); they find it by polling",
                w.key,
                taken.job_id,
                exc,
            )

    # -- after inspection ------------------------------------------------------------------------
    def _settle(self, w: _Watched) -> None:
        limit = 500
        outcomes = settle_files(self.engine, w.config, limit=limit)
        for row, action, _ in outcomes:
            if action != "leave":
                w.known.pop(row.path, None)
        # A full batch: more are waiting, so look again at once.
        w.next_settle = self._clock() + (0.0 if len(outcomes) >= limit else SETTLE_SECONDS)
