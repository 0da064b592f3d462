"""The service around the API: auth, health and readiness, metrics, JSON errors, OpenAPI."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError

from inspector.db import heartbeats
from inspector.db import queries as q
from inspector.db.engine import upgrade
from inspector.db.testing import (
    DatabaseUnavailableError,
    postgres_test_url,
    scratch_postgres_engine,
)
from inspector.errors import ModelStoreError
from web.testing import WebService, png_bytes, web_service

REPO = Path(__file__).resolve().parent.parent
PROTECTED = [
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/abc"),
    ("GET", "/api/v1/jobs/abc/results"),
    ("GET", "/api/v1/images/1"),
    ("GET", "/api/v1/images/1/file"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/jobs"),
    ("POST", "/api/v1/inspect"),
]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[WebService]:
    with web_service(tmp_path / "data") as service:
        yield service


def post_images(svc: WebService, n: int) -> str:
    files = [(io.BytesIO(png_bytes(i)), f"{i}.png") for i in range(n)]
    response = svc.client().post("/api/v1/jobs", data={"files": files}, headers=svc.auth)
    assert response.status_code == 202
    return str(response.json["job_id"])


# -- auth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "url"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-token"]
)
def test_api_needs_a_valid_bearer_token(
    svc: WebService, method: str, url: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = svc.client().open(url, method=method, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json["error"]["code"] == "unauthorized"


def test_a_revoked_token_is_refused(svc: WebService) -> None:
    client = svc.client()
    assert client.get("/api/v1/jobs", headers=svc.auth).status_code == 200
    assert q.revoke_token(svc.engine, "tests")
    response = client.get("/api/v1/jobs", headers=svc.auth)
    assert response.status_code == 401
    assert "invalid or revoked" in response.json["error"]["message"]


def test_probes_and_metrics_need_no_token(svc: WebService) -> None:
    client = svc.client()
    for url in ["/healthz", "/readyz", "/metrics"]:
        assert client.get(url).status_code == 200, url


# -- health and readiness ------------------------------------------------------------------------
def test_healthz_is_ok_even_without_a_database(tmp_path: Path) -> None:
    with web_service(tmp_path, migrate=False) as svc:
        response = svc.client().get("/healthz")
        assert (response.status_code, response.json) == (200, {"status": "ok"})


def test_readyz_is_200_on_a_migrated_database_with_each_check(svc: WebService) -> None:
    response = svc.client().get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["checks"]["database"]["ok"] is True
    assert response.json["checks"]["database"]["detail"].startswith("revision ")


def test_readyz_is_503_on_an_empty_database(tmp_path: Path) -> None:
    with web_service(tmp_path, migrate=False) as svc:
        response = svc.client().get("/readyz")
        assert response.status_code == 503
        assert response.json["failed"] == ["database"]
        assert "not initialised" in response.json["checks"]["database"]["detail"]
        assert response.json["error"]["code"] == "not_ready"
        upgrade(svc.engine)
        assert svc.client().get("/readyz").status_code == 200


def test_readyz_runs_the_apps_checks_and_lists_what_failed(tmp_path: Path) -> None:
    def broker() -> str:
        raise ConnectionError("redis://localhost:6379 refused")

    def model() -> str:
        return "steel v3"

    with web_service(tmp_path, ready_checks=[broker, model]) as svc:
        response = svc.client().get("/readyz")
    assert response.status_code == 503
    assert response.json["failed"] == ["broker"]
    assert response.json["checks"]["broker"] == {
        "ok": False,
        "detail": "redis://localhost:6379 refused",
    }
    assert response.json["checks"]["model"] == {"ok": True, "detail": "steel v3"}
    assert response.json["checks"]["database"]["ok"] is True


# -- metrics -------------------------------------------------------------------------------------
def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_jobs_and_the_queue(svc: WebService) -> None:
    client = svc.client()
    post_images(svc, 2)
    post_images(svc, 1)
    client.get("/api/v1/jobs", headers=svc.auth)
    client.get("/api/v1/jobs")  # 401
    client.get("/no-such-page")
    claimed = q.claim_images(svc.engine, worker_id="w", limit=1, lease_seconds=60)
    q.record_errors(
        svc.engine, worker_id="w", errors=[(claimed[0].id, "bad")], max_attempts=1, permanent=True
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    got = samples(response.get_data(as_text=True))

    def requests(endpoint: str, method: str, status: int) -> float:
        labels = (("endpoint", endpoint), ("method", method), ("status", str(status)))
        return got[("inspector_http_requests_total", labels)]

    assert requests("api.create_job", "POST", 202) == 2
    assert requests("api.list_jobs", "GET", 200) == 1
    assert requests("api.list_jobs", "GET", 401) == 1
    assert requests("unmatched", "GET", 404) == 1
    latency = "inspector_http_request_duration_seconds_count"
    assert got[(latency, (("endpoint", "api.create_job"), ("method", "POST")))] == 2
    assert got[("inspector_jobs_created_total", (("source", "upload"),))] == 2
    assert got[("inspector_images_accepted_total", (("source", "upload"),))] == 3
    assert got[("inspector_queue_depth", ())] == 2
    assert got[("inspector_images", (("status", "queued"),))] == 2
    assert got[("inspector_images", (("status", "error"),))] == 1
    assert got[("inspector_images", (("status", "done"),))] == 0
    assert got[("inspector_database_up", ())] == 1
    assert got[("inspector_workers_alive", ())] == 0
    heartbeats.beat(svc.engine, worker_id="w", hostname="h", pid=1, device="cpu", models=["m:1"])
    got = samples(client.get("/metrics").get_data(as_text=True))
    assert got[("inspector_workers_alive", ())] == 1


def test_two_apps_keep_their_own_metrics(tmp_path: Path) -> None:
    with web_service(tmp_path / "a") as one, web_service(tmp_path / "b") as two:
        post_images(one, 1)
        got = samples(two.client().get("/metrics").get_data(as_text=True))
        assert ("inspector_jobs_created_total", (("source", "upload"),)) not in got
        got = samples(one.client().get("/metrics").get_data(as_text=True))
        assert got[("inspector_jobs_created_total", (("source", "upload"),))] == 1


def test_metrics_survive_a_database_that_does_not_answer(tmp_path: Path) -> None:
    with web_service(tmp_path, migrate=False) as svc:
        got = samples(svc.client().get("/metrics").get_data(as_text=True))
    assert got[("inspector_database_up", ())] == 0


# -- errors are JSON -----------------------------------------------------------------------------
def raising(app: Flask, url: str, exc: Exception) -> None:
    def view() -> str:
        raise exc

    app.add_url_rule(url, url.strip("/"), view)


def test_errors_are_json_never_html(svc: WebService) -> None:
    raising(svc.app, "/boom", RuntimeError("secret detail"))
    raising(svc.app, "/no-model", ModelStoreError("no model 'steel' in the store"))
    raising(svc.app, "/db-down", OperationalError("SELECT 1", {}, Exception("gone")))
    client = svc.client()
    cases = [
        (client.get("/no-such-page"), 404, "not_found"),
        (client.get("/api/v1/nope", headers=svc.auth), 404, "not_found"),
        (client.post("/healthz"), 405, "method_not_allowed"),
        (client.delete("/api/v1/jobs", headers=svc.auth), 405, "method_not_allowed"),
        (client.get("/boom"), 500, "internal_error"),
        (client.get("/no-model"), 404, "model_not_found"),
        (client.get("/db-down"), 503, "database_unavailable"),
    ]
    for response, status, code in cases:
        assert response.status_code == status
        assert response.mimetype == "application/json"
        assert set(response.json) == {"error"}
        assert response.json["error"]["code"] == code
        assert response.json["error"]["message"]
    assert "secret detail" not in cases[4][0].get_data(as_text=True)
    assert "GET" in cases[2][0].headers["Allow"]


# -- OpenAPI and imports -------------------------------------------------------------------------
def test_openapi_documents_every_route(svc: WebService) -> None:
    response = svc.client().get("/api/v1/openapi.json", headers=svc.auth)
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"].startswith("3.")
    for rule in svc.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (method, path)


def test_the_web_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys, web.app\n"
        f"app = web.app.create_app(environ={{'INSPECTOR_DATA_DIR': {str(tmp_path)!r}}})\n"
        "assert app.test_client().get('/healthz').status_code == 200\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


# -- PostgreSQL ----------------------------------------------------------------------------------
def test_upload_and_read_back_on_postgresql(tmp_path: Path) -> None:
    try:
        with scratch_postgres_engine(postgres_test_url()) as engine:  # noqa: SIM117
            with web_service(tmp_path, engine=engine) as svc:
                job_id = post_images(svc, 2)
                client = svc.client()
                body = client.get(f"/api/v1/jobs/{job_id}", headers=svc.auth).json
                assert (body["total"], body["counts"]["queued"]) == (2, 2)
                results = client.get(f"/api/v1/jobs/{job_id}/results", headers=svc.auth).json
                assert [r["filename"] for r in results["results"]] == ["0.png", "1.png"]
                assert client.get("/readyz").status_code == 200
    except DatabaseUnavailableError as exc:
        pytest.skip(str(exc))
