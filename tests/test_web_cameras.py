"""The cameras API and metrics: state read from the rows the capture process writes, triggers
written for it to take (the capture side is in test_sources_cameras)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select

from inspector.db.schema import camera_triggers, utcnow
from inspector.sources import camera_db
from web.testing import WebService, web_service

OWNER = "host:42:abc"
ROUTES = [
    ("GET", "/api/v1/cameras"),
    ("GET", "/api/v1/cameras/gate"),
    ("POST", "/api/v1/cameras/gate/trigger"),
    ("GET", "/api/v1/cameras/gate/triggers/1"),
]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[WebService]:
    with web_service(tmp_path / "data") as service:
        yield service


def register(engine: Engine, camera_id: str, **overrides: Any) -> None:
    values: dict[str, Any] = {
        "camera_id": camera_id,
        "source": "rtsp://op:***@10.0.0.5/main",
        "mode": "trigger",
        "interval_seconds": None,
        "every_nth": None,
        "line": "L1",
        "lot": None,
        "owner": OWNER,
    }
    values.update(overrides)
    camera_db.register_camera(engine, **values)


def connect(engine: Engine, camera_id: str, **values: Any) -> None:
    now = utcnow()
    assert camera_db.update_camera(
        engine,
        camera_id,
        owner=OWNER,
        values={
            "status": "connected",
            "connected": True,
            "connected_at": now,
            "last_frame_at": now - timedelta(seconds=2),
            **values,
        },
        frames_read=120,
        errors=2,
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_cameras_need_a_token(svc: WebService, method: str, url: str) -> None:
    register(svc.engine, "gate")
    response = svc.client().open(url, method=method)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "unauthorized"
    with svc.engine.connect() as conn:
        assert conn.execute(select(camera_triggers)).all() == []


def test_camera_state_and_a_trigger(engine: Engine, tmp_path: Path) -> None:
    """On SQLite and PostgreSQL: the state as written, a trigger row for the capture process."""
    with web_service(tmp_path, engine=engine) as svc:
        client = svc.client()
        assert client.get("/api/v1/cameras", headers=svc.auth).json == {"cameras": []}
        register(svc.engine, "gate")
        register(svc.engine, "belt", mode="interval", interval_seconds=0.5, line=None)
        connect(svc.engine, "gate")

        listed = client.get("/api/v1/cameras", headers=svc.auth).json["cameras"]
        assert [c["id"] for c in listed] == ["belt", "gate"]
        belt, gate = listed
        assert (belt["status"], belt["connected"], belt["mode"], belt["interval_seconds"]) == (
            "starting",
            False,
            "interval",
            0.5,
        )
        assert belt["seconds_since_last_frame"] is None
        assert (gate["status"], gate["connected"], gate["frames_read"], gate["errors"]) == (
            "connected",
            True,
            120,
            2,
        )
        assert gate["source"] == "rtsp://op:***@10.0.0.5/main"
        assert gate["seconds_since_last_frame"] >= 2.0
        assert (gate["owner"], gate["line"], gate["pending_triggers"]) == (OWNER, "L1", 0)
        assert gate["trigger_url"] == "/api/v1/cameras/gate/trigger"

        response = client.post("/api/v1/cameras/gate/trigger", headers=svc.auth)
        assert response.status_code == 202
        body = response.json
        assert (body["camera_id"], body["status"], body["job_id"]) == ("gate", "pending", None)
        assert body["status_url"] == f"/api/v1/cameras/gate/triggers/{body['trigger_id']}"
        with svc.engine.connect() as conn:
            rows = conn.execute(select(camera_triggers)).all()
        assert [(r.id, r.camera_id, r.requested_by, r.taken_at) for r in rows] == [
            (body["trigger_id"], "gate", "tests", None)
        ]
        one = client.get("/api/v1/cameras/gate", headers=svc.auth).json
        assert one["pending_triggers"] == 1
        status = client.get(body["status_url"], headers=svc.auth).json
        assert (status["status"], status["requested_by"]) == ("pending", "tests")

        # Taken by a capture process, it reads as such.
        assert camera_db.take_trigger(svc.engine, body["trigger_id"], owner=OWNER)
        assert not camera_db.take_trigger(svc.engine, body["trigger_id"], owner="other")
        status = client.get(body["status_url"], headers=svc.auth).json
        assert status["status"] == "taken" and status["taken_at"] is not None
        assert client.get("/api/v1/cameras/gate", headers=svc.auth).json["pending_triggers"] == 0


def test_unknown_cameras_and_triggers_are_404(svc: WebService) -> None:
    register(svc.engine, "gate")
    client = svc.client()
    for method, url in [
        ("GET", "/api/v1/cameras/nope"),
        ("POST", "/api/v1/cameras/nope/trigger"),
        ("GET", "/api/v1/cameras/gate/triggers/99"),
    ]:
        response = client.open(url, method=method, headers=svc.auth)
        assert response.status_code == 404, url
        assert response.json["error"]["code"] == "not_found"
    trigger = camera_db.create_trigger(svc.engine, "gate")
    other = client.get(f"/api/v1/cameras/belt/triggers/{trigger.id}", headers=svc.auth)
    assert other.status_code == 404  # a trigger is read through its own camera only
    with svc.engine.connect() as conn:
        assert len(conn.execute(select(camera_triggers)).all()) == 1


def test_a_camera_whose_process_is_gone_refuses_triggers(svc: WebService) -> None:
    register(svc.engine, "stopped")
    assert camera_db.mark_cameras_stopped(svc.engine, ["stopped"], owner=OWNER) == 1
    register(svc.engine, "lost", now=utcnow() - timedelta(minutes=5))
    connect(svc.engine, "lost")
    camera_db.update_camera(  # its last heartbeat, long ago
        svc.engine, "lost", owner=OWNER, values={}, now=utcnow() - timedelta(minutes=2)
    )
    client = svc.client()
    for camera_id, status in [("stopped", "stopped"), ("lost", "lost")]:
        response = client.post(f"/api/v1/cameras/{camera_id}/trigger", headers=svc.auth)
        assert response.status_code == 409
        assert response.json["error"]["code"] == "camera_not_running"
        assert f"status {status}" in response.json["error"]["message"]
        state = client.get(f"/api/v1/cameras/{camera_id}", headers=svc.auth).json
        assert (state["status"], state["connected"]) == (status, False)
    with svc.engine.connect() as conn:
        assert conn.execute(select(camera_triggers)).all() == []


def test_camera_metrics_come_from_the_rows(svc: WebService) -> None:
    register(svc.engine, "gate")
    connect(svc.engine, "gate")
    register(svc.engine, "belt")
    assert camera_db.update_camera(
        svc.engine,
        "belt",
        owner=OWNER,
        values={"status": "retrying", "last_error": "cannot open: refused"},
        errors=7,
    )
    got = samples(svc.client().get("/metrics").get_data(as_text=True))
    gate, belt = (("camera", "gate"),), (("camera", "belt"),)
    assert got[("inspector_camera_connected", gate)] == 1
    assert got[("inspector_camera_connected", belt)] == 0
    assert got[("inspector_camera_frames_read_total", gate)] == 120
    assert got[("inspector_camera_frames_captured_total", gate)] == 0
    assert got[("inspector_camera_errors_total", gate)] == 2
    assert got[("inspector_camera_errors_total", belt)] == 7
    assert got[("inspector_camera_seconds_since_last_frame", gate)] >= 2.0
    assert ("inspector_camera_seconds_since_last_frame", belt) not in got  # never had a frame


def test_metrics_without_camera_tables(tmp_path: Path) -> None:
    with web_service(tmp_path, migrate=False) as svc:
        got = samples(svc.client().get("/metrics").get_data(as_text=True))
    assert got[("inspector_database_up", ())] == 0
    assert not any(name.startswith("inspector_camera_") for name, _ in got)
