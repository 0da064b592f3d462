"""Jobs, leases, results, errors and tokens, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, update

from inspector.db import queries as q
from inspector.db.records import NewImage, NewResult
from inspector.db.schema import api_tokens, images, jobs, results
from inspector.errors import ConfigurationError

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def new_images(n: int, prefix: str = "img") -> list[NewImage]:
    return [
        NewImage(
            filename=f"{prefix}{i}.png",
            stored_path=f"/data/uploads/{prefix}{i}.png",
            sha256=hashlib.sha256(f"{prefix}{i}".encode()).hexdigest(),
            size_bytes=100 + i,
        )
        for i in range(n)
    ]


def verdict(image_id: int, *, version: int = 1, defect: bool = False) -> NewResult:
    return NewResult(
        image_id=image_id,
        model_name="steel",
        model_version=version,
        label="scratch" if defect else "good",
        confidence=0.9,
        defect_score=0.8 if defect else 0.1,
        is_defect=defect,
        flagged=defect,
        probabilities={"good": 0.1, "scratch": 0.9} if defect else {"good": 0.9, "scratch": 0.1},
        scale_probabilities={224: {"good": 0.2, "scratch": 0.8}, 256: {"good": 0.0, "scratch": 1}},
    )


def image_rows(engine: Engine, job_id: str) -> list:
    with engine.connect() as conn:
        return list(
            conn.execute(select(images).where(images.c.job_id == job_id).order_by(images.c.id))
        )


def result_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(results)).scalar_one()


def finished_at(engine: Engine, job_id: str) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(select(jobs.c.finished_at).where(jobs.c.id == job_id)).scalar_one()


# -- jobs ----------------------------------------------------------------------------------------
def test_create_job_inserts_the_job_and_its_images(engine: Engine) -> None:
    job_id = q.create_job(
        engine, source="upload", files=new_images(3), line="L1", camera="cam2", priority=4
    )
    assert len(job_id) == 32
    with engine.connect() as conn:
        job = conn.execute(select(jobs)).one()
    assert (job.id, job.source, job.line, job.camera, job.lot) == (
        job_id,
        "upload",
        "L1",
        "cam2",
        None,
    )
    assert (job.priority, job.total_images, job.model_name, job.finished_at) == (4, 3, None, None)
    assert job.created_at.tzinfo == UTC
    rows = image_rows(engine, job_id)
    assert [r.filename for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert {(r.status, r.attempts, r.priority, r.lease_owner) for r in rows} == {
        ("queued", 0, 4, None)
    }
    assert rows[1].stored_path == "/data/uploads/img1.png"
    assert rows[1].size_bytes == 101
    assert q.queue_depth(engine) == 3


def test_create_job_refuses_bad_input_and_writes_nothing(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="unknown job source 'ftp'"):
        q.create_job(engine, source="ftp", files=new_images(1))
    with pytest.raises(ConfigurationError, match="at least one image"):
        q.create_job(engine, source="paths", files=[])
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0


# -- claiming ------------------------------------------------------------------------------------
def test_claim_takes_highest_priority_first_then_oldest(engine: Engine) -> None:
    old = q.create_job(engine, source="paths", files=new_images(3, "old"), model_name="steel")
    urgent = q.create_job(engine, source="camera", files=new_images(2, "urgent"), priority=5)
    first = q.claim_images(engine, worker_id="w1", limit=3, lease_seconds=30, now=T0)
    assert [(c.job_id, c.filename) for c in first] == [
        (urgent, "urgent0.png"),
        (urgent, "urgent1.png"),
        (old, "old0.png"),
    ]
    assert [c.model_name for c in first] == [None, None, "steel"]
    assert {(c.attempts, c.lease_expires_at) for c in first} == {(1, T0 + timedelta(seconds=30))}
    claimed = {r.id: r for r in image_rows(engine, urgent) + image_rows(engine, old)}
    for c in first:
        row = claimed[c.id]
        assert (row.status, row.lease_owner, row.attempts) == ("running", "w1", 1)
        assert row.lease_expires_at == T0 + timedelta(seconds=30)
    with engine.connect() as conn:
        started = dict(conn.execute(select(jobs.c.id, jobs.c.started_at)).all())
    assert started[urgent] is not None
    assert started[old] is not None

    rest = q.claim_images(engine, worker_id="w2", limit=10, lease_seconds=30, now=T0)
    assert [c.filename for c in rest] == ["old1.png", "old2.png"]
    assert q.claim_images(engine, worker_id="w3", limit=10, lease_seconds=30, now=T0) == []
    assert q.queue_depth(engine) == 5


def test_an_expired_lease_is_claimed_again(engine: Engine) -> None:
    job_id = q.create_job(engine, source="paths", files=new_images(1))
    (first,) = q.claim_images(engine, worker_id="w1", limit=1, lease_seconds=10, now=T0)
    later = T0 + timedelta(seconds=5)
    assert q.claim_images(engine, worker_id="w2", limit=1, lease_seconds=10, now=later) == []
    expired = T0 + timedelta(seconds=11)
    (again,) = q.claim_images(engine, worker_id="w2", limit=1, lease_seconds=10, now=expired)
    assert again.id == first.id
    assert again.attempts == 2
    (row,) = image_rows(engine, job_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", "w2", 2)

    # The first worker lost its lease: its verdict is dropped, the new owner's is kept.
    assert q.record_results(engine, worker_id="w1", results=[verdict(first.id)]) == 0
    assert result_count(engine) == 0
    assert q.record_results(engine, worker_id="w2", results=[verdict(first.id)]) == 1
    (row,) = image_rows(engine, job_id)
    assert (row.status, row.lease_owner, row.lease_expires_at) == ("done", None, None)
    assert result_count(engine) == 1


def test_extend_lease_only_for_the_owner(engine: Engine) -> None:
    q.create_job(engine, source="paths", files=new_images(2))
    a, b = q.claim_images(engine, worker_id="w1", limit=2, lease_seconds=10, now=T0)
    later = T0 + timedelta(seconds=8)
    kept = q.extend_lease(engine, worker_id="w1", image_ids=[a.id], lease_seconds=10, now=later)
    assert kept == [a.id]
    assert q.extend_lease(engine, worker_id="w2", image_ids=[b.id], lease_seconds=10) == []
    expired = T0 + timedelta(seconds=12)
    taken = q.claim_images(engine, worker_id="w2", limit=2, lease_seconds=10, now=expired)
    assert [c.id for c in taken] == [b.id]


def test_release_expired_requeues_or_gives_up(engine: Engine) -> None:
    job_id = q.create_job(engine, source="paths", files=new_images(2))
    q.claim_images(engine, worker_id="w1", limit=2, lease_seconds=10, now=T0)
    assert q.release_expired(engine, now=T0 + timedelta(seconds=5)) == 0
    assert q.release_expired(engine, now=T0 + timedelta(seconds=11)) == 2
    rows = image_rows(engine, job_id)
    assert {(r.status, r.lease_owner, r.attempts) for r in rows} == {("queued", None, 1)}

    t1 = T0 + timedelta(minutes=1)
    q.claim_images(engine, worker_id="w1", limit=2, lease_seconds=10, now=t1)
    gone = t1 + timedelta(seconds=11)
    assert q.release_expired(engine, now=gone, max_attempts=2) == 2
    rows = image_rows(engine, job_id)
    assert {r.status for r in rows} == {"error"}
    assert rows[0].error.startswith("failed 2 times: lease expired")
    assert finished_at(engine, job_id) == gone


def test_claim_gives_up_on_images_that_keep_losing_their_worker(engine: Engine) -> None:
    job_id = q.create_job(engine, source="paths", files=new_images(2))
    now = T0
    for _ in range(3):
        q.claim_images(engine, worker_id="crashy", limit=2, lease_seconds=10, now=now)
        now += timedelta(seconds=11)
    taken = q.claim_images(
        engine, worker_id="w2", limit=2, lease_seconds=10, now=now, max_attempts=3
    )
    assert taken == []
    rows = image_rows(engine, job_id)
    assert {(r.status, r.attempts, r.lease_owner) for r in rows} == {("error", 3, None)}
    assert all(r.error.startswith("failed 3 times: lease expired") for r in rows)
    assert finished_at(engine, job_id) == now
    assert q.queue_depth(engine) == 0


# -- results and errors --------------------------------------------------------------------------
def test_results_only_from_the_lease_owner_and_once_per_model_version(engine: Engine) -> None:
    job_id = q.create_job(engine, source="paths", files=new_images(2))
    a, b = q.claim_images(engine, worker_id="w1", limit=2, lease_seconds=60)
    assert q.record_results(engine, worker_id="intruder", results=[verdict(a.id)]) == 0
    assert result_count(engine) == 0

    # The same verdict twice in one batch: one row, no error.
    assert q.record_results(engine, worker_id="w1", results=[verdict(a.id), verdict(a.id)]) == 1
    assert result_count(engine) == 1
    # Already done: a late second verdict is not recorded.
    assert q.record_results(engine, worker_id="w1", results=[verdict(a.id)]) == 0
    assert result_count(engine) == 1

    # Requeued by hand and classified again by the same model version: the database keeps one.
    with engine.begin() as conn:
        conn.execute(update(images).where(images.c.id == a.id).values(status="queued"))
    (again,) = q.claim_images(engine, worker_id="w2", limit=1, lease_seconds=60)
    assert again.id == a.id
    assert q.record_results(engine, worker_id="w2", results=[verdict(a.id)]) == 1
    assert result_count(engine) == 1
    with engine.connect() as conn:
        stored = conn.execute(select(results).where(results.c.image_id == a.id)).one()
    assert (stored.model_name, stored.model_version, stored.label) == ("steel", 1, "good")
    assert stored.probabilities == {"good": 0.9, "scratch": 0.1}
    assert stored.scale_probabilities == {
        "224": {"good": 0.2, "scratch": 0.8},
        "256": {"good": 0.0, "scratch": 1.0},
    }
    assert [r.status for r in image_rows(engine, job_id)] == ["done", "running"]
    assert b.id != a.id


def test_a_job_finishes_with_its_last_image(engine: Engine) -> None:
    job_id = q.create_job(engine, source="inspect", files=new_images(3))
    a, b, c = q.claim_images(engine, worker_id="w1", limit=3, lease_seconds=60, now=T0)
    t1 = T0 + timedelta(seconds=1)
    q.record_results(engine, worker_id="w1", results=[verdict(a.id), verdict(b.id, defect=True)])
    assert finished_at(engine, job_id) is None
    summary = q.job_summary(engine, job_id)
    assert summary is not None
    assert (summary.status, summary.done, summary.running, summary.finished_at) == (
        "running",
        2,
        1,
        None,
    )
    recorded = q.record_errors(
        engine,
        worker_id="w1",
        errors=[(c.id, "truncated PNG")],
        max_attempts=3,
        permanent=True,
        now=t1,
    )
    assert recorded == 1
    assert finished_at(engine, job_id) == t1
    summary = q.job_summary(engine, job_id)
    assert summary is not None
    assert summary.status == "finished"
    assert (summary.total, summary.queued, summary.running, summary.done, summary.error) == (
        3,
        0,
        0,
        2,
        1,
    )
    assert (summary.defects, summary.flagged) == (1, 1)
    assert summary.started_at == T0
    assert summary.to_dict()["counts"] == {"queued": 0, "running": 0, "done": 2, "error": 1}


def test_permanent_and_transient_errors(engine: Engine) -> None:
    job_id = q.create_job(engine, source="paths", files=new_images(2))
    bad, flaky = q.claim_images(engine, worker_id="w1", limit=2, lease_seconds=60)
    assert (
        q.record_errors(
            engine,
            worker_id="w1",
            errors=[(bad.id, "not an image: empty file")],
            max_attempts=3,
            permanent=True,
        )
        == 1
    )
    row = {r.id: r for r in image_rows(engine, job_id)}[bad.id]
    assert (row.status, row.error, row.attempts, row.lease_owner) == (
        "error",
        "not an image: empty file",
        1,
        None,
    )

    for attempt in (1, 2):
        assert q.record_errors(
            engine,
            worker_id="w1",
            errors=[(flaky.id, f"CUDA out of memory #{attempt}")],
            max_attempts=3,
            permanent=False,
        )
        row = {r.id: r for r in image_rows(engine, job_id)}[flaky.id]
        assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == (
            "queued",
            attempt,
            None,
            None,
        )
        assert row.error == f"CUDA out of memory #{attempt}"
        assert finished_at(engine, job_id) is None
        (again,) = q.claim_images(engine, worker_id="w1", limit=1, lease_seconds=60)
        assert again.id == flaky.id

    assert (
        q.record_errors(
            engine, worker_id="other", errors=[(flaky.id, "x")], max_attempts=3, permanent=True
        )
        == 0
    )
    q.record_errors(
        engine,
        worker_id="w1",
        errors=[(flaky.id, "CUDA out of memory #3")],
        max_attempts=3,
        permanent=False,
    )
    row = {r.id: r for r in image_rows(engine, job_id)}[flaky.id]
    assert (row.status, row.attempts) == ("error", 3)
    assert row.error == "failed 3 times: CUDA out of memory #3"
    assert finished_at(engine, job_id) is not None
    assert q.claim_images(engine, worker_id="w1", limit=5, lease_seconds=60) == []


# -- reading -------------------------------------------------------------------------------------
def test_job_results_get_image_and_listing(engine: Engine) -> None:
    a_job = q.create_job(engine, source="upload", files=new_images(2, "a"), line="L1")
    b_job = q.create_job(engine, source="watch", files=new_images(1, "b"), line="L2")
    a0, a1, b0 = sorted(
        q.claim_images(engine, worker_id="w", limit=3, lease_seconds=60), key=lambda c: c.id
    )
    q.record_results(engine, worker_id="w", results=[verdict(a0.id, defect=True)])

    entries = q.job_results(engine, a_job)
    assert [(e.filename, e.status) for e in entries] == [("a0.png", "done"), ("a1.png", "running")]
    assert entries[1].result is None
    stored = entries[0].result
    assert stored is not None
    assert (stored.label, stored.is_defect, stored.flagged, stored.model_version) == (
        "scratch",
        True,
        True,
        1,
    )
    assert stored.probabilities == {"good": 0.1, "scratch": 0.9}
    assert stored.scale_probabilities["224"] == {"good": 0.2, "scratch": 0.8}
    assert stored.created_at.tzinfo == UTC
    assert q.job_results(engine, "f" * 32) == []

    # A second model version on the same image: the newest verdict is the one shown.
    with engine.begin() as conn:
        conn.execute(update(images).where(images.c.id == a0.id).values(status="queued"))
    q.claim_images(engine, worker_id="w", limit=1, lease_seconds=60)
    q.record_results(engine, worker_id="w", results=[verdict(a0.id, version=2)])
    newest = q.job_results(engine, a_job)[0].result
    assert newest is not None
    assert (newest.model_version, newest.is_defect) == (2, False)
    assert result_count(engine) == 2
    summary = q.job_summary(engine, a_job)
    assert summary is not None
    assert summary.defects == 0

    image = q.get_image(engine, a1.id)
    assert image is not None
    assert (image.job_id, image.filename, image.status, image.lease_owner) == (
        a_job,
        "a1.png",
        "running",
        "w",
    )
    assert image.updated_at.tzinfo == UTC
    assert q.get_image(engine, 10_000) is None
    assert q.job_summary(engine, "f" * 32) is None

    q.record_results(engine, worker_id="w", results=[verdict(b0.id)])
    listed = q.list_jobs(engine, limit=10)
    assert [j.id for j in listed] == [b_job, a_job]
    assert [j.id for j in q.list_jobs(engine, limit=1, offset=1)] == [a_job]
    assert [j.id for j in q.list_jobs(engine, limit=10, status="finished")] == [b_job]
    assert [j.id for j in q.list_jobs(engine, limit=10, status="running")] == [a_job]
    assert q.list_jobs(engine, limit=10, status="queued") == []
    assert [j.id for j in q.list_jobs(engine, limit=10, line="L1")] == [a_job]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert q.list_jobs(engine, limit=10, since=future) == []
    assert len(q.list_jobs(engine, limit=10, since=future - timedelta(days=1))) == 2
    with pytest.raises(ConfigurationError, match="unknown job status 'done'"):
        q.list_jobs(engine, limit=10, status="done")
    assert (listed[0].done, listed[1].done, listed[1].running) == (1, 1, 1)


# -- tokens --------------------------------------------------------------------------------------
def test_tokens(engine: Engine) -> None:
    token = q.create_token(engine, "camera-3")
    assert len(token) >= 40
    with engine.connect() as conn:
        row = conn.execute(select(api_tokens)).one()
    assert row.name == "camera-3"
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.name)
    assert row.last_used_at is None

    now = datetime.now(UTC)
    assert q.verify_token(engine, token, now=now) == "camera-3"
    with engine.connect() as conn:
        assert conn.execute(select(api_tokens.c.last_used_at)).scalar_one() == now
    assert q.verify_token(engine, token + "x") is None
    with pytest.raises(ConfigurationError, match="active token named 'camera-3' already exists"):
        q.create_token(engine, "camera-3")

    assert q.revoke_token(engine, "camera-3") is True
    assert q.verify_token(engine, token) is None
    assert q.revoke_token(engine, "camera-3") is False
    assert q.revoke_token(engine, "nobody") is False

    rotated = q.create_token(engine, "camera-3")
    assert rotated != token
    assert q.verify_token(engine, rotated) == "camera-3"
    assert q.verify_token(engine, token) is None
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(api_tokens)).scalar_one() == 1
