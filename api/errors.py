"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``."""
from __future__ import annotations

import psycopg2
import psycopg2.pool
from flask import Flask, current_app, g, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from common.logs import get_logger
from common.topics import TopicError

log = get_logger("api.errors")

# Status -> default code for the errors neither a view nor a model names: werkzeug's own
# (routing, size limit...) and gunicorn's (request line or headers too large, not HTTP:
# api/gunicorn_patches.py, write_json_error).
STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    409: "conflict", 413: "body_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    417: "expectation_failed", 422: "validation_error", 431: "header_fields_too_large",
    500: "internal_error", 501: "not_implemented", 503: "service_unavailable",
}


class ApiError(Exception):
    """Raised by views; rendered as the JSON error body with ``status``."""

    def __init__(self, status: int, code: str, message: str, details=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details=None, headers=None):
    resp = jsonify({"error": {"code": code, "message": message, "details": details}})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def _field(loc) -> str:
    # pydantic locations are tuples like ("body", "depth") or ("depth",); keep the field path.
    return ".".join(str(p) for p in loc) or "body"


def validation_details(exc: ValidationError) -> list[dict]:
    return [{"field": _field(err.get("loc", ())), "message": err.get("msg", "invalid"),
             "type": err.get("type")} for err in exc.errors(include_url=False, include_input=False)]


def validation_error_callback(exc: ValidationError):
    """flask-openapi3 hook: pydantic errors become 422 naming each bad field."""
    return error_response(422, "validation_error", "request validation failed", validation_details(exc))


def topic_error(exc: TopicError) -> ApiError:
    return ApiError(422, "validation_error", str(exc),
                    [{"field": exc.field, "message": str(exc), "type": "topic"}])


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.response is not None:          # flask-openapi3 aborts with a ready response
            return exc.response
        status = exc.code or 500
        headers = {}
        if status == 405 and getattr(exc, "valid_methods", None):
            headers["Allow"] = ", ".join(exc.valid_methods)
        message = exc.description if status < 500 else "internal error"
        return error_response(status, STATUS_CODES.get(status, "http_error"), message, None, headers)

    @app.errorhandler(psycopg2.OperationalError)
    @app.errorhandler(psycopg2.pool.PoolError)
    def _db_unavailable(exc):
        log.warning("database_unavailable", error=str(exc).strip()[:200])
        return error_response(503, "database_unavailable", "the database is not reachable; retry later")

    @app.errorhandler(Exception)
    def _internal(exc: Exception):
        log.exception("unhandled_error", path=getattr(g, "path", None))
        if current_app.testing and current_app.config.get("PROPAGATE_INTERNAL"):
            raise exc
        return error_response(500, "internal_error", "internal error; see the API log for this request id")
