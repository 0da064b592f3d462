"""Cameras through OpenCV: each frame chosen by the camera's mode becomes a one-image job.

Every camera has two threads. Its reader owns the ``cv2.VideoCapture``: it opens the source
(with a back-off that doubles while it keeps failing), reads frames as fast as they come (a
video file at its own frame rate) and always keeps the newest, so a trigger gets a current
frame and a live stream never lags behind in OpenCV's buffer. Its controller decides which
frames are stored (every N seconds, every Nth frame, on trigger), writes them atomically under
``<data_dir>/images/cameras/<id>/``, records each as a job (source "camera") in one
transaction, wakes the workers, and keeps the camera's row in the database current. Nothing
one camera does, or fails to do, stops another.

``run_cameras`` runs them all and hands them the triggers the web wrote in the database.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import cv2
import numpy as np
from sqlalchemy import Engine

from inspector.db.records import NewImage
from inspector.db.schema import utcnow
from inspector.errors import ConfigurationError
from inspector.settings import Settings
from inspector.sources import camera_db
from inspector.sources.camera_config import CameraConfig, describe_source, load_cameras
from inspector.sources.camera_db import PendingTrigger

__all__ = ["CameraConfig", "CameraSource", "capture_owner", "run_cameras"]

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]

TRIGGER_POLL_SECONDS = 0.1  # how often the database is asked for new triggers
TICK_SECONDS = 0.1  # the longest a controller sleeps: how quickly a stop or a trigger is seen
ERROR_BACKOFF_SECONDS = 2.0  # after an unexpected failure (the database away, say)
MAX_SELECTED = 32  # every_nth frames waiting to be stored; past it the oldest is dropped
FILE_FPS_FALLBACK = 25.0  # for a video file that does not say its frame rate
STOP_JOIN_SECONDS = 3.0  # how long run_cameras waits for the threads when stopping
DIAGNOSE_TIMEOUT_SECONDS = 3.0


def capture_owner() -> str:
    """An id for this capture process: host:pid:random, as workers name themselves."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:128]


@dataclass(frozen=True)
class Frame:
    """A frame read from a camera."""

    image: np.ndarray
    number: int  # 1 for the camera's first frame, counted on across reconnects
    grabbed_at: datetime  # when it was read, UTC


def encode_frame(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    """The frame as a JPEG or PNG file's bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else []
    ok, encoded = cv2.imencode(f".{image_format}", image, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} frame as {image_format}")
    return bytes(encoded.tobytes())


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file: a hidden
    temporary file next to it, flushed to disk, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# -- why a source does not open -------------------------------------------------------------------
def _without_credentials(url: str) -> tuple[str, str | None]:
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    plain = urlunsplit(parts._replace(netloc=f"{host}{port}"))
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return plain, "Basic " + base64.b64encode(credentials.encode()).decode()


def _diagnose_http(url: str, timeout: float) -> str:
    plain, authorization = _without_credentials(url)
    request = urllib.request.Request(plain)
    if authorization:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "") or "no content type"
    except urllib.error.HTTPError as exc:
        return f"the server answered HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot connect ({exc.reason})"
    except OSError as exc:
        return f"cannot connect ({exc})"
    if not content_type.startswith(("multipart/", "video/", "application/octet-stream")):
        return (
            f"the server answered {content_type}, not a video stream "
            "(MJPEG is multipart/x-mixed-replace)"
        )
    return f"the server sends {content_type}, but OpenCV (FFmpeg) could not read it as video"


def _diagnose_socket(url: str, timeout: float) -> str:
    parts = urlsplit(url)
    default_ports = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "http": 80, "https": 443}
    host, port = parts.hostname, parts.port or default_ports.get(parts.scheme.lower())
    if not host or port is None:
        return "OpenCV (FFmpeg) could not open it (check the URL)"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"
    return (
        f"{host}:{port} accepts connections, but OpenCV (FFmpeg) could not open the stream: "
        "check the path, the credentials and the codec"
    )


def diagnose(config: CameraConfig) -> str:
    """Why OpenCV could not open ``config.source``, as precisely as a quick look can tell."""
    source = config.source
    timeout = min(config.open_timeout_seconds, DIAGNOSE_TIMEOUT_SECONDS)
    if isinstance(source, int):
        return f"OpenCV could not open video device {source} (missing, busy or not permitted)"
    if config.kind == "device":
        if not os.path.exists(source):
            return f"{source} does not exist"
        if not os.access(source, os.R_OK | os.W_OK):
            return f"{source} is not accessible (permission denied)"
        return f"OpenCV could not open {source} (busy, or not a capture device)"
    if config.kind == "file":
        if not os.path.isfile(source):
            return "no such file"
        return "OpenCV could not read it as a video (unsupported format or corrupt)"
    if urlsplit(source).scheme.lower() in ("http", "https"):
        return _diagnose_http(source, timeout)
    return _diagnose_socket(source, timeout)


# -- one camera -----------------------------------------------------------------------------------
class CameraSource:
    """One camera's reader and controller threads (see the module's docstring).

    ``start`` starts both, ``offer_triggers`` hands it the triggers waiting for it, ``stop``
    and ``join`` end them. Its state is kept in its row of ``cameras``, owned by ``owner``.
    """

    def __init__(
        self,
        config: CameraConfig,
        engine: Engine,
        enqueue: Enqueue,
        *,
        data_dir: Path,
        owner: str,
    ) -> None:
        self.config = config
        self.engine = engine
        self.enqueue = enqueue
        self.owner = owner
        self.images_dir = config.images_dir(data_dir)
        self.shown = config.shown_source
        self._stop = threading.Event()
        self._cond = threading.Condition()
        # Shared between the threads, under self._cond:
        self._latest: Frame | None = None
        self._selected: collections.deque[Frame] = collections.deque()
        self._offered: list[PendingTrigger] = []
        self._state: dict[str, Any] = {
            "status": "starting",
            "connected": False,
            "connected_at": None,
            "last_frame_at": None,
            "failures": 0,
            "retry_seconds": None,
            "next_retry_at": None,
        }
        self._new_error: tuple[str, datetime] | None = None
        self._frames_read = 0  # not yet added to the row
        self._errors = 0  # not yet added to the row
        self._dirty = True
        # The controller's own:
        self._registered = False
        self._database_failing = False
        self._next_flush = 0.0
        self._attempted: set[int] = set()
        self._last_stored = 0  # number of the last frame stored
        self._next_capture = 0.0
        self._threads: list[threading.Thread] = []

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._threads = [
            threading.Thread(
                target=self._reader, name=f"camera-reader:{self.config.id}", daemon=True
            ),
            threading.Thread(target=self._controller, name=f"camera:{self.config.id}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for both threads; False if one is still running (a read or an open that is
        still blocked in OpenCV: it ends at its timeout, the threads are daemons)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def offer_triggers(self, triggers: Sequence[PendingTrigger]) -> None:
        """The triggers now waiting for this camera (the controller takes those it can)."""
        with self._cond:
            self._offered = list(triggers)
            if self._offered:
                self._cond.notify_all()

    # -- state shared with the controller ----------------------------------------------------------
    def _set_state(self, *, error: str | None = None, **values: Any) -> None:
        with self._cond:
            self._state.update(values)
            if error is not None:
                self._new_error = (error, utcnow())
                self._errors += 1
            self._dirty = True
            self._cond.notify_all()

    def _error(self, message: str) -> None:
        """An error that does not change the connection (a frame that could not be stored)."""
        log.error("camera %s: %s", self.config.id, message)
        self._set_state(error=message)

    # -- the reader --------------------------------------------------------------------------------
    def _reader(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                capture, reason = self._open()
                if capture is None:
                    failures += 1
                    self._retry(f"cannot open {self.shown}: {reason}", failures)
                    continue
                try:
                    frames, reason = self._read_frames(capture)
                finally:
                    capture.release()
            except Exception as exc:  # OpenCV or a bug: retried like a failed open
                log.exception("camera %s: reader failed", self.config.id)
                failures += 1
                self._retry(f"reader failed: {exc!r}", failures)
                continue
            if self._stop.is_set():
                break
            if frames:
                failures = 0
            if self.config.kind == "file" and reason == "end of file":
                if self.config.loop and frames:
                    continue
                log.info("camera %s: %s ended after %d frames", self.config.id, self.shown, frames)
                self._set_state(status="ended", connected=False, next_retry_at=None)
                return
            failures += 1
            self._retry(f"{self.shown}: {reason} after {frames} frames", failures)

    def _open(self) -> tuple[Any, str]:
        """An opened ``cv2.VideoCapture``, or None and why not."""
        c = self.config
        if c.kind == "file" and not os.path.isfile(str(c.source)):
            return None, "no such file"
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(c.open_timeout_seconds * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(c.read_timeout_seconds * 1000),
        ]
        backend = cv2.CAP_ANY if c.kind == "device" else cv2.CAP_FFMPEG
        try:
            capture = cv2.VideoCapture(c.source, backend, params)
        except cv2.error as exc:
            return None, f"OpenCV refused it ({str(exc).strip()})"
        if capture.isOpened():
            return capture, ""
        capture.release()
        return None, diagnose(c)

    def _retry(self, reason: str, failures: int) -> None:
        """Report ``reason`` and wait out the back-off: the minimum, doubled per failure in
        a row, at most the maximum."""
        c = self.config
        delay = min(c.reconnect_max_seconds, c.reconnect_min_seconds * 2 ** min(failures - 1, 60))
        # The first failure of a run is an error; its repeats, at a growing interval, warnings.
        level = logging.ERROR if failures == 1 else logging.WARNING
        log.log(
            level,
            "camera %s: %s; trying again in %.3g s (failure %d in a row)",
            c.id,
            reason,
            delay,
            failures,
        )
        self._set_state(
            error=reason,
            status="retrying",
            connected=False,
            failures=failures,
            retry_seconds=delay,
            next_retry_at=utcnow() + timedelta(seconds=delay),
        )
        self._stop.wait(delay)

    def _read_frames(self, capture: Any) -> tuple[int, str]:
        """Read until the stream ends or stalls, or the camera stops; returns how many frames
        were read and why it stopped."""
        c = self.config
        pace = 0.0
        if c.kind == "file":
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            pace = 1.0 / (fps if 0.0 < fps <= 1000.0 else FILE_FPS_FALLBACK)
        started = time.monotonic()
        frames = 0
        while not self._stop.is_set():
            if pace:
                self._stop.wait(max(0.0, started + frames * pace - time.monotonic()))
                if self._stop.is_set():
                    break
            ok, image = capture.read()
            if not ok or image is None:
                if c.kind == "file":
                    return frames, "end of file"
                return frames, "the stream ended or stalled (no frame within the read timeout)"
            frames += 1
            self._take_frame(image, first=frames == 1)
        return frames, "stopped"

    def _take_frame(self, image: np.ndarray, *, first: bool) -> None:
        now = utcnow()
        with self._cond:
            number = (self._latest.number if self._latest else 0) + 1
            frame = Frame(image=image, number=number, grabbed_at=now)
            self._latest = frame
            self._frames_read += 1
            self._state["last_frame_at"] = now
            nth = self.config.every_nth if self.config.mode == "every_nth" else None
            if nth is not None and (number - 1) % nth == 0:
                if len(self._selected) >= MAX_SELECTED:
                    self._selected.popleft()
                    self._errors += 1
                    self._new_error = ("frame dropped: storing is slower than the camera", now)
                    self._dirty = True
                self._selected.append(frame)
            # A video file that loops starts again without having been away.
            first = first and self._state["status"] != "connected"
            if first:
                self._state.update(
                    status="connected",
                    connected=True,
                    connected_at=now,
                    failures=0,
                    retry_seconds=None,
                    next_retry_at=None,
                )
                self._dirty = True
            self._cond.notify_all()
        if first:
            height, width = image.shape[:2]
            log.info(
                "camera %s: connected to %s (%dx%d)", self.config.id, self.shown, width, height
            )

    # -- the controller ----------------------------------------------------------------------------
    def _controller(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # each step's own failures are handled; this is the last net
                log.exception(
                    "camera %s: controller step failed; going on in %.3g s",
                    self.config.id,
                    ERROR_BACKOFF_SECONDS,
                )
                self._stop.wait(ERROR_BACKOFF_SECONDS)
        if self._registered:
            self._flush(force=True)

    def _step(self) -> None:
        if not self._registered:
            self._register()
            return
        if not self._flush():  # no database: storing frames would fail too
            self._stop.wait(ERROR_BACKOFF_SECONDS)
            return
        self._serve_triggers()
        self._store_selected()
        if self.config.mode == "interval":
            self._capture_interval()
        with self._cond:
            if self._stop.is_set() or self._dirty or self._selected or self._pending_offers():
                return
            timeout = TICK_SECONDS
            if self.config.mode == "interval":
                timeout = min(timeout, max(0.0, self._next_capture - time.monotonic()))
            self._cond.wait(timeout)

    def _register(self) -> None:
        c = self.config
        try:
            camera_db.register_camera(
                self.engine,
                camera_id=c.id,
                source=self.shown,
                mode=c.mode,
                interval_seconds=c.interval_seconds if c.mode == "interval" else None,
                every_nth=c.every_nth if c.mode == "every_nth" else None,
                line=c.line,
                lot=c.lot,
                owner=self.owner,
            )
        except Exception as exc:
            self._database_down(exc)
            self._stop.wait(ERROR_BACKOFF_SECONDS)
            return
        self._database_up()
        self._registered = True
        self._dirty = True
        log.info(
            "camera %s: %s, mode %s%s",
            c.id,
            self.shown,
            c.mode,
            f" every {c.interval_seconds:.3g} s"
            if c.mode == "interval"
            else f" every {c.every_nth}th frame"
            if c.mode == "every_nth"
            else "",
        )

    def _database_down(self, exc: Exception) -> None:
        if not self._database_failing:
            log.warning(
                "camera %s: the database did not answer (%s); no frames are stored until it "
                "does, trying again every %.3g s",
                self.config.id,
                exc,
                ERROR_BACKOFF_SECONDS,
            )
        self._database_failing = True

    def _database_up(self) -> None:
        if self._database_failing:
            log.info("camera %s: the database answers again", self.config.id)
        self._database_failing = False

    def _flush(self, *, force: bool = False) -> bool:
        """Write the camera's state when it changed, and as a heartbeat; False when the
        database did not answer (what was not written is kept for the next try)."""
        now = time.monotonic()
        with self._cond:
            if not (force or self._dirty or now >= self._next_flush):
                return True
            values = dict(self._state)
            if self._new_error is not None:
                values["last_error"], values["last_error_at"] = self._new_error
            frames_read, errors = self._frames_read, self._errors
            self._frames_read = self._errors = 0
            self._new_error = None
            self._dirty = False
        try:
            written = camera_db.update_camera(
                self.engine,
                self.config.id,
                owner=self.owner,
                values=values,
                frames_read=frames_read,
                errors=errors,
            )
        except Exception as exc:
            with self._cond:  # keep what was not written for the next try
                self._frames_read += frames_read
                self._errors += errors
                if "last_error" in values and self._new_error is None:
                    self._new_error = (values["last_error"], values["last_error_at"])
                self._dirty = True
            self._database_down(exc)
            return False
        self._database_up()
        self._next_flush = now + camera_db.HEARTBEAT_SECONDS
        if not written:
            log.warning(
                "camera %s: its row is gone or another process took it over; registering again",
                self.config.id,
            )
            self._registered = False
        return True

    # -- choosing frames ---------------------------------------------------------------------------
    def _pending_offers(self) -> bool:
        return any(t.id not in self._attempted for t in self._offered)

    def _serve_triggers(self) -> None:
        with self._cond:
            offered = list(self._offered)
            self._attempted &= {t.id for t in offered}
        for trigger in offered:
            if trigger.id in self._attempted or self._stop.is_set():
                continue
            self._attempted.add(trigger.id)
            try:
                self._serve(trigger)
            except Exception:
                self._attempted.discard(trigger.id)  # not taken: offered again, tried again
                raise

    def _serve(self, trigger: PendingTrigger) -> None:
        c = self.config
        now = utcnow()
        age = (now - trigger.requested_at).total_seconds()
        if age > c.trigger_max_age_seconds:
            reason = (
                f"trigger {trigger.id} expired: requested {age:.1f} s ago, more than "
                f"trigger_max_age_seconds={c.trigger_max_age_seconds:g}"
            )
            if camera_db.take_trigger(self.engine, trigger.id, owner=self.owner, error=reason):
                self._error(reason)
            return
        if not camera_db.take_trigger(self.engine, trigger.id, owner=self.owner, now=now):
            return  # another capture process took it
        since = min(trigger.requested_at, now)  # another host's clock may be ahead
        frame = self._frame_since(since, c.trigger_wait_seconds)
        if frame is None:
            with self._cond:
                status = self._state["status"]
            reason = (
                f"trigger {trigger.id}: no frame within trigger_wait_seconds="
                f"{c.trigger_wait_seconds:g} (camera {status})"
            )
            camera_db.fail_trigger(self.engine, trigger.id, reason)
            self._error(reason)
            return
        job_id = self._store(frame, trigger_id=trigger.id)
        if job_id is None:
            camera_db.fail_trigger(self.engine, trigger.id, "the frame could not be stored")
        else:
            log.info("camera %s: trigger %d -> job %s", c.id, trigger.id, job_id)

    def _frame_since(self, since: datetime, wait_seconds: float) -> Frame | None:
        """The newest frame read at or after ``since``, waiting up to ``wait_seconds``."""
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while True:
                frame = self._latest
                if frame is not None and frame.grabbed_at >= since:
                    return frame
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(remaining)

    def _store_selected(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._selected:
                    return
                frame = self._selected.popleft()
            self._store(frame)

    def _capture_interval(self) -> None:
        now = time.monotonic()
        if now < self._next_capture:
            return
        with self._cond:
            frame = self._latest
        if frame is None or frame.number <= self._last_stored:
            return  # nothing new yet: the next new frame is taken at once
        self._store(frame)
        self._next_capture += self.config.interval_seconds
        # Late (started, reconnected, or the store itself was slow): count from now, so a stall
        # is followed by one frame an interval later, never by a burst that catches up.
        now = time.monotonic()
        if self._next_capture <= now:
            self._next_capture = now + self.config.interval_seconds

    # -- storing -----------------------------------------------------------------------------------
    def _frame_path(self, frame: Frame) -> Path:
        stamp = frame.grabbed_at.strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{self.config.id}-{stamp}-{frame.number:08d}.{self.config.image_format}"
        return self.images_dir / frame.grabbed_at.strftime("%Y-%m-%d") / name

    def _store(self, frame: Frame, *, trigger_id: int | None = None) -> str | None:
        """Write the frame's file, record its job, wake the workers; returns the job id, or
        None when the frame could not be stored (reported as the camera's error)."""
        c = self.config
        self._last_stored = max(self._last_stored, frame.number)
        path = self._frame_path(frame)
        try:
            data = encode_frame(frame.image, c.image_format, c.jpeg_quality)
            write_atomically(path, data)
        except (OSError, ValueError, cv2.error) as exc:
            self._error(f"frame {frame.number} not stored: cannot write {path} ({exc})")
            return None
        try:
            job_id = camera_db.insert_camera_frame(
                self.engine,
                camera_id=c.id,
                owner=self.owner,
                image=NewImage(
                    filename=path.name,
                    stored_path=str(path),
                    sha256=hashlib.sha256(data).hexdigest(),
                    size_bytes=len(data),
                ),
                grabbed_at=frame.grabbed_at,
                line=c.line,
                lot=c.lot,
                priority=c.priority,
                model_name=c.model_name,
                trigger_id=trigger_id,
            )
        except Exception as exc:  # no job, so no file: nothing orphaned stays behind
            path.unlink(missing_ok=True)
            self._error(f"frame {frame.number} not stored: the database refused it ({exc})")
            return None
        try:
            self.enqueue(job_id)
        except Exception as exc:  # the workers poll the database too
            log.warning(
                "camera %s: job %s: waking the workers failed (%s); they find it by polling",
                c.id,
                job_id,
                exc,
            )
        return job_id


# -- all cameras ----------------------------------------------------------------------------------
def run_cameras(
    settings: Settings,
    engine: Engine,
    enqueue: Enqueue,
    stop: threading.Event,
    cameras: Sequence[CameraConfig] | None = None,
) -> None:
    """Capture from ``cameras`` (default: ``load_cameras(settings)``) until ``stop`` is set.

    Frames chosen by each camera's mode are stored under ``<data_dir>/images/cameras/<id>/``
    and recorded as jobs (source "camera"), then ``enqueue(job_id)`` wakes the workers. The
    triggers the web writes are polled every ``TRIGGER_POLL_SECONDS``. A camera that cannot be
    opened or drops is reported (its row in ``cameras``, the log) and retried with a back-off;
    the others go on. On return, every camera's row says ``stopped``.
    """
    chosen = load_cameras(settings) if cameras is None else list(cameras)
    ids = [c.id for c in chosen]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigurationError(f"camera id(s) configured twice: {', '.join(twice)}")
    if not chosen:
        log.info("no cameras configured")
        stop.wait()
        return
    owner = capture_owner()
    sources = {
        c.id: CameraSource(c, engine, enqueue, data_dir=settings.data_dir, owner=owner)
        for c in chosen
    }
    log.info(
        "capturing from %d cameras as %s: %s",
        len(sources),
        owner,
        ", ".join(f"{c.id} ({describe_source(c.source)})" for c in chosen),
    )
    for source in sources.values():
        source.start()
    try:
        _poll_triggers(engine, sources, stop)
    finally:
        for source in sources.values():
            source.stop()
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for source in sources.values():
            if not source.join(max(0.0, deadline - time.monotonic())):
                log.warning("camera %s: still blocked in OpenCV; left to end", source.config.id)
        try:
            camera_db.mark_cameras_stopped(engine, ids, owner=owner)
        except Exception as exc:
            log.warning("cameras: could not mark them stopped (%s)", exc)
        log.info("capturing stopped (%d cameras)", len(sources))


def _poll_triggers(engine: Engine, sources: dict[str, CameraSource], stop: threading.Event) -> None:
    failing = False
    ids = list(sources)
    while not stop.wait(TRIGGER_POLL_SECONDS):
        try:
            pending = camera_db.pending_triggers(engine, ids)
        except Exception as exc:
            if not failing:
                log.warning("cameras: cannot read the triggers (%s); trying again", exc)
            failing = True
            stop.wait(ERROR_BACKOFF_SECONDS)
            continue
        if failing:
            log.info("cameras: reading the triggers again")
            failing = False
        grouped: dict[str, list[PendingTrigger]] = {i: [] for i in ids}
        for trigger in pending:
            grouped[trigger.camera_id].append(trigger)
        for camera_id, triggers in grouped.items():
            sources[camera_id].offer_triggers(triggers)
