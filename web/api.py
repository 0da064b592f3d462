"""The REST API under /api/v1: intake (jobs, inspect) and reads (jobs, results, images).

Views write a job in one transaction, wake the workers and answer 202 at once; only
/inspect waits, briefly, for its one verdict.
"""

from __future__ import annotations

import csv
import io
import logging
import mimetypes
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, g, jsonify, request, send_file, url_for
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest

from inspector.db import queries
from inspector.db.records import ImageRecord, ImageResult, JobSummary, NewImage
from web.errors import ApiError, bad_request, not_found
from web.intake import (
    MAX_FILENAME_CHARS,
    PathRefused,
    new_intake_folder,
    remove_intake_folder,
    resolve_paths,
    store_uploads,
)
from web.state import web_state

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

OPENAPI_FILE = Path(__file__).with_name("openapi.json")
INSPECT_POLL_SECONDS = 0.05
QUEUE_FULL_RETRY_AFTER = 30  # seconds
DEFAULT_PAGE = 50
MAX_PAGE = 500
TEXT_FIELDS = {"line": 128, "camera": 128, "lot": 128, "model": 64}  # the columns' widths
JSON_JOB_FIELDS = frozenset({"paths", "priority", *TEXT_FIELDS})
FORM_JOB_FIELDS = frozenset({"priority", *TEXT_FIELDS})
INT32 = (-(2**31), 2**31 - 1)
EXPECTED_INTAKE = (
    "expected multipart/form-data with one or more files under 'files' (or 'file'), "
    'or application/json {"paths": [...]}'
)


# -- authentication ------------------------------------------------------------------------------
@bp.before_request
def require_token() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "unauthorized",
            "missing API token: send the header 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="inspector"'},
        )
    name = queries.verify_token(web_state().engine, token)
    if name is None:
        raise ApiError(
            401,
            "unauthorized",
            "invalid or revoked API token",
            headers={"WWW-Authenticate": 'Bearer realm="inspector", error="invalid_token"'},
        )
    g.token_name = name


# -- intake --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFields:
    """What a request says about its job besides the images."""

    line: str | None = None
    camera: str | None = None
    lot: str | None = None
    priority: int = 0
    model: str | None = None


def _priority(value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise bad_request(f"priority must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"priority must be an integer, got {value!r}")
    if not INT32[0] <= value <= INT32[1]:
        raise bad_request(f"priority must be between {INT32[0]} and {INT32[1]}, got {value}")
    return value


def _job_fields(values: Mapping[str, object], allowed: frozenset[str]) -> JobFields:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise bad_request(
            f"unknown field(s) {', '.join(map(repr, unknown))}: "
            f"expected {', '.join(sorted(allowed))}"
        )
    text: dict[str, str | None] = {}
    for name, width in TEXT_FIELDS.items():
        value = values.get(name)
        if value is None or value == "":
            text[name] = None
        elif not isinstance(value, str):
            raise bad_request(f"{name} must be a string, got {value!r}")
        elif len(value) > width:
            raise bad_request(f"{name} must be at most {width} characters, got {len(value)}")
        else:
            text[name] = value
    priority = _priority(values["priority"]) if values.get("priority") not in (None, "") else 0
    return JobFields(priority=priority, **text)


def _form_fields() -> JobFields:
    form = request.form
    repeated = sorted(k for k in form if len(form.getlist(k)) > 1)
    if repeated:
        raise bad_request(f"field(s) {', '.join(map(repr, repeated))} given more than once")
    return _job_fields(form.to_dict(), FORM_JOB_FIELDS)


def _uploads(*fields: str) -> list[FileStorage]:
    # A file input left empty arrives as a part with no filename: not an image, just nothing.
    uploads = [f for name in fields for f in request.files.getlist(name) if f.filename]
    unknown = sorted(set(request.files) - set(fields))
    if unknown:
        raise bad_request(
            f"unexpected file field(s) {', '.join(map(repr, unknown))}: "
            f"send files under {' or '.join(map(repr, fields))}"
        )
    for upload in uploads:
        if len(upload.filename or "") > MAX_FILENAME_CHARS:
            raise bad_request(f"file name longer than {MAX_FILENAME_CHARS} characters")
    return uploads


def _check_capacity(n_images: int) -> None:
    """Refuse a job the queue has no room for: 503 with Retry-After (or 413 if it never will)."""
    limit = web_state().web.max_queue_depth
    if n_images > limit:
        raise ApiError(
            413,
            "job_too_large",
            f"a job of {n_images} images exceeds INSPECTOR_MAX_QUEUE_DEPTH={limit}: split it",
        )
    depth = queries.queue_depth(web_state().engine)
    if depth + n_images > limit:
        raise ApiError(
            503,
            "queue_full",
            f"queue full: {depth} images waiting, {n_images} more would exceed "
            f"INSPECTOR_MAX_QUEUE_DEPTH={limit}; retry later",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER)},
        )


def _insert_job(source: str, fields: JobFields, files: Sequence[NewImage]) -> str:
    """The one write: the job and all its images, in one transaction."""
    return queries.create_job(
        web_state().engine,
        source=source,
        files=files,
        line=fields.line,
        camera=fields.camera,
        lot=fields.lot,
        priority=fields.priority,
        model_name=fields.model,
    )


def _announce(job_id: str, source: str, n_images: int) -> None:
    """Count the job and wake the workers; the job stands whether or not the wake-up works."""
    state = web_state()
    state.metrics.job_created(source, n_images)
    log.info("job %s: %d images from %s (token %s)", job_id, n_images, source, g.get("token_name"))
    try:
        state.enqueue(job_id)
    except Exception as exc:  # the database is the truth: polling workers will find the job
        log.warning(
            "job %s: could not wake the workers (%s); they will find it by polling", job_id, exc
        )


def _create_from_uploads(source: str, uploads: Sequence[FileStorage], fields: JobFields) -> str:
    _check_capacity(len(uploads))
    folder = new_intake_folder(web_state().settings.data_dir)
    try:
        job_id = _insert_job(source, fields, store_uploads(uploads, folder))
    except BaseException:  # no job, so no files: nothing half-written stays behind
        remove_intake_folder(folder)
        raise
    _announce(job_id, source, len(uploads))
    return job_id


def _create_from_paths(body: Mapping[str, Any], fields: JobFields) -> tuple[str, int]:
    paths = body.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise bad_request(f'"paths" must be a non-empty list of strings, got {paths!r}')
    try:
        found = resolve_paths(paths, web_state().web.allowed_roots)
    except PathRefused as exc:
        raise ApiError(422, "path_refused", str(exc)) from None
    _check_capacity(len(found))
    job_id = _insert_job("paths", fields, found)
    _announce(job_id, "paths", len(found))
    return job_id, len(found)


def _accepted(job_id: str, n_images: int) -> Response:
    status_url = url_for("api.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "images": n_images, "status_url": status_url})
    response.status_code = 202
    response.headers["Location"] = status_url
    return response


def _json_body() -> dict[str, Any]:
    try:
        body = request.get_json()
    except BadRequest:
        raise bad_request("the body is not valid JSON: " + EXPECTED_INTAKE) from None
    if not isinstance(body, dict):
        raise bad_request(f"the JSON body must be an object, got {type(body).__name__}")
    return body


@bp.post("/jobs")
def create_job() -> Response:
    if request.is_json:
        body = _json_body()
        fields = _job_fields(body, JSON_JOB_FIELDS)
        return _accepted(*_create_from_paths(body, fields))
    if request.mimetype != "multipart/form-data":
        raise bad_request(f"unsupported content type {request.mimetype!r}: {EXPECTED_INTAKE}")
    uploads = _uploads("files", "file")
    if not uploads:
        raise bad_request(f"no files in the request: {EXPECTED_INTAKE}")
    fields = _form_fields()
    return _accepted(_create_from_uploads("upload", uploads, fields), len(uploads))


def _result_entry(image: ImageResult) -> dict[str, Any]:
    verdict = image.result
    return {
        "image_id": image.image_id,
        "filename": image.filename,
        "sha256": image.sha256,
        "status": image.status,
        "attempts": image.attempts,
        "error": image.error,
        "label": verdict.label if verdict else None,
        "confidence": verdict.confidence if verdict else None,
        "defect_score": verdict.defect_score if verdict else None,
        "is_defect": verdict.is_defect if verdict else None,
        "flagged": verdict.flagged if verdict else None,
        "probabilities": verdict.probabilities if verdict else None,
        "scale_probabilities": verdict.scale_probabilities if verdict else None,
        "model_name": verdict.model_name if verdict else None,
        "model_version": verdict.model_version if verdict else None,
        "classified_at": verdict.created_at.isoformat() if verdict else None,
    }


@bp.post("/inspect")
def inspect_image() -> Response:
    """One image, classified while the client waits (up to INSPECTOR_INSPECT_TIMEOUT)."""
    if request.mimetype != "multipart/form-data":
        raise bad_request(
            f"unsupported content type {request.mimetype!r}: "
            "expected multipart/form-data with one image under 'file'"
        )
    uploads = _uploads("file", "files")
    if len(uploads) != 1:
        raise bad_request(f"expected exactly one image under 'file', got {len(uploads)}")
    fields = _form_fields()
    job_id = _create_from_uploads("inspect", uploads, fields)
    state = web_state()
    deadline = time.monotonic() + state.web.inspect_timeout
    while True:
        image = queries.job_results(state.engine, job_id)[0]
        if image.status in ("done", "error"):
            return jsonify({"job_id": job_id, **_result_entry(image)})
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(INSPECT_POLL_SECONDS, remaining))
    log.info("job %s: no verdict within %.1f s; answering 202", job_id, state.web.inspect_timeout)
    return _accepted(job_id, 1)


# -- reads ---------------------------------------------------------------------------------------
def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 3)


def _job_entry(job: JobSummary) -> dict[str, Any]:
    return {
        **job.to_dict(),
        "durations": {
            "waiting_seconds": _seconds_between(job.created_at, job.started_at),
            "running_seconds": _seconds_between(job.started_at, job.finished_at),
            "total_seconds": _seconds_between(job.created_at, job.finished_at),
        },
        "results_url": url_for("api.get_results", job_id=job.id),
    }


def _job_or_404(job_id: str) -> JobSummary:
    job = queries.job_summary(web_state().engine, job_id)
    if job is None:
        raise not_found(f"no job {job_id!r}")
    return job


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    return jsonify(_job_entry(_job_or_404(job_id)))


def _int_arg(name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise bad_request(f"{name} must be {bounds}, got {value}")
    return value


def _since_arg() -> datetime | None:
    raw = request.args.get("since")
    if not raw:
        return None
    try:
        since = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request(
            f"since must be an ISO 8601 time such as 2026-01-05T08:00:00Z, got {raw!r}"
        ) from None
    if since.tzinfo is None:
        raise bad_request(f"since must carry a timezone (Z or +hh:mm), got {raw!r}")
    return since


@bp.get("/jobs")
def list_jobs() -> Response:
    limit = _int_arg("limit", DEFAULT_PAGE, 1, MAX_PAGE)
    offset = _int_arg("offset", 0, 0)
    status = request.args.get("status") or None
    if status is not None and status not in queries.JOB_STATUSES:
        raise bad_request(
            f"status must be one of {', '.join(queries.JOB_STATUSES)}, got {status!r}"
        )
    line = request.args.get("line") or None
    jobs = queries.list_jobs(
        web_state().engine,
        limit=limit,
        offset=offset,
        status=status,
        line=line,
        since=_since_arg(),
    )
    next_url = None
    if len(jobs) == limit:
        args: dict[str, Any] = {
            k: v for k, v in request.args.items() if k not in ("limit", "offset")
        }
        next_url = url_for("api.list_jobs", **args, limit=limit, offset=offset + limit)
    return jsonify(
        {
            "jobs": [_job_entry(job) for job in jobs],
            "limit": limit,
            "offset": offset,
            "next": next_url,
        }
    )


CSV_COLUMNS = (
    "image_id",
    "filename",
    "status",
    "error",
    "label",
    "confidence",
    "defect_score",
    "is_defect",
    "flagged",
    "model_name",
    "model_version",
)


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _results_csv(job_id: str, entries: Sequence[dict[str, Any]]) -> Response:
    classes = sorted({c for e in entries for c in (e["probabilities"] or {})})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"p_{c}" for c in classes)])
    for entry in entries:
        probabilities = entry["probabilities"] or {}
        writer.writerow(
            [_csv_cell(entry[c]) for c in CSV_COLUMNS]
            + [_csv_cell(probabilities.get(c)) for c in classes]
        )
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="job-{job_id}-results.csv"'
    return response


@bp.get("/jobs/<job_id>/results")
def get_results(job_id: str) -> Response:
    output = request.args.get("format", "json")
    if output not in ("json", "csv"):
        raise bad_request(f"format must be json or csv, got {output!r}")
    images = queries.job_results(web_state().engine, job_id)
    if not images:
        _job_or_404(job_id)  # every job has images: none means no such job
    entries = [_result_entry(image) for image in images]
    if output == "csv":
        return _results_csv(job_id, entries)
    return jsonify({"job_id": job_id, "results": entries})


def _image_or_404(image_id: int) -> ImageRecord:
    record = queries.get_image(web_state().engine, image_id)
    if record is None:
        raise not_found(f"no image {image_id}")
    return record


@bp.get("/images/<int:image_id>")
def get_image(image_id: int) -> Response:
    record = _image_or_404(image_id)
    images = queries.job_results(web_state().engine, record.job_id)
    entry = next((_result_entry(i) for i in images if i.image_id == image_id), None)
    return jsonify(
        {
            "image_id": record.id,
            "job_id": record.job_id,
            "filename": record.filename,
            "sha256": record.sha256,
            "size_bytes": record.size_bytes,
            "priority": record.priority,
            "status": record.status,
            "attempts": record.attempts,
            "error": record.error,
            "created_at": record.created_at.isoformat(),
            "updated_at": record.updated_at.isoformat(),
            "result": entry,
            "file_url": url_for("api.get_image_file", image_id=record.id),
            "job_url": url_for("api.get_job", job_id=record.job_id),
        }
    )


@bp.get("/images/<int:image_id>/file")
def get_image_file(image_id: int) -> Response:
    record = _image_or_404(image_id)
    if not os.path.isfile(record.stored_path):
        raise ApiError(404, "file_gone", f"the file of image {image_id} is gone")
    mimetype = mimetypes.guess_type(record.filename)[0] or "application/octet-stream"
    return send_file(
        record.stored_path,
        mimetype=mimetype,
        download_name=os.path.basename(record.filename) or f"image-{image_id}",
        conditional=True,
    )


@cache
def _openapi_document() -> bytes:
    return OPENAPI_FILE.read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    return Response(_openapi_document(), mimetype="application/json")
