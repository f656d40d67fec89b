"""ws-gateway REST API: a Flask app factory (flask-openapi3, pydantic v2), served by
gunicorn as ``api:create_app()``. Contract: docs/api.md."""
from __future__ import annotations

import hmac
import json
import os
import re
import time

import orjson
import structlog
from flask import current_app, g, request
from flask.json.provider import DefaultJSONProvider
from flask_openapi3 import Info, OpenAPI

from common.addresses import ingest_control
from common.config import load_settings
from common.logs import get_logger

from . import account, db, errors, operations, subscriptions
from .control import ControlClient
from .errors import ApiError
from .models import ErrorBody
from .metrics import LATENCY, REQUESTS, child

__version__ = "1.0.0"
MAX_BODY_BYTES = 16 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")
_QUIET_PATHS = ("/health", "/metrics")
_READS = ("GET", "HEAD", "OPTIONS")
_WRITES = ("POST", "PUT", "PATCH")
SLOW_REQUEST_S = 0.1              # a read slower than this is logged at info
log = get_logger("api")

SECURITY = {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


class OrjsonProvider(DefaultJSONProvider):
    """Responses through orjson (several times faster than the stdlib encoder), straight
    to bytes. UTC datetimes end in "Z", as pydantic writes them: views may hand rows
    from PostgreSQL (timestamptz in UTC) to the encoder without a model round trip."""

    OPTIONS = orjson.OPT_UTC_Z

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, default=str, option=self.OPTIONS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, default=str, option=self.OPTIONS | orjson.OPT_APPEND_NEWLINE),
                                         mimetype=self.mimetype)


def create_app(test_config: dict | None = None) -> OpenAPI:
    """Build the app. ``test_config`` may carry ``SETTINGS`` (a common.config.Settings)
    and any Flask config override; otherwise settings come from the environment."""
    test_config = dict(test_config or {})
    settings = test_config.pop("SETTINGS", None) or load_settings()
    settings.warn_unknown_env(log)
    app = OpenAPI(
        __name__,
        info=Info(title="ws-gateway API", version=__version__,
                  description="Subscriptions to Bybit v5 streams, account state, status and metrics."),
        security_schemes=SECURITY,
        validation_error_status=422,
        validation_error_model=ErrorBody,
        validation_error_callback=errors.validation_error_callback,
        # Swagger UI at /docs/swagger, served from the flask-openapi3-swagger wheel (no CDN).
        doc_ui=True,
        doc_prefix="/docs",
        doc_url="/openapi.json",
    )
    app.json = OrjsonProvider(app)
    # /api//v1/... is a 404 in the error shape, not werkzeug's 308 redirect with an HTML page
    # (Flask hands routing redirects past the error handlers).
    app.url_map.merge_slashes = False
    app.config.from_mapping(
        SETTINGS=settings,
        DATABASE_URL=settings.database_url,
        API_KEY=settings.gateway_api_key,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
    )
    app.config.update(test_config)
    app.extensions["control"] = ControlClient(ingest_control(settings.run_dir), settings.control_timeout_ms)

    app.register_api(subscriptions.bp)
    app.register_api(account.bp)
    app.register_api(operations.v1)
    app.register_api(operations.bp)
    app.add_url_rule("/openapi.json", "openapi_json", lambda: app.api_doc)

    db.init_app(app)
    errors.register(app)
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
    return app


def _start():
    # Hot path (every request): the request and g are dereferenced once, each LocalProxy
    # access costs about a microsecond. Behaviour: tests/api/test_errors.py.
    req, ctx = request._get_current_object(), g._get_current_object()
    given = req.headers.get("X-Request-ID")
    ctx.request_id = given if given and _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()
    ctx.started = time.perf_counter()
    structlog.contextvars.bind_contextvars(trace_id=ctx.request_id)
    path = req.path
    if path.startswith("/api/v1/") or path == "/api/v1":
        _authorize()
    if req.method in _WRITES and req.routing_exception is None:
        _check_json_body()


def _authorize():
    key = current_app.config["API_KEY"]
    if not key:
        return
    given = request.headers.get("X-API-Key", "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key",
                       headers={"WWW-Authenticate": 'ApiKey header="X-API-Key"'})


def _check_json_body():
    if request.mimetype != "application/json":
        raise ApiError(400, "bad_content_type", "send the body as application/json",
                       {"content_type": request.mimetype or None})
    raw = request.get_data(cache=True)          # 413 past MAX_CONTENT_LENGTH
    if request.content_length is None and len(raw) >= MAX_BODY_BYTES:
        # A chunked body (no Content-Length) is cut at the limit by werkzeug without an error:
        # reaching it means there was more. Without this, the cut JSON was a 400 invalid_json.
        raise ApiError(413, "body_too_large", f"the body is larger than {MAX_BODY_BYTES} bytes",
                       {"limit_bytes": MAX_BODY_BYTES})
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", "the body is not valid JSON", {"reason": str(exc)[:200]}) from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    duplicate = _duplicate_key(raw)
    if duplicate is not None:
        # {"channel": "trades", ..., "channel": "tickers"}: parsers disagree on which one counts
        # (orjson and pydantic keep the last, others the first), so the request is ambiguous.
        raise ApiError(400, "invalid_json", f"the key {duplicate!r} appears more than once in an object",
                       {"key": duplicate})


class _Duplicate(Exception):
    pass


def _refuse_duplicates(pairs):
    seen = set()
    for key, _value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen.add(key)
    return None                 # the value is not used: only the check matters


def _duplicate_key(raw: bytes) -> str | None:
    """The first key repeated within one object of ``raw`` (already known to be valid JSON)."""
    try:
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _Duplicate as dup:
        return str(dup.args[0])[:100]
    return None


def _finish(response):
    req, ctx = request._get_current_object(), g._get_current_object()
    request_id = getattr(ctx, "request_id", None) or os.urandom(16).hex()
    response.headers["X-Request-ID"] = request_id
    method, status, path = req.method, response.status_code, req.path
    rule = req.url_rule
    route = rule.rule if rule is not None else "unmatched"
    now = time.perf_counter()
    elapsed = now - getattr(ctx, "started", now)
    _observe(method, route, status, elapsed)
    # Every change, every error and every slow request is logged; a successful quick read
    # only at debug. Reads change nothing; their counts and latencies per route are in
    # /metrics and the client holds their X-Request-ID. One line per read would be ~1.5 MB/s
    # of log at the 3,000 req/s the API is sized for (rotating out the lines that matter
    # within minutes) and cost ~25 us of CPU per request (bench/api_bench.py, py-spy).
    quiet = method in _READS and status < 400 and elapsed < SLOW_REQUEST_S or path in _QUIET_PATHS
    (log.debug if quiet else log.info)("request", method=method, path=path, status=status,
                                       ms=round(elapsed * 1000, 2))
    return response


def _observe(method: str, route: str, status: int, elapsed: float) -> None:
    child(REQUESTS, method, route, str(status)).inc()
    child(LATENCY, route).observe(elapsed)


def _teardown(_exc=None):
    structlog.contextvars.clear_contextvars()
