"""Reading through the API: jobs, pages of jobs, results as JSON and CSV, images and files."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from inspector.db import queries as q
from inspector.db.records import NewImage, NewResult
from web.testing import WebService, png_bytes, web_service


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[WebService]:
    with web_service(tmp_path / "data") as service:
        yield service


def make_job(svc: WebService, n: int = 3, *, line: str | None = None) -> str:
    files = {f"img{i}.png": png_bytes(i) for i in range(n)}
    response = svc.client().post(
        "/api/v1/jobs",
        data={"files": [(io.BytesIO(b), name) for name, b in files.items()], "line": line or ""},
        headers=svc.auth,
    )
    assert response.status_code == 202
    return str(response.json["job_id"])


def classify_all(svc: WebService, *, fail_last: bool = False) -> list[int]:
    """Play a worker: claim every queued image, record verdicts (the last one an error)."""
    claimed = q.claim_images(svc.engine, worker_id="w1", limit=100, lease_seconds=60)
    ids = [c.id for c in claimed]
    done = ids[:-1] if fail_last else ids
    classes = [("good", "scratch"), ("good", "pit")]  # two models' worth of class names
    q.record_results(
        svc.engine,
        worker_id="w1",
        results=[
            NewResult(
                image_id=image_id,
                model_name="steel",
                model_version=2,
                label=classes[k % 2][1],
                confidence=0.8,
                defect_score=0.8,
                is_defect=True,
                flagged=k == 0,
                probabilities={classes[k % 2][0]: 0.2, classes[k % 2][1]: 0.8},
                scale_probabilities={224: {classes[k % 2][0]: 0.3, classes[k % 2][1]: 0.7}},
            )
            for k, image_id in enumerate(done)
        ],
    )
    if fail_last:
        q.record_errors(
            svc.engine,
            worker_id="w1",
            errors=[(ids[-1], "img2.png: not an image (truncated PNG)")],
            max_attempts=3,
            permanent=True,
        )
    return ids


def test_job_status_follows_its_images(svc: WebService) -> None:
    job_id = make_job(svc)
    client = svc.client()
    body = client.get(f"/api/v1/jobs/{job_id}", headers=svc.auth).json
    assert (body["id"], body["status"], body["total"]) == (job_id, "queued", 3)
    assert body["counts"] == {"queued": 3, "running": 0, "done": 0, "error": 0}
    assert body["durations"]["waiting_seconds"] is None
    classify_all(svc, fail_last=True)
    body = client.get(f"/api/v1/jobs/{job_id}", headers=svc.auth).json
    assert body["status"] == "finished"
    assert body["counts"] == {"queued": 0, "running": 0, "done": 2, "error": 1}
    assert (body["defects"], body["flagged"]) == (2, 1)
    assert body["durations"]["total_seconds"] >= 0
    assert body["results_url"] == f"/api/v1/jobs/{job_id}/results"


def test_unknown_job_is_404_json(svc: WebService) -> None:
    for url in ["/api/v1/jobs/nope", "/api/v1/jobs/nope/results"]:
        response = svc.client().get(url, headers=svc.auth)
        assert response.status_code == 404
        assert response.json["error"] == {"code": "not_found", "message": "no job 'nope'"}


def test_job_list_pages_and_filters(svc: WebService) -> None:
    ids = [make_job(svc, 1, line="L1" if i % 2 else "L2") for i in range(5)]
    client = svc.client()
    page = client.get("/api/v1/jobs?limit=2", headers=svc.auth).json
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first
    assert (page["limit"], page["offset"]) == (2, 0)
    seen = [j["id"] for j in page["jobs"]]
    while page["next"]:
        page = client.get(page["next"], headers=svc.auth).json
        seen += [j["id"] for j in page["jobs"]]
    assert seen == ids[::-1]
    l1 = client.get("/api/v1/jobs?line=L1&limit=10", headers=svc.auth).json
    assert {j["id"] for j in l1["jobs"]} == {ids[1], ids[3]}
    assert l1["next"] is None
    classify_all(svc)
    finished = client.get("/api/v1/jobs?status=finished", headers=svc.auth).json
    assert len(finished["jobs"]) == 5
    assert client.get("/api/v1/jobs?status=queued", headers=svc.auth).json["jobs"] == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    response = client.get("/api/v1/jobs", query_string={"since": future}, headers=svc.auth)
    assert response.json["jobs"] == []
    response = client.get("/api/v1/jobs?since=2000-01-01T00:00:00Z", headers=svc.auth)
    assert len(response.json["jobs"]) == 5


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=501", "limit must be between 1 and 500"),
        ("limit=0", "limit must be between 1 and 500"),
        ("limit=ten", "limit must be an integer"),
        ("offset=-1", "offset must be at least 0"),
        ("status=lost", "status must be one of queued, running, finished"),
        ("since=yesterday", "since must be an ISO 8601 time"),
        ("since=2026-01-01T00:00:00", "since must carry a timezone"),
    ],
)
def test_bad_list_parameters_are_400(svc: WebService, query: str, message: str) -> None:
    response = svc.client().get(f"/api/v1/jobs?{query}", headers=svc.auth)
    assert response.status_code == 400
    assert message in response.json["error"]["message"]


def test_results_json_has_one_entry_per_image(svc: WebService) -> None:
    job_id = make_job(svc)
    before = svc.client().get(f"/api/v1/jobs/{job_id}/results", headers=svc.auth).json
    assert [r["status"] for r in before["results"]] == ["queued"] * 3
    assert before["results"][0]["label"] is None
    ids = classify_all(svc, fail_last=True)
    body = svc.client().get(f"/api/v1/jobs/{job_id}/results", headers=svc.auth).json
    first, second, third = body["results"]
    assert [r["image_id"] for r in body["results"]] == ids
    assert [r["filename"] for r in body["results"]] == ["img0.png", "img1.png", "img2.png"]
    assert first == first | {
        "status": "done",
        "error": None,
        "label": "scratch",
        "confidence": 0.8,
        "defect_score": 0.8,
        "is_defect": True,
        "flagged": True,
        "probabilities": {"good": 0.2, "scratch": 0.8},
        "scale_probabilities": {"224": {"good": 0.3, "scratch": 0.7}},
        "model_name": "steel",
        "model_version": 2,
    }
    assert (second["label"], second["flagged"]) == ("pit", False)
    assert third["status"] == "error"
    assert third["error"] == "img2.png: not an image (truncated PNG)"
    assert third["label"] is None


def test_results_csv_has_a_column_per_class_seen(svc: WebService) -> None:
    job_id = make_job(svc)
    classify_all(svc, fail_last=True)
    response = svc.client().get(f"/api/v1/jobs/{job_id}/results?format=csv", headers=svc.auth)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert f"job-{job_id}-results.csv" in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert list(rows[0])[-3:] == ["p_good", "p_pit", "p_scratch"]
    assert [r["filename"] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert (rows[0]["label"], rows[0]["p_scratch"], rows[0]["p_pit"]) == ("scratch", "0.8", "")
    assert (rows[1]["label"], rows[1]["p_pit"], rows[1]["is_defect"]) == ("pit", "0.8", "true")
    assert (rows[2]["status"], rows[2]["label"], rows[2]["p_good"]) == ("error", "", "")
    assert rows[2]["error"].startswith("img2.png: not an image")
    bad = svc.client().get(f"/api/v1/jobs/{job_id}/results?format=xml", headers=svc.auth)
    assert bad.status_code == 400


def test_image_record_and_file(svc: WebService) -> None:
    job_id = make_job(svc, 2)
    ids = classify_all(svc)
    client = svc.client()
    body = client.get(f"/api/v1/images/{ids[1]}", headers=svc.auth).json
    assert (body["image_id"], body["job_id"], body["filename"]) == (ids[1], job_id, "img1.png")
    assert body["sha256"] == hashlib.sha256(png_bytes(1)).hexdigest()
    assert body["size_bytes"] == len(png_bytes(1))
    assert (body["status"], body["result"]["label"]) == ("done", "pit")
    assert body["file_url"] == f"/api/v1/images/{ids[1]}/file"
    with client.get(body["file_url"], headers=svc.auth) as response:
        assert response.status_code == 200
        assert response.mimetype == "image/png"
        assert response.get_data() == png_bytes(1)
    record = q.get_image(svc.engine, ids[1])
    assert record is not None
    os.remove(record.stored_path)
    response = client.get(body["file_url"], headers=svc.auth)
    assert response.status_code == 404
    assert response.json["error"]["code"] == "file_gone"
    for url in ["/api/v1/images/999", "/api/v1/images/999/file"]:
        response = client.get(url, headers=svc.auth)
        assert response.status_code == 404
        assert response.json["error"]["message"] == "no image 999"


def test_image_of_a_paths_job_is_served_from_where_it_lies(tmp_path: Path) -> None:
    root = tmp_path / "line"
    root.mkdir()
    (root / "frame.bmp").write_bytes(b"BM-not-really")
    env = {"INSPECTOR_ALLOWED_ROOTS": str(root)}
    with web_service(tmp_path / "data", environ=env) as svc:
        client = svc.client()
        response = client.post("/api/v1/jobs", json={"paths": [str(root)]}, headers=svc.auth)
        (image,) = q.job_results(svc.engine, response.json["job_id"])
        with client.get(f"/api/v1/images/{image.image_id}/file", headers=svc.auth) as file:
            assert file.get_data() == b"BM-not-really"
            assert file.mimetype in ("image/bmp", "image/x-ms-bmp")


def test_direct_rows_are_readable_too(svc: WebService) -> None:
    """A job written by another intake (the folder watcher) reads the same way."""
    job_id = q.create_job(
        svc.engine,
        source="watch",
        files=[
            NewImage(filename="x.png", stored_path="/gone/x.png", sha256="0" * 64, size_bytes=1)
        ],
    )
    body = svc.client().get(f"/api/v1/jobs/{job_id}", headers=svc.auth).json
    assert (body["source"], body["total"]) == ("watch", 1)
