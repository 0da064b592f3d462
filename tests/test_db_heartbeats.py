"""Workers' heartbeats on both databases: alive while beating, gone when stale or stopped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from inspector.db import heartbeats

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def beat(engine: Engine, worker_id: str, models: list[str], now: datetime) -> None:
    heartbeats.beat(
        engine, worker_id=worker_id, hostname="line-3", pid=42, device="cpu", models=models, now=now
    )


def test_a_beating_worker_is_live_until_it_goes_stale(engine: Engine) -> None:
    beat(engine, "w1", [], T0)
    beat(engine, "w1", ["demo:2"], T0 + timedelta(seconds=5))  # the same row, updated
    live = heartbeats.live_workers(engine, within_seconds=20, now=T0 + timedelta(seconds=10))
    assert [(w.id, w.models, w.started_at, w.pid) for w in live] == [("w1", ("demo:2",), T0, 42)]
    stale = T0 + timedelta(seconds=26)
    assert heartbeats.live_workers(engine, within_seconds=20, now=stale) == []


def test_a_stopped_worker_is_not_live_and_comes_back_when_it_beats(engine: Engine) -> None:
    beat(engine, "w1", ["demo:1"], T0)
    beat(engine, "w2", ["demo:1"], T0 + timedelta(seconds=1))
    heartbeats.stopped(engine, "w1", now=T0 + timedelta(seconds=2))
    now = T0 + timedelta(seconds=3)
    assert [w.id for w in heartbeats.live_workers(engine, within_seconds=20, now=now)] == ["w2"]
    beat(engine, "w1", ["demo:1"], now)
    live = heartbeats.live_workers(engine, within_seconds=20, now=now)
    assert sorted(w.id for w in live) == ["w1", "w2"]
