"""The publisher's status file (docs/internals.md: replaced about once a second)."""
from __future__ import annotations

import time
from pathlib import Path

from common import runtime


def write_json(path: Path, doc: dict) -> None:
    """Replace ``path`` atomically, indented (``common.runtime.write_status``)."""
    runtime.write_status(path, doc, indent=True)


def status_doc(svc) -> dict:
    """Live state of a ``publisher.service.Service``; field list in docs/internals.md."""
    b = svc.broker
    t = svc.tally
    return runtime.status_doc("publisher", svc.started_at, **{
        "broker": {"state": b.state if b else "down", "since": b.since if b else None,
                   "connects": b.connects if b else 0, "last_error": b.last_error if b else "",
                   "path": b.path if b else None},
        "buffered": len(svc.outbox), "in_memory": svc.outbox.in_memory,
        "spool_depth": svc.outbox.spool_depth, "unconfirmed": len(b.inflight) if b else 0,
        "dropped": dict(svc.outbox.dropped),
        "dropped_by_reason": {r: dict(c) for r, c in svc.outbox.dropped_by.items()},
        "max_age_ms": {c: b // 1_000_000 for c, b in sorted(svc.s.market_max_age_ns().items())},
        # what reaches RabbitMQ, per public topic: /api/v1/status judges freshness on it
        "delivered": svc.delivered_topics(),
        "resync": {**svc.pipeline.healer.status(), "sent": svc.resync_sent},
        "returned": dict(t.returned), "published": dict(t.published),
        "confirmed": dict(t.confirmed), "nacked": dict(t.nacked), "events_in": dict(t.events_in),
        "bad_input": dict(t.bad_input), "stream_gaps": svc.pipeline.counts["stream_gap"],
        "ticker_delta_without_snapshot": svc.pipeline.counts["ticker_delta_no_snapshot"],
        "republished": t.republished, "retention": svc.retention, "intake_open": svc.intake_open,
        "account_queue_depths": svc.queue_depths,
        "retention_policy": _retention(svc.retention_state),
        "topology": {**svc.topology, "restoring": svc._restore is not None, "held": len(svc._held)},
        "received_to_confirmed_ms": svc.latency.doc(),
        "exchange_to_received_ms": svc.pipeline.exchange_to_received.doc(),
        "exchange_to_received_p99_ms": svc.read_lag.last,
    })


def _retention(st: dict) -> dict:
    """Whether the queues have their retention; ``applied`` false means they keep every message."""
    doc = {k: v for k, v in st.items() if k != "next_attempt_at"}
    nxt = st.get("next_attempt_at")
    doc["next_attempt_in_s"] = None if nxt is None or st.get("applied") else round(max(nxt - time.time(), 0.0), 1)
    return doc
