"""Cameras through OpenCV, on generated video files and a local MJPEG-over-HTTP server: the
frames each mode chooses become camera jobs, and the rows (jobs, images, cameras, triggers)
say so; broken and dropping cameras are reported, backed off and reconnected."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import Engine, select

from inspector.db.engine import make_engine, upgrade
from inspector.db.schema import camera_triggers, cameras, images, jobs, utcnow
from inspector.errors import ConfigurationError
from inspector.settings import Settings
from inspector.sources import camera_db
from inspector.sources.camera_config import CameraConfig, load_cameras
from inspector.sources.cameras import run_cameras
from web.testing import web_service

FAST = {"reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.4}
SIZE = (48, 32)  # width, height: small frames keep the tests fast


# -- helpers -------------------------------------------------------------------------------------
def grey(value: int) -> np.ndarray:
    return np.full((SIZE[1], SIZE[0], 3), value % 256, np.uint8)


def video_file(path: Path, frames: int, *, fps: float = 100.0, step: int = 8) -> Path:
    """An MJPG .avi whose frame i is a flat grey of i * step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, SIZE)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(grey(i * step))
    writer.release()
    return path


class MjpegServer:
    """multipart/x-mixed-replace JPEG frames on 127.0.0.1, like an IP camera's MJPEG URL.

    ``drop`` ends the streams and answers 503 until ``restore``.
    """

    def __init__(self, fps: float = 50.0) -> None:
        self.fps = fps
        self.online = True
        self.closed = False
        self.generation = 0
        self.streams = 0  # connections served with a stream
        self.refused = 0  # connections answered 503
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not outer.online or outer.closed:
                    outer.refused += 1
                    self.send_error(503, "camera offline")
                    return
                outer.streams += 1
                generation = outer.generation
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                n = 0
                try:
                    while outer.online and outer.generation == generation and not outer.closed:
                        ok, jpeg = cv2.imencode(".jpg", grey(n * 5))
                        assert ok
                        data = jpeg.tobytes()
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\n"
                            + f"Content-Length: {len(data)}\r\n\r\n".encode()
                            + data
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        n += 1
                        time.sleep(1.0 / outer.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/video.mjpg"

    def drop(self) -> None:
        self.online = False
        self.generation += 1

    def restore(self) -> None:
        self.online = True

    def close(self) -> None:
        self.closed = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def mjpeg() -> Iterator[MjpegServer]:
    server = MjpegServer()
    try:
        yield server
    finally:
        server.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"INSPECTOR_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def sqlite_engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def capturing(
    settings: Settings, engine: Engine, configs: Sequence[CameraConfig]
) -> Iterator[list[str]]:
    """``run_cameras`` on a thread; yields the job ids it woke the workers for."""
    woken: list[str] = []
    stop = threading.Event()
    failed: list[BaseException] = []

    def target() -> None:
        try:
            run_cameras(settings, engine, woken.append, stop, configs)
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=target, name="run_cameras", daemon=True)
    thread.start()
    try:
        yield woken
    finally:
        stop.set()
        thread.join(15)
        assert not thread.is_alive(), "run_cameras did not return after stop"
        assert not failed, failed


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)
    return value


def camera(engine: Engine, camera_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(cameras).where(cameras.c.id == camera_id)).first()


def camera_when(engine: Engine, camera_id: str, condition: Callable[[Any], Any], what: str) -> Any:
    """The camera's row once ``condition`` holds for it."""

    def holds() -> Any:
        row = camera(engine, camera_id)
        return row if row is not None and condition(row) else None

    return wait_for(holds, what=f"camera {camera_id}: {what}")


def camera_images(engine: Engine, camera_id: str) -> list[Any]:
    """The images of the camera's jobs, in order, with their jobs' columns."""
    query = (
        select(
            images,
            jobs.c.source,
            jobs.c.camera,
            jobs.c.line,
            jobs.c.lot,
            jobs.c.priority,
            jobs.c.total_images,
        )
        .select_from(images.join(jobs, jobs.c.id == images.c.job_id))
        .where(jobs.c.camera == camera_id)
        .order_by(images.c.id)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).all())


def check_stored(rows: Sequence[Any], data_dir: Path, camera_id: str) -> list[np.ndarray]:
    """Every image is a camera job's only image, a complete file under the camera's folder
    whose hash and size the row holds; returns the decoded frames."""
    folder = data_dir / "images" / "cameras" / camera_id
    decoded = []
    for row in rows:
        assert (row.source, row.camera, row.total_images, row.status) == (
            "camera",
            camera_id,
            1,
            "queued",
        )
        path = Path(row.stored_path)
        assert path.is_relative_to(folder), path
        data = path.read_bytes()
        assert (row.sha256, row.size_bytes) == (hashlib.sha256(data).hexdigest(), len(data))
        assert row.filename == path.name
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (SIZE[1], SIZE[0], 3)
        decoded.append(image)
    assert not [p for p in folder.rglob(".*") if p.is_file()], "temporary files left behind"
    return decoded


# -- modes ---------------------------------------------------------------------------------------
def test_every_nth_frame_of_a_video_file(engine: Engine, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL: frames 1, 11 and 21 of a 30-frame file, then the file ends."""
    settings = Settings.from_env({"INSPECTOR_DATA_DIR": str(tmp_path / "data")})
    path = video_file(tmp_path / "line1.avi", 30, step=8)
    config = CameraConfig(
        id="cam-nth",
        source=str(path),
        mode="every_nth",
        every_nth=10,
        line="L1",
        lot="lot-9",
        priority=3,
        **FAST,
    )
    with capturing(settings, engine, [config]) as woken:
        ended = camera_when(engine, "cam-nth", lambda r: r.status == "ended", "end of file")
    rows = camera_images(engine, "cam-nth")
    assert len(rows) == 3
    assert {(r.line, r.lot, r.priority) for r in rows} == {("L1", "lot-9", 3)}
    assert woken == [r.job_id for r in rows]
    frames = check_stored(rows, settings.data_dir, "cam-nth")
    means = [float(f.mean()) for f in frames]
    assert means == pytest.approx([0, 80, 160], abs=4)  # frames 1, 11, 21 (grey 8 * index)
    assert ended.frames_read == 30
    assert ended.frames_captured == 3
    assert (ended.errors, ended.failures, ended.connected) == (0, 0, False)
    assert ended.source == str(path)
    assert (ended.mode, ended.every_nth, ended.interval_seconds) == ("every_nth", 10, None)
    stopped = camera(engine, "cam-nth")
    assert stopped.status == "stopped" and stopped.stopped_at is not None


def test_interval_mode_on_an_mjpeg_stream(
    settings: Settings, sqlite_engine: Engine, mjpeg: MjpegServer
) -> None:
    config = CameraConfig(
        id="cam-int", source=mjpeg.url, mode="interval", interval_seconds=0.2, **FAST
    )
    with capturing(settings, sqlite_engine, [config]) as woken:
        connected = camera_when(sqlite_engine, "cam-int", lambda r: r.connected, "connected")
        assert connected.status == "connected" and connected.connected_at is not None
        wait_for(lambda: len(camera_images(sqlite_engine, "cam-int")) >= 5, what="5 frames")
    rows = camera_images(sqlite_engine, "cam-int")
    check_stored(rows, settings.data_dir, "cam-int")
    assert woken == [r.job_id for r in rows]
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(rows)]
    assert min(gaps) >= 0.12, gaps  # every 0.2 s, not every frame of the 50 fps stream
    row = camera(sqlite_engine, "cam-int")
    assert row.frames_captured == len(rows)
    assert row.frames_read > 2 * len(rows)
    assert row.last_capture_at is not None and row.last_frame_at >= row.last_capture_at
    assert (row.status, row.connected, row.errors, row.interval_seconds) == (
        "stopped",
        False,
        0,
        0.2,
    )


def test_interval_mode_after_a_slow_store_does_not_burst(
    settings: Settings,
    sqlite_engine: Engine,
    mjpeg: MjpegServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store that stalls (a locked database, a busy disk) delays the next frame by an
    interval from when it finished; it is not made up for with a burst of frames."""
    insert = camera_db.insert_camera_frame
    calls = itertools.count()

    def slow_second_insert(*args: Any, **kwargs: Any) -> Any:
        if next(calls) == 1:
            time.sleep(0.6)
        return insert(*args, **kwargs)

    monkeypatch.setattr(camera_db, "insert_camera_frame", slow_second_insert)
    config = CameraConfig(
        id="cam-slow", source=mjpeg.url, mode="interval", interval_seconds=0.2, **FAST
    )
    with capturing(settings, sqlite_engine, [config]):
        wait_for(lambda: len(camera_images(sqlite_engine, "cam-slow")) >= 4, what="4 frames")
    rows = camera_images(sqlite_engine, "cam-slow")
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(rows)]
    assert max(gaps[:2]) >= 0.6, gaps  # the stall happened
    assert min(gaps) >= 0.12, gaps  # and no catching up after it


def test_trigger_through_the_api_is_taken_by_the_capture_loop(
    tmp_path: Path, mjpeg: MjpegServer
) -> None:
    with web_service(tmp_path / "data") as svc:
        engine, client = svc.engine, svc.client()
        config = CameraConfig(
            id="cam-trg", source=mjpeg.url, mode="trigger", line="L2", lot="lot-1", **FAST
        )
        with capturing(svc.settings, engine, [config]) as woken:
            camera_when(engine, "cam-trg", lambda r: r.connected, "connected")
            time.sleep(0.3)
            assert camera_images(engine, "cam-trg") == []  # trigger mode: nothing unasked

            response = client.post("/api/v1/cameras/cam-trg/trigger", headers=svc.auth)
            assert response.status_code == 202, response.json
            trigger_id = response.json["trigger_id"]
            assert response.json["status"] == "pending"
            assert response.headers["Location"] == response.json["status_url"]

            def captured() -> Any:
                body = client.get(response.json["status_url"], headers=svc.auth).json
                return body if body["status"] == "captured" else None

            done = wait_for(captured, what="the trigger's frame")
            # An old trigger (the capture process was away) is failed, not served late.
            stale = camera_db.create_trigger(
                engine, "cam-trg", requested_by="plc", now=utcnow() - timedelta(minutes=5)
            )
            wait_for(
                lambda: camera_db.get_trigger(engine, "cam-trg", stale.id).status == "failed",
                what="the stale trigger failed",
            )
            time.sleep(0.3)
            owner = camera(engine, "cam-trg").owner
        assert woken == [done["job_id"]]
        assert done["job_url"] == f"/api/v1/jobs/{done['job_id']}"

    rows = camera_images(engine, "cam-trg")
    assert [r.job_id for r in rows] == [done["job_id"]]
    assert (rows[0].line, rows[0].lot) == ("L2", "lot-1")
    check_stored(rows, svc.settings.data_dir, "cam-trg")
    with engine.connect() as conn:
        triggers = conn.execute(select(camera_triggers).order_by(camera_triggers.c.id)).all()
    assert [t.id for t in triggers] == [trigger_id, stale.id]
    served, expired = triggers
    assert (served.job_id, served.taken_by, served.requested_by, served.error) == (
        done["job_id"],
        owner,
        "tests",
        None,
    )
    assert served.taken_at >= served.requested_at
    assert rows[0].created_at >= served.requested_at  # a frame read after the request
    assert expired.job_id is None and "expired" in expired.error
    row = camera(engine, "cam-trg")
    assert (row.frames_captured, row.errors, row.mode) == (1, 1, "trigger")
    assert "expired" in row.last_error


# -- failures ------------------------------------------------------------------------------------
def test_a_camera_that_never_opens_is_reported_and_backed_off(
    settings: Settings,
    sqlite_engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="inspector.sources.cameras")
    url = f"http://127.0.0.1:{closed_port()}/stream.mjpg"
    good = video_file(tmp_path / "good.avi", 20)
    configs = [
        CameraConfig(id="refused", source=url, **FAST),
        CameraConfig(id="missing", source=str(tmp_path / "nowhere.avi"), **FAST),
        CameraConfig(
            id="good", source=str(good), mode="interval", interval_seconds=0.05, loop=True
        ),
    ]
    backoffs: list[float] = []
    started = time.monotonic()
    with capturing(settings, sqlite_engine, configs):

        def backing_off() -> bool:
            row = camera(sqlite_engine, "refused")
            seen = None if row is None else row.retry_seconds
            if seen is not None and (not backoffs or backoffs[-1] != seen):
                backoffs.append(seen)
            return bool(backoffs) and backoffs[-1] == 0.4

        wait_for(backing_off, what="the back-off to reach its maximum")

        def still_capturing() -> bool:
            row = camera(sqlite_engine, "good")
            return row is not None and row.frames_captured >= 10

        wait_for(still_capturing, what="the working camera to go on capturing")
        time.sleep(0.5)
        refused, missing, alive = (camera(sqlite_engine, i) for i in ("refused", "missing", "good"))
        elapsed = time.monotonic() - started
    # Backs off 0.05, 0.1, 0.2, 0.4, 0.4, ...: no tight loop. (The rows are sampled, so the
    # first steps may pass unseen; the failure count below bounds the attempts.)
    assert backoffs == sorted(backoffs) and backoffs[-1] == 0.4, backoffs
    assert 4 <= refused.failures == refused.errors <= 3 + elapsed / 0.4 + 1
    assert (refused.status, refused.connected, refused.frames_read) == ("retrying", False, 0)
    assert refused.next_retry_at is not None and refused.next_retry_at > refused.last_error_at
    assert url in refused.last_error and "Connection refused" in refused.last_error
    assert missing.status == "retrying" and "no such file" in missing.last_error
    assert missing.failures >= 3
    # The others go on capturing.
    assert alive.connected and alive.frames_captured >= 10 and alive.errors == 0
    final = camera(sqlite_engine, "good")
    assert len(camera_images(sqlite_engine, "good")) == final.frames_captured
    assert camera_images(sqlite_engine, "refused") == []
    reported = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("camera refused:")
    ]
    assert len(reported) == 1, reported  # the first failure; its repeats are warnings
    assert url in reported[0] and "Connection refused" in reported[0]


def test_a_stream_that_drops_comes_back(
    settings: Settings, sqlite_engine: Engine, mjpeg: MjpegServer
) -> None:
    config = CameraConfig(
        id="cam-drop", source=mjpeg.url, mode="interval", interval_seconds=0.05, **FAST
    )
    with capturing(settings, sqlite_engine, [config]):
        first = camera_when(
            sqlite_engine, "cam-drop", lambda r: r.frames_captured >= 3, "frames before the drop"
        )
        mjpeg.drop()
        down = camera_when(
            sqlite_engine, "cam-drop", lambda r: r.failures >= 3, "failed reconnects while down"
        )
        assert (down.status, down.connected) == ("retrying", False)
        assert "503" in down.last_error, down.last_error
        captured_while_down = down.frames_captured
        mjpeg.restore()
        back = camera_when(
            sqlite_engine,
            "cam-drop",
            lambda r: r.connected and r.frames_captured >= captured_while_down + 3,
            "frames after the stream came back",
        )
    assert mjpeg.streams >= 2 and mjpeg.refused >= 2
    assert back.status == "connected" and back.failures == 0 and back.retry_seconds is None
    assert back.connected_at > first.connected_at
    assert back.errors >= 3  # the drop and the refused reconnects
    rows = camera_images(sqlite_engine, "cam-drop")
    assert len(rows) == camera(sqlite_engine, "cam-drop").frames_captured
    check_stored(rows, settings.data_dir, "cam-drop")


# -- triggers, once ------------------------------------------------------------------------------
def test_each_trigger_is_taken_once_by_competing_processes(engine: Engine) -> None:
    """Several capture processes race for every trigger; exactly one takes each."""
    camera_db.register_camera(
        engine,
        camera_id="cam-race",
        source="device 0",
        mode="trigger",
        interval_seconds=None,
        every_nth=None,
        line=None,
        lot=None,
        owner="host:1:a",
    )
    triggers = [camera_db.create_trigger(engine, "cam-race") for _ in range(10)]
    assert [t.id for t in camera_db.pending_triggers(engine, ["cam-race"])] == [
        t.id for t in triggers
    ]
    owners = [f"host:{n}:x" for n in range(4)]
    won: dict[str, list[int]] = {o: [] for o in owners}
    barrier = threading.Barrier(len(owners))

    def race(owner: str) -> None:
        barrier.wait()
        for t in triggers:
            if camera_db.take_trigger(engine, t.id, owner=owner):
                won[owner].append(t.id)

    threads = [threading.Thread(target=race, args=(o,)) for o in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    taken = sorted(i for ids in won.values() for i in ids)
    assert taken == [t.id for t in triggers]
    assert camera_db.pending_triggers(engine, ["cam-race"]) == []
    with engine.connect() as conn:
        rows = conn.execute(select(camera_triggers.c.id, camera_triggers.c.taken_by)).all()
    assert {r.id: r.taken_by for r in rows} == {i: o for o, ids in won.items() for i in ids}


# -- configuration -------------------------------------------------------------------------------
def test_cameras_from_the_watch_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "watch.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "defaults": {"line": "L7", "after": "move", "product": "P-1"},
                "folders": [{"path": "inbox"}],
                "camera_defaults": {"reconnect_max_seconds": 30, "model": "steel"},
                "cameras": [
                    {"id": "gate", "source": "rtsp://op:s3cret@10.0.0.5:8554/main"},
                    {"id": "replay", "source": "videos/a.avi", "mode": "every_nth", "every_nth": 5},
                    {"id": "usb", "source": 0, "mode": "trigger", "line": "L8"},
                ],
            }
        )
    )
    env = {
        "INSPECTOR_WATCH_CONFIG": str(config),
        "INSPECTOR_CAMERAS": json.dumps([{"id": "dock", "source": "http://cam/video.mjpg"}]),
        "INSPECTOR_CAMERA_RECONNECT_MIN_SECONDS": "2",
        "INSPECTOR_CAMERA_IMAGE_FORMAT": "png",
    }
    found = {c.id: c for c in load_cameras(Settings.from_env({}), env)}
    assert list(found) == ["gate", "replay", "usb", "dock"]
    gate, replay, usb, dock = found.values()
    assert (gate.kind, gate.mode, gate.interval_seconds) == ("stream", "interval", 1.0)
    assert gate.shown_source == "rtsp://op:***@10.0.0.5:8554/main"
    assert (gate.line, gate.lot, gate.model_name) == ("L7", "P-1", "steel")
    assert (gate.reconnect_min_seconds, gate.reconnect_max_seconds) == (2.0, 30.0)
    assert gate.image_format == "png"
    assert replay.source == str(tmp_path / "conf" / "videos" / "a.avi")
    assert (replay.kind, replay.every_nth) == ("file", 5)
    assert (usb.kind, usb.source, usb.line) == ("device", 0, "L8")
    # INSPECTOR_CAMERAS has no file defaults, only the variables'.
    assert (dock.line, dock.reconnect_max_seconds, dock.reconnect_min_seconds) == (None, 60.0, 2.0)
    assert load_cameras(Settings.from_env({}), {}) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "a b", "source": 0}, "the id must be"),
        ({"id": "a", "source": 0, "mode": "burst"}, "mode must be one of"),
        ({"id": "a", "source": 0, "mode": "every_nth"}, "needs every_nth"),
        ({"id": "a", "source": 0, "every_nth": 0}, "every_nth must be an integer >= 1"),
        ({"id": "a", "source": 0, "interval_seconds": 0}, "interval_seconds must be at least"),
        ({"id": "a", "source": True}, "source must be"),
        ({"id": "a"}, "every camera needs 'source'"),
        ({"id": "a", "source": 0, "fps": 5}, "unknown key(s) 'fps'"),
        ({"id": "a", "source": 0, "reconnect_max_seconds": 0.5}, "is below"),
        ({"id": "a", "source": 0, "image_format": "bmp"}, "image_format must be"),
    ],
)
def test_bad_camera_configuration_is_refused(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_cameras(Settings.from_env({}), {"INSPECTOR_CAMERAS": json.dumps([entry])})


def test_a_camera_configured_twice_is_refused(tmp_path: Path) -> None:
    twice = json.dumps([{"id": "a", "source": 0}, {"id": "a", "source": 1}])
    with pytest.raises(ConfigurationError, match="'a' is configured twice"):
        load_cameras(Settings.from_env({}), {"INSPECTOR_CAMERAS": twice})
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_cameras(Settings.from_env({}), {"INSPECTOR_CAMERAS": "[{"})
