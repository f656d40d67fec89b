"""The API's own metrics (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set:
every gunicorn worker writes its own files, /metrics sums them)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("wsgw_api_requests_total", "REST requests answered", ["method", "route", "status"])
LATENCY = Histogram("wsgw_api_request_seconds", "REST request duration", ["route"],
                    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
CONTROL_REQUESTS = Counter("wsgw_api_control_requests_total", "Control requests to ingest by result",
                           ["op", "result"])

_children: dict[tuple, object] = {}


def child(metric, *labels: str):
    """``metric.labels(*labels)``, looked up once: prometheus_client's labels() validates and
    takes a lock on every call. Label values here are routes, methods, statuses and results,
    so the keys are few."""
    key = (metric, labels)
    c = _children.get(key)
    if c is None:
        c = _children.setdefault(key, metric.labels(*labels))
    return c
