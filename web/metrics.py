"""Prometheus metrics of one app, on a registry of its own (several apps can share a process).

Request counts and latencies come from request hooks; intake counters from the API; queue
gauges are read from the database at scrape time, so they are right whichever process wrote.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from inspector.db import heartbeats
from inspector.db.engine import READ_ONLY
from inspector.db.schema import IMAGE_STATUSES, OPEN_STATUSES, images, utcnow
from inspector.sources import camera_db

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


class DatabaseCollector(Collector):
    """Queue depth and images by status, counted when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:  # without it, registering would query the database
        return [
            GaugeMetricFamily("inspector_database_up", ""),
            GaugeMetricFamily("inspector_queue_depth", ""),
            GaugeMetricFamily("inspector_images", "", labels=["status"]),
            GaugeMetricFamily("inspector_workers_alive", ""),
        ]

    def _counts(self) -> dict[str, int]:
        # A plain query here rather than in inspector.db.queries, which has no count by status
        # yet; it belongs there (image_counts) when the core next changes.
        with self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                rows = conn.execute(
                    select(images.c.status, func.count()).group_by(images.c.status)
                ).all()
        return {str(status): int(n) for status, n in rows}

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("inspector_database_up", "Whether the database answered the scrape")
        try:
            counts = self._counts()
        except SQLAlchemyError as exc:
            log.warning("metrics: database did not answer: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        depth = GaugeMetricFamily(
            "inspector_queue_depth", "Images queued or being classified (all jobs)"
        )
        depth.add_metric([], sum(counts.get(s, 0) for s in OPEN_STATUSES))
        by_status = GaugeMetricFamily(
            "inspector_images", "Images in the database by status", labels=["status"]
        )
        for status in IMAGE_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        alive = GaugeMetricFamily(
            "inspector_workers_alive",
            "Workers with a model loaded that reported in the last "
            f"{heartbeats.STALE_SECONDS:.0f} s",
        )
        try:
            live = heartbeats.live_workers(self.engine, within_seconds=heartbeats.STALE_SECONDS)
        except SQLAlchemyError as exc:
            log.warning("metrics: workers not readable: %s", exc)
            return [up, depth, by_status]
        alive.add_metric([], sum(1 for w in live if w.models))
        return [up, depth, by_status, alive]


class CameraCollector(Collector):
    """Each camera's state as its capture process last wrote it, read when Prometheus scrapes
    (the cameras run in the ``inspector watch`` process, not here)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def describe(self) -> Iterable[Metric]:  # without it, registering would query the database
        return [
            GaugeMetricFamily("inspector_camera_connected", "", labels=["camera"]),
            CounterMetricFamily("inspector_camera_frames_captured", "", labels=["camera"]),
            CounterMetricFamily("inspector_camera_frames_read", "", labels=["camera"]),
            CounterMetricFamily("inspector_camera_errors", "", labels=["camera"]),
            GaugeMetricFamily("inspector_camera_seconds_since_last_frame", "", labels=["camera"]),
        ]

    def collect(self) -> Iterable[Metric]:
        try:
            states = camera_db.list_cameras(self.engine)
        except SQLAlchemyError as exc:  # inspector_database_up says so already
            log.debug("metrics: cameras not read: %s", exc)
            return []
        now = utcnow()
        connected = GaugeMetricFamily(
            "inspector_camera_connected",
            "Whether the camera delivers frames (0 when its capture process is stopped or lost)",
            labels=["camera"],
        )
        captured = CounterMetricFamily(
            "inspector_camera_frames_captured",
            "Frames stored as images (jobs), over all runs",
            labels=["camera"],
        )
        read = CounterMetricFamily(
            "inspector_camera_frames_read", "Frames read from the camera", labels=["camera"]
        )
        errors = CounterMetricFamily(
            "inspector_camera_errors",
            "Failed opens, dropped streams, frames not stored, triggers not served",
            labels=["camera"],
        )
        since = GaugeMetricFamily(
            "inspector_camera_seconds_since_last_frame",
            "Seconds since the camera's last frame was read (absent before its first)",
            labels=["camera"],
        )
        for state in states:
            labels = [state.id]
            connected.add_metric(labels, 1 if state.is_connected(now) else 0)
            captured.add_metric(labels, state.frames_captured)
            read.add_metric(labels, state.frames_read)
            errors.add_metric(labels, state.errors)
            seconds = state.seconds_since_last_frame(now)
            if seconds is not None:
                since.add_metric(labels, seconds)
        return [connected, captured, read, errors, since]


class WebMetrics:
    """The metrics of one app and the registry they are exposed from."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "inspector_http_requests",
            "HTTP requests answered, by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "inspector_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint",
            ["endpoint", "method"],
            registry=self.registry,
        )
        self.images_accepted = Counter(
            "inspector_images_accepted",
            "Images accepted into new jobs, by job source",
            ["source"],
            registry=self.registry,
        )
        self.jobs_created = Counter(
            "inspector_jobs_created", "Jobs created, by source", ["source"], registry=self.registry
        )
        self.registry.register(DatabaseCollector(engine))
        self.registry.register(CameraCollector(engine))

    def job_created(self, source: str, n_images: int) -> None:
        self.jobs_created.labels(source=source).inc()
        self.images_accepted.labels(source=source).inc(n_images)

    def init_app(self, app: Flask) -> None:
        """Time every request; the endpoint label is the route's name, never the raw path."""

        @app.before_request
        def _start_timer() -> None:
            g.metrics_started = time.perf_counter()

        @app.after_request
        def _observe(response: Response) -> Response:
            started = g.pop("metrics_started", None)
            endpoint = request.endpoint or "unmatched"
            self.requests.labels(endpoint, request.method, str(response.status_code)).inc()
            if started is not None:
                self.latency.labels(endpoint, request.method).observe(time.perf_counter() - started)
            return response


@bp.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions["inspector"].metrics.registry
    return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)
