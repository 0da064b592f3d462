"""Cameras under /api/v1: their state as the capture process wrote it, and triggers.

The cameras run in the ``inspector watch`` process, not here: a trigger is a row in the
database that the capture process takes within a moment and answers with a frame (a job).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, url_for

from inspector.sources import camera_db
from inspector.sources.camera_db import CameraState, CameraTrigger
from web.api import require_token
from web.errors import ApiError, not_found
from web.state import web_state

bp = Blueprint("cameras", __name__, url_prefix="/api/v1")
bp.before_request(require_token)


def _camera_entry(camera: CameraState) -> dict[str, Any]:
    return {
        **camera.to_dict(),
        "url": url_for("cameras.get_camera", camera_id=camera.id),
        "trigger_url": url_for("cameras.trigger", camera_id=camera.id),
    }


def _trigger_entry(trigger: CameraTrigger) -> dict[str, Any]:
    return {
        **trigger.to_dict(),
        "status_url": url_for(
            "cameras.get_trigger", camera_id=trigger.camera_id, trigger_id=trigger.id
        ),
        "job_url": url_for("api.get_job", job_id=trigger.job_id) if trigger.job_id else None,
    }


def _camera_or_404(camera_id: str) -> CameraState:
    camera = camera_db.get_camera(web_state().engine, camera_id)
    if camera is None:
        raise not_found(
            f"no camera {camera_id!r}: cameras appear once the capture process "
            "(inspector watch) has started with them configured"
        )
    return camera


@bp.get("/cameras")
def list_cameras() -> Response:
    cameras = camera_db.list_cameras(web_state().engine)
    return jsonify({"cameras": [_camera_entry(c) for c in cameras]})


@bp.get("/cameras/<camera_id>")
def get_camera(camera_id: str) -> Response:
    return jsonify(_camera_entry(_camera_or_404(camera_id)))


@bp.post("/cameras/<camera_id>/trigger")
def trigger(camera_id: str) -> Response:
    """One frame from the camera now: answered at once with the trigger, whose status says
    which job holds the frame once the capture process has taken it."""
    camera = _camera_or_404(camera_id)
    status = camera.effective_status()
    if status in ("stopped", "lost"):
        raise ApiError(
            409,
            "camera_not_running",
            f"camera {camera_id!r} is not running (status {status}, last heard of at "
            f"{camera.updated_at.isoformat()}): start the capture process (inspector watch)",
        )
    try:
        created = camera_db.create_trigger(
            web_state().engine, camera_id, requested_by=g.get("token_name")
        )
    except camera_db.UnknownCameraError:  # removed since it was read
        raise not_found(f"no camera {camera_id!r}") from None
    entry = _trigger_entry(created)
    response = jsonify({"trigger_id": created.id, **entry})
    response.status_code = 202
    response.headers["Location"] = entry["status_url"]
    return response


@bp.get("/cameras/<camera_id>/triggers/<int:trigger_id>")
def get_trigger(camera_id: str, trigger_id: int) -> Response:
    found = camera_db.get_trigger(web_state().engine, camera_id, trigger_id)
    if found is None:
        raise not_found(f"no trigger {trigger_id} of camera {camera_id!r}")
    return jsonify(_trigger_entry(found))
