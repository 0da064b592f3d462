"""Every error the service answers, as JSON ``{"error": {"code", "message"}}``, in one place.

Domain errors of the core map to HTTP statuses here; HTTP errors (404, 405, 413, ...) and
unexpected exceptions (500) get the same JSON body, never an HTML page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flask import Flask, Response, current_app, jsonify
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from inspector.db.errors import DatabaseRevisionError
from inspector.errors import (
    ConfigurationError,
    DatasetError,
    ImageDecodeError,
    InspectorError,
    ModelIntegrityError,
    ModelStoreError,
    WeightsNotFoundError,
)

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides.
DOMAIN_STATUSES: tuple[tuple[type[InspectorError], int, str], ...] = (
    (ConfigurationError, 400, "bad_request"),
    (ImageDecodeError, 422, "undecodable_image"),
    (DatasetError, 422, "bad_dataset"),
    (ModelIntegrityError, 500, "model_integrity"),
    (ModelStoreError, 404, "model_not_found"),
    (WeightsNotFoundError, 503, "weights_missing"),
    (DatabaseRevisionError, 503, "database_not_ready"),
)
# Headers of an HTTPException worth keeping on the JSON answer.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


class ApiError(Exception):
    """An answer other than success, raised by a view: status, code, message, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _code(name: str) -> str:
    return name.lower().replace(" ", "_").replace("'", "")


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 413:
        message = (
            f"request too large: at most {current_app.config['MAX_CONTENT_LENGTH']} bytes "
            f"(INSPECTOR_MAX_UPLOAD_BYTES) and {current_app.config['MAX_FORM_PARTS']} files "
            "and fields per request"
        )
    headers = {k: v for k, v in exc.get_headers() if k in _KEPT_HEADERS}
    return error_response(status, _code(exc.name), message, headers)


def _domain_error(exc: InspectorError) -> Response:
    for cls, status, code in DOMAIN_STATUSES:
        if isinstance(exc, cls):
            if status >= 500:
                log.error("%s: %s", type(exc).__name__, exc)
            return error_response(status, code, str(exc))
    log.exception("unmapped domain error")
    return error_response(500, "internal_error", str(exc))


def _database_error(exc: SQLAlchemyError) -> Response:
    log.error("database error: %s", exc)
    return error_response(
        503, "database_unavailable", "the database did not answer; try again later"
    )


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal server error (logged)")


def register_error_handlers(app: Flask) -> None:
    """JSON for every error: ours, the core's, the database's, HTTP's and the unexpected."""
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InspectorError, _domain_error)
    app.register_error_handler(SQLAlchemyError, _database_error)
    app.register_error_handler(Exception, _unexpected)
