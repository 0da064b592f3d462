"""Liveness (/healthz: the process answers) and readiness (/readyz: it can do its work)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify

from inspector.db.engine import check_revision
from web.state import ReadyCheck, web_state

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_name(check: ReadyCheck) -> str:
    return str(getattr(check, "name", None) or getattr(check, "__name__", None) or repr(check))


def _run(check: ReadyCheck) -> dict[str, Any]:
    try:
        detail = check()
    except Exception as exc:  # a readiness check may fail any way it likes: that is the answer
        log.warning("readiness check %s failed: %s", _check_name(check), exc)
        return {"ok": False, "detail": str(exc) or type(exc).__name__}
    return {"ok": True, "detail": detail if isinstance(detail, str) else "ok"}


@bp.get("/readyz")
def readyz() -> Response:
    state = web_state()

    def database() -> str:
        return f"revision {check_revision(state.engine)}"

    checks = {"database": _run(database)}
    for check in state.ready_checks:
        checks[_check_name(check)] = _run(check)
    failed = [name for name, outcome in checks.items() if not outcome["ok"]]
    if not failed:
        return jsonify({"status": "ok", "checks": checks})
    body = {
        "status": "unavailable",
        "checks": checks,
        "failed": failed,
        "error": {"code": "not_ready", "message": f"not ready: {', '.join(failed)} failed"},
    }
    response = jsonify(body)
    response.status_code = 503
    return response
