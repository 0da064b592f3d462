"""Intake through the API: uploads, paths, limits, the wake-up and /inspect."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from inspector.db import queries as q
from inspector.db.records import NewResult
from web.testing import WebService, png_bytes, web_service


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[WebService]:
    with web_service(tmp_path / "data") as service:
        yield service


def upload(*files: tuple[str, bytes], field: str = "files", **form: str) -> dict:
    data: dict = dict(form)
    data[field] = [(io.BytesIO(content), name) for name, content in files]
    return data


def verdict(image_id: int) -> NewResult:
    return NewResult(
        image_id=image_id,
        model_name="steel",
        model_version=3,
        label="scratch",
        confidence=0.93,
        defect_score=0.88,
        is_defect=True,
        flagged=False,
        probabilities={"good": 0.07, "scratch": 0.93},
        scale_probabilities={224: {"good": 0.1, "scratch": 0.9}},
    )


# -- uploads -------------------------------------------------------------------------------------
def test_upload_of_three_files_writes_one_job_and_the_files(svc: WebService) -> None:
    pngs = [png_bytes(i) for i in range(3)]
    names = ["a.png", "../../etc/b.png", "c d.png"]
    response = svc.client().post(
        "/api/v1/jobs",
        data=upload(*zip(names, pngs, strict=True), line="L1", camera="cam-2", priority="5"),
        headers=svc.auth,
    )
    assert response.status_code == 202, response.json
    body = response.json
    assert body["images"] == 3
    assert body["status_url"] == f"/api/v1/jobs/{body['job_id']}"
    assert response.headers["Location"] == body["status_url"]

    images = q.job_results(svc.engine, body["job_id"])
    assert [i.filename for i in images] == names  # the original names are kept
    assert [i.status for i in images] == ["queued"] * 3
    assert [i.sha256 for i in images] == [hashlib.sha256(p).hexdigest() for p in pngs]
    images_dir = svc.settings.data_dir / "images"
    stored_names = []
    for image, content in zip(images, pngs, strict=True):
        record = q.get_image(svc.engine, image.image_id)
        assert record is not None
        stored = Path(record.stored_path)
        assert stored.parent.parent == images_dir  # no escape through "../"
        assert stored.read_bytes() == content
        assert record.size_bytes == len(content)
        stored_names.append(stored.name)
    assert stored_names == ["0_a.png", "1_etc_b.png", "2_c_d.png"]
    job = q.job_summary(svc.engine, body["job_id"])
    assert job is not None
    assert (job.source, job.line, job.camera, job.priority, job.total) == (
        "upload",
        "L1",
        "cam-2",
        5,
        3,
    )


def test_single_file_field_and_empty_upload_are_accepted(svc: WebService) -> None:
    response = svc.client().post(
        "/api/v1/jobs", data=upload(("empty.png", b""), field="file"), headers=svc.auth
    )
    assert response.status_code == 202
    (image,) = q.job_results(svc.engine, response.json["job_id"])
    assert image.filename == "empty.png"
    assert image.sha256 == hashlib.sha256(b"").hexdigest()


def test_enqueue_is_called_once_with_the_job_id(tmp_path: Path) -> None:
    woken: list[str] = []
    with web_service(tmp_path, enqueue=woken.append) as svc:
        response = svc.client().post(
            "/api/v1/jobs", data=upload(("a.png", png_bytes())), headers=svc.auth
        )
    assert response.status_code == 202
    assert woken == [response.json["job_id"]]


def test_failing_enqueue_still_answers_202_and_keeps_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(job_id: str) -> None:
        raise ConnectionError("broker down")

    with web_service(tmp_path, enqueue=broken) as svc:
        response = svc.client().post(
            "/api/v1/jobs", data=upload(("a.png", png_bytes())), headers=svc.auth
        )
        assert response.status_code == 202
        assert q.job_summary(svc.engine, response.json["job_id"]) is not None
    assert "broker down" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data": {"line": "L1"}, "content_type": "multipart/form-data"}, "no files"),
        ({"data": {"line": "L1"}}, "unsupported content type"),
        ({"data": upload(("", b""))}, "no files"),  # a file input left empty
        ({"data": upload(("a.png", b"x"), priority="high")}, "priority must be an integer"),
        ({"data": upload(("a.png", b"x"), colour="red")}, "unknown field(s) 'colour'"),
        ({"data": upload(("a.png", b"x"), field="image")}, "unexpected file field(s) 'image'"),
        ({"data": "x", "content_type": "text/plain"}, "unsupported content type"),
        ({"data": "{not json", "content_type": "application/json"}, "not valid JSON"),
        ({"json": ["/a.png"]}, "must be an object"),
        ({"json": {"paths": []}}, "non-empty list of strings"),
        ({"json": {"paths": "/a.png"}}, "non-empty list of strings"),
        ({"json": {"paths": ["/a"], "priority": "high"}}, "priority must be an integer"),
        ({"json": {"paths": ["/a"], "priority": True}}, "priority must be an integer"),
        ({"json": {"paths": ["/a"], "line": 7}}, "line must be a string"),
        ({"json": {"paths": ["/a"], "lot": "x" * 129}}, "at most 128 characters"),
        ({"json": {"paths": ["/a"], "extra": 1}}, "unknown field(s) 'extra'"),
    ],
)
def test_malformed_intake_is_400_saying_what_was_expected(
    svc: WebService, kwargs: dict, message: str
) -> None:
    response = svc.client().post("/api/v1/jobs", headers=svc.auth, **kwargs)
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "bad_request"
    assert message in response.json["error"]["message"]
    assert q.list_jobs(svc.engine) == []
    assert not (svc.settings.data_dir / "images").exists() or not any(
        (svc.settings.data_dir / "images").iterdir()
    )


def test_oversized_upload_is_413_json(tmp_path: Path) -> None:
    with web_service(tmp_path, environ={"INSPECTOR_MAX_UPLOAD_BYTES": "2000"}) as svc:
        response = svc.client().post(
            "/api/v1/jobs", data=upload(("big.png", b"x" * 5000)), headers=svc.auth
        )
        assert response.status_code == 413
        assert response.json["error"]["code"] == "request_entity_too_large"
        assert q.list_jobs(svc.engine) == []


def test_full_queue_is_503_with_retry_after(tmp_path: Path) -> None:
    with web_service(tmp_path, environ={"INSPECTOR_MAX_QUEUE_DEPTH": "3"}) as svc:
        client = svc.client()
        two = upload(("a.png", b"a"), ("b.png", b"b"))
        assert client.post("/api/v1/jobs", data=two, headers=svc.auth).status_code == 202
        two = upload(("a.png", b"a"), ("b.png", b"b"))
        response = client.post("/api/v1/jobs", data=two, headers=svc.auth)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "30"
        assert response.json["error"]["code"] == "queue_full"
        assert len(q.list_jobs(svc.engine)) == 1
        assert len(list((svc.settings.data_dir / "images").iterdir())) == 1  # no files left
        one = upload(("c.png", b"c"))
        assert client.post("/api/v1/jobs", data=one, headers=svc.auth).status_code == 202
        four = upload(*[(f"{i}.png", b"x") for i in range(4)])
        response = client.post("/api/v1/jobs", data=four, headers=svc.auth)
        assert response.status_code == 413  # could never fit: retrying would not help
        assert response.json["error"]["code"] == "job_too_large"


# -- paths ---------------------------------------------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed root with images in nested folders, and a folder outside it."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder, name, seed in [
        (allowed / "lot1", "a.png", 1),
        (allowed / "lot1" / "deep", "b.jpg", 2),
        (allowed / "lot1", "notes.txt", 3),
        (allowed / "lot1", ".hidden.png", 4),
        (outside, "secret.png", 5),
    ]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(png_bytes(seed))
    return allowed, outside


@pytest.fixture
def paths_svc(tmp_path: Path, roots: tuple[Path, Path]) -> Iterator[WebService]:
    other = tmp_path / "other-root"
    other.mkdir()
    env = {"INSPECTOR_ALLOWED_ROOTS": os.pathsep.join([str(roots[0]), str(other)])}
    with web_service(tmp_path / "data", environ=env) as svc:
        yield svc


def test_paths_walk_a_folder_and_reference_files_in_place(
    paths_svc: WebService, roots: tuple[Path, Path]
) -> None:
    allowed = roots[0]
    response = paths_svc.client().post(
        "/api/v1/jobs",
        json={"paths": [str(allowed / "lot1"), str(allowed / "lot1" / "a.png")], "lot": "L7"},
        headers=paths_svc.auth,
    )
    assert response.status_code == 202, response.json
    assert response.json["images"] == 2  # a.png named twice is taken once; .txt/.hidden skipped
    images = q.job_results(paths_svc.engine, response.json["job_id"])
    assert [i.filename for i in images] == ["a.png", os.path.join("deep", "b.jpg")]
    record = q.get_image(paths_svc.engine, images[1].image_id)
    assert record is not None
    assert record.stored_path == str(allowed / "lot1" / "deep" / "b.jpg")
    assert record.sha256 == hashlib.sha256(png_bytes(2)).hexdigest()
    job = q.job_summary(paths_svc.engine, response.json["job_id"])
    assert job is not None and (job.source, job.lot) == ("paths", "L7")
    assert not (paths_svc.settings.data_dir / "images").exists()  # nothing copied


def test_paths_outside_the_roots_are_422_naming_the_path(
    paths_svc: WebService, roots: tuple[Path, Path]
) -> None:
    allowed, outside = roots
    (allowed / "lot1" / "link.png").symlink_to(outside / "secret.png")
    (allowed / "escape").symlink_to(outside)
    cases = {
        str(outside / "secret.png"): "outside the allowed roots",
        str(allowed / ".." / "outside" / "secret.png"): "outside the allowed roots",
        str(allowed / "lot1" / "link.png"): "outside the allowed roots",
        str(allowed / "escape"): "outside the allowed roots",
        str(allowed / "lot1"): "link to a file outside",  # the symlinked file inside the walk
        "relative/a.png": "must be an absolute path",
        str(allowed / "missing.png"): "does not exist",
    }
    for path, reason in cases.items():
        response = paths_svc.client().post(
            "/api/v1/jobs", json={"paths": [path]}, headers=paths_svc.auth
        )
        assert response.status_code == 422, (path, response.json)
        message = response.json["error"]["message"]
        assert reason in message and ("link.png" in message or path in message), message
    assert q.list_jobs(paths_svc.engine) == []


def test_paths_are_refused_when_no_roots_are_configured(
    svc: WebService, roots: tuple[Path, Path]
) -> None:
    response = svc.client().post(
        "/api/v1/jobs", json={"paths": [str(roots[0] / "lot1" / "a.png")]}, headers=svc.auth
    )
    assert response.status_code == 422
    assert "INSPECTOR_ALLOWED_ROOTS" in response.json["error"]["message"]


def test_a_folder_without_images_is_422(tmp_path: Path, paths_svc: WebService) -> None:
    empty = tmp_path / "other-root" / "empty"
    empty.mkdir()
    response = paths_svc.client().post(
        "/api/v1/jobs", json={"paths": [str(empty)]}, headers=paths_svc.auth
    )
    assert response.status_code == 422
    assert "holds no image files" in response.json["error"]["message"]


# -- inspect -------------------------------------------------------------------------------------
def test_inspect_without_a_worker_times_out_with_202(tmp_path: Path) -> None:
    with web_service(tmp_path, environ={"INSPECTOR_INSPECT_TIMEOUT": "0.2"}) as svc:
        started = time.monotonic()
        response = svc.client().post(
            "/api/v1/inspect", data=upload(("a.png", png_bytes()), field="file"), headers=svc.auth
        )
        assert 0.2 <= time.monotonic() - started < 2
        assert response.status_code == 202
        job = q.job_summary(svc.engine, response.json["job_id"])
        assert job is not None and job.source == "inspect" and job.total == 1
        assert response.headers["Location"] == f"/api/v1/jobs/{job.id}"


def test_inspect_answers_200_with_the_verdict_a_worker_records(tmp_path: Path) -> None:
    with web_service(tmp_path, environ={"INSPECTOR_INSPECT_TIMEOUT": "10"}) as svc:
        stop = threading.Event()
        recorded: list[int] = []

        def worker() -> None:
            while not stop.is_set():
                claimed = q.claim_images(svc.engine, worker_id="w1", limit=4, lease_seconds=30)
                if claimed:
                    ids = [c.id for c in claimed]
                    q.record_results(svc.engine, worker_id="w1", results=[verdict(i) for i in ids])
                    recorded.extend(ids)
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            response = svc.client().post(
                "/api/v1/inspect",
                data=upload(("part.png", png_bytes()), field="file", line="L2"),
                headers=svc.auth,
            )
        finally:
            stop.set()
            thread.join()
        assert response.status_code == 200, response.json
        body = response.json
        assert [body["image_id"]] == recorded
        assert (body["status"], body["label"], body["is_defect"]) == ("done", "scratch", True)
        assert body["probabilities"] == {"good": 0.07, "scratch": 0.93}
        assert (body["model_name"], body["model_version"]) == ("steel", 3)
        assert body["filename"] == "part.png"


def test_inspect_takes_exactly_one_file(svc: WebService) -> None:
    two = upload(("a.png", b"a"), ("b.png", b"b"), field="file")
    response = svc.client().post("/api/v1/inspect", data=two, headers=svc.auth)
    assert response.status_code == 400
    assert "exactly one image" in response.json["error"]["message"]
    response = svc.client().post("/api/v1/inspect", json={"paths": ["/a"]}, headers=svc.auth)
    assert response.status_code == 400


def test_a_job_that_cannot_be_written_leaves_no_files(
    svc: WebService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def database_down(*args: object, **kwargs: object) -> str:
        raise OperationalError("INSERT INTO jobs", {}, Exception("disk full"))

    monkeypatch.setattr(q, "create_job", database_down)
    response = svc.client().post(
        "/api/v1/jobs", data=upload(("a.png", png_bytes())), headers=svc.auth
    )
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_unavailable"
    assert list((svc.settings.data_dir / "images").iterdir()) == []
