"""Operations: /health (liveness), /metrics (every process), /api/v1/status."""
from __future__ import annotations

import os
from datetime import datetime, timezone

from flask import Response, current_app
from flask_openapi3 import APIBlueprint, Tag
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from . import broker, status, store
from .db import get_db
from .models import API_KEY_SECURITY, OPS_ERRORS, V1_ERRORS, Health, StatusReport

tag = Tag(name="ops", description="Liveness, status and metrics")
bp = APIBlueprint("ops", __name__, abp_tags=[tag], abp_responses=OPS_ERRORS)
v1 = APIBlueprint("status", __name__, url_prefix="/api/v1", abp_tags=[tag], abp_security=API_KEY_SECURITY,
                  abp_responses=V1_ERRORS)

_TEXT = {"description": "Prometheus text exposition format",
         "content": {"text/plain": {"schema": {"type": "string"}}}}


@bp.get("/health", responses={200: Health}, operation_id="health",
        summary="Liveness: the API answers (no dependency is called)")
def health():
    return {"status": "ok"}


@bp.get("/metrics", responses={200: _TEXT}, operation_id="metrics",
        summary="Prometheus metrics of every gateway process")
def metrics():
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()          # fresh per request: files change under us
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})


def _database() -> tuple[dict, list[dict]]:
    try:
        rows = store.live_rows(get_db())
    except Exception as exc:   # any driver or pool failure means "not reachable" here
        return {"reachable": False, "error": type(exc).__name__}, []
    return {"reachable": True, "error": None}, rows


@v1.get("/status", responses={200: StatusReport}, operation_id="get_status",
        summary="Connections, topics, processes, broker, database")
def status_report():
    """Each connection as ingest reports it; each live subscription with its last
    event age and freshness; buffered and dropped counts per process (a status file
    older than 10 s means the process is not reporting); PostgreSQL and RabbitMQ
    reachability and queue depths (cached about 2 s); whether Bybit's REST API has banned
    this IP (HTTP 403: no REST call until ``rest.until``, overall degraded meanwhile); Bybit's
    maintenance and incident notices in force (``exchange``; they do not change ``overall``)."""
    settings = current_app.config["SETTINGS"]
    files = status.read_status_files(settings.status_dir)
    processes = status.process_list(files)
    database, rows = _database()
    now = datetime.now(timezone.utc)
    topics = status.subscription_list(rows, now, files)
    amqp = broker.probe(settings.rabbitmq_url)
    rest = status.rest_ban(files)
    judged = status.overall(processes, topics, database["reachable"], amqp["reachable"])
    report = {"overall": "degraded" if rest and rest["banned"] else judged,
              "processes": processes, "connections": status.connection_list(files),
              "subscriptions": topics, "database": database, "broker": amqp, "rest": rest,
              "exchange": status.exchange_status(files)}
    try:      # every instance sharing the database, what it owns and since when
        report["instances"], report["unowned_units"] = status.instance_list(
            *status.read_instances(get_db()), settings.lease_ttl_s)
    except Exception:      # the database is reported unreachable above
        pass
    return StatusReport.model_validate(report).model_dump(mode="json")
