"""Envelope -> what to write. Pure: no sockets, no database, no clock.

A whole envelope that cannot be used raises ``BadInput`` (a reason for the
counter and a message for the log). Account data that cannot be parsed is not
dropped silently: it comes back as ``BadRecord``s for ``dead_letters``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from common.envelope import ACTIVITY, FRAME, REST, SUB_STATUS, Envelope
from common.substatus import REPORTED_BY_INGEST
from persister.pending import SubStatus
from persister.rows import BadRecord, Row, RowError, rows_from_frame, rows_from_rest, table_for_topic

SUB_STATUSES = REPORTED_BY_INGEST     # 'removed' is the API's to set, never ingest's
MAX_DEAD_TEXT = 10_000


class BadInput(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Intake:
    rows: list[Row] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)
    sub_status: SubStatus | None = None
    activity: list[tuple[str, str, int]] = field(default_factory=list)
    ignored: bool = False   # a private topic the persister does not store (greeks, dcp ...)


def frame_event_id(env: Envelope, frame: dict | None) -> str:
    """Bybit's message id when it has one (execution.fast has none), else where ingest saw it."""
    bybit_id = frame.get("id") if isinstance(frame, dict) else None
    if isinstance(bybit_id, str) and bybit_id:
        return bybit_id
    return f"{env.epoch}:{env.endpoint}:{env.topic}:{env.stream_seq}"


def _json(env: Envelope):
    try:
        return orjson.loads(env.payload)
    except orjson.JSONDecodeError as exc:
        raise BadInput("bad_json", f"{env.kind} payload is not JSON: {exc}") from None


def parse(env: Envelope) -> Intake:
    if env.kind == FRAME:
        return _frame(env)
    if env.kind == REST:
        return _rest(env)
    if env.kind == SUB_STATUS:
        return Intake(sub_status=_sub_status(_json(env)))
    if env.kind == ACTIVITY:
        return Intake(activity=_activity(_json(env)))
    raise BadInput("unexpected_kind", f"kind {env.kind!r} is not for the persister")


def _frame(env: Envelope) -> Intake:
    if env.endpoint != "private":
        raise BadInput("not_private", f"frame from endpoint {env.endpoint!r}: the persister stores account data only")
    table = table_for_topic(env.topic)
    if table is None:
        return Intake(ignored=True)
    try:
        frame = orjson.loads(env.payload)
    except orjson.JSONDecodeError as exc:
        text = env.payload[:MAX_DEAD_TEXT].decode("utf-8", "replace")
        return Intake(bad=[BadRecord(table, frame_event_id(env, None), f"frame is not JSON: {exc}",
                                     {"topic": env.topic, "text": text})])
    event_id = frame_event_id(env, frame)
    try:
        rows, bad = rows_from_frame(frame, event_id)
    except RowError as exc:
        return Intake(bad=[BadRecord(table, event_id, str(exc), frame)])
    return Intake(rows=rows, bad=bad)


def _rest(env: Envelope) -> Intake:
    body = _json(env)
    if not isinstance(body, dict):
        raise BadInput("bad_rest", "rest payload is not an object")
    topic = body.get("topic")
    table = table_for_topic(topic) if isinstance(topic, str) else None
    event_id = f"rest:{topic}:{body.get('category') or ''}:{body.get('fetched_at_ms')}"
    if table is None:
        raise BadInput("bad_rest", f"rest topic {topic!r} is not order, execution, position or wallet")
    try:
        rows, bad = rows_from_rest(body, event_id)
    except RowError as exc:
        return Intake(bad=[BadRecord(table, event_id, str(exc), body)])
    return Intake(rows=rows, bad=bad)


def _sub_status(body) -> SubStatus:
    if not isinstance(body, dict):
        raise BadInput("bad_sub_status", "sub_status payload is not an object")
    endpoint, topic, status = body.get("endpoint"), body.get("topic"), body.get("status")
    error, at_ms = body.get("error"), body.get("at_ms")
    if not (isinstance(endpoint, str) and endpoint and isinstance(topic, str) and topic):
        raise BadInput("bad_sub_status", f"sub_status needs endpoint and topic, got {endpoint!r}, {topic!r}")
    if status not in SUB_STATUSES:
        raise BadInput("bad_sub_status", f"sub_status status must be one of {', '.join(SUB_STATUSES)}, "
                                         f"got {status!r}")
    if error is not None and not isinstance(error, str):
        raise BadInput("bad_sub_status", f"sub_status error must be a string or null, got {error!r}")
    if isinstance(at_ms, bool) or not isinstance(at_ms, int) or at_ms <= 0:
        raise BadInput("bad_sub_status", f"sub_status at_ms must be a positive integer, got {at_ms!r}")
    return SubStatus(endpoint, topic, status, error, at_ms)


def _activity(body) -> list[tuple[str, str, int]]:
    topics = body.get("topics") if isinstance(body, dict) else None
    if not isinstance(topics, dict):
        raise BadInput("bad_activity", "activity payload needs an object 'topics'")
    out = []
    for key, ms in topics.items():
        endpoint, sep, topic = key.partition(":")
        if not sep or not endpoint or not topic or isinstance(ms, bool) or not isinstance(ms, int) or ms <= 0:
            raise BadInput("bad_activity", f"activity entry {key!r}: {ms!r} is not 'endpoint:topic': ms")
        out.append((endpoint, topic, ms))
    return out
