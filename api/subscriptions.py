"""/api/v1/subscriptions: PostgreSQL first, then tell ingest.

A topic is held by a set of requesters; it is unsubscribed from Bybit only when the
last one lets go. If ingest does not answer, the change stays in PostgreSQL and
ingest applies it when it starts (it converges to the table at start and every 30 s).
"""
from __future__ import annotations

from flask import current_app, g
from flask_openapi3 import APIBlueprint, Tag
from common.logs import get_logger
from common.topics import TopicError, build_topic

from . import store
from .control import ControlUnavailable
from .db import get_db, transaction
from .errors import ApiError, topic_error
from .metrics import CONTROL_REQUESTS, child
from .models import (API_KEY_SECURITY, V1_ERRORS, DeleteQuery, ErrorBody, Subscription, SubscriptionChange,
                     SubscriptionCreate, SubscriptionPage, SubscriptionPath, SubscriptionQuery)

log = get_logger("api.subscriptions")
tag = Tag(name="subscriptions", description="What the gateway subscribes to on Bybit")
bp = APIBlueprint("subscriptions", __name__, url_prefix="/api/v1/subscriptions", abp_tags=[tag],
                   abp_security=API_KEY_SECURITY, abp_responses=V1_ERRORS)


def _out(row: dict) -> dict:
    """The row as the response: store.py selects exactly the fields of ``Subscription``
    and the JSON encoder writes them as pydantic would (UUID text, datetimes with "Z");
    tests/api/test_subscriptions.py holds the two to the same bytes."""
    return row


def _control_payload(row: dict) -> dict:
    return {k: row[k] for k in ("channel", "endpoint", "category", "symbol", "depth", "interval", "topic")} | {
        "id": str(row["id"])}


def _tell_ingest(op: str, row: dict) -> tuple[str, str | None]:
    """Send ``op`` for ``row``; return (accepted|refused|unreachable, refusal reason)."""
    client = current_app.extensions["control"]
    try:
        reply = client.request(op, _control_payload(row), g.request_id)
    except ControlUnavailable as exc:
        child(CONTROL_REQUESTS, op, "unreachable").inc()
        log.warning("ingest_unreachable", op=op, topic=row["topic"], endpoint=row["endpoint"], reason=str(exc))
        return "unreachable", None
    result = "accepted" if reply.ok else "refused"
    child(CONTROL_REQUESTS, op, result).inc()
    if not reply.ok:
        log.info("ingest_refused", op=op, topic=row["topic"], endpoint=row["endpoint"], reason=reply.error)
    return result, reply.error or ("refused by ingest" if not reply.ok else None)


@bp.post("", responses={201: SubscriptionChange, 200: SubscriptionChange, 409: ErrorBody},
         operation_id="create_subscription",
         summary="Subscribe to a topic (or join an existing subscription)")
def create(body: SubscriptionCreate):
    """201 when the topic is new, 200 when it already had a live subscription (the
    requester is added to its holders). The row is written before ingest is told; joining
    an active subscription does not ask ingest (``ingest: not_needed``). 409
    ``conflicting_subscription`` when the other form of a private channel is pending or active
    (``order`` with ``order.linear``, and the same for execution and position).

    ``symbol: "*"`` is one subscription for every symbol Bybit lists as trading in the category
    (ingest expands it and follows listings); ``symbol_count`` is null until ingest fetched the list."""
    try:
        topic = build_topic(body.channel, body.category, body.symbol, body.depth, body.interval)
    except TopicError as exc:
        raise topic_error(exc) from None
    if store.mixes_private_forms(topic):
        with transaction() as conn:
            store.lock_private_channel(conn, topic.channel)
            other = store.conflicting_form(conn, topic)
            if other is not None:
                raise _conflict(topic.name, other)
            result = store.request_topic(conn, topic, body.requested_by, g.request_id)
    else:
        result = store.request_topic(get_db(), topic, body.requested_by, g.request_id)   # one upsert
    row = result.row
    log.info("subscription_requested", id=str(row["id"]), topic=topic.name, endpoint=topic.endpoint,
             requester=body.requested_by, created=result.created, tell_ingest=result.needs_add)
    if not result.needs_add:
        # Joining a subscription already active at Bybit: no round trip to ingest, so the answer
        # does not wait on ingest's loop (busy with the market) nor, while ingest restarts, on
        # the control timeout. Ingest converges to the table anyway (at start and every 30 s).
        return _out(row) | {"ingest": "not_needed"}, 200
    ingest, reason = _tell_ingest("add", row)
    if ingest == "refused":
        row = store.mark_failed(get_db(), row["id"], reason) or row   # one statement: autocommit
    return _out(row) | {"ingest": ingest}, 201 if result.created else 200


@bp.get("", responses={200: SubscriptionPage}, operation_id="list_subscriptions", summary="List subscriptions")
def list_subscriptions(query: SubscriptionQuery):
    """Filters combine with AND. Without ``status`` removed rows are left out.
    Pages: ``limit`` (1-500) and ``offset``; ``next_offset`` is null on the last page."""
    filters = query.model_dump(include={"status", "channel", "category", "symbol"})
    rows, total = store.list_page(get_db(), filters, query.limit, query.offset)
    nxt = query.offset + len(rows)
    return {"items": rows, "total": total, "limit": query.limit, "offset": query.offset,
            "next_offset": nxt if nxt < total and rows else None}


@bp.get("/<id>", responses={200: Subscription}, operation_id="get_subscription",
        summary="One subscription (removed ones too)")
def get_one(path: SubscriptionPath):
    row = store.get(get_db(), path.id)
    if row is None:
        raise ApiError(404, "not_found", f"no subscription {path.id}")
    return _out(row)


@bp.delete("/<id>", responses={200: SubscriptionChange, 409: ErrorBody}, operation_id="delete_subscription",
           summary="Release one holder; unsubscribe when none is left")
def delete(path: SubscriptionPath, query: DeleteQuery):
    """Releases ``requested_by`` (default: the anonymous hold, or the only holder; with
    several named holders and none given: 409 naming them). When no holder is left the
    row becomes removed and ingest unsubscribes. A removed or unknown id is 404."""
    with transaction() as conn:
        row = store.get(conn, path.id, for_update=True)
        if row is None or row["status"] == "removed":
            raise ApiError(404, "not_found", f"no live subscription {path.id}")
        holders = list(row["requesters"])
        who = _holder_to_release(holders, query.requested_by)
        remaining = [h for h in holders if h != who]
        if remaining:
            row = store.set_requesters(conn, path.id, remaining)
        else:
            row = store.mark_removed(conn, path.id, g.request_id)
    if remaining:
        log.info("subscription_released", id=str(path.id), requester=who, remaining=len(remaining))
        return _out(row) | {"ingest": "not_needed"}
    log.info("subscription_removed", id=str(path.id), topic=row["topic"], endpoint=row["endpoint"], requester=who)
    ingest, _reason = _tell_ingest("remove", row)
    return _out(row) | {"ingest": ingest}


def _conflict(name: str, other: dict) -> ApiError:
    log.info("subscription_conflict", topic=name, conflicts_with=str(other["id"]), other_topic=other["topic"])
    form = "all-in-one" if other["category"] is None else "category-scoped"
    return ApiError(409, "conflicting_subscription",
                    f"{name} cannot be held together with the {form} {other['topic']} (subscription "
                    f"{other['id']}, {other['status']}): Bybit refuses the two forms of a private channel in one "
                    f"request and would push each event under both; remove it first or use it",
                    {"conflicts_with": str(other["id"]), "topic": other["topic"]})


def _holder_to_release(holders: list[str], named: str | None) -> str | None:
    if named is not None:
        if named not in holders:
            raise ApiError(409, "not_a_holder", f"{named!r} does not hold this subscription", {"requesters": holders})
        return named
    if "anonymous" in holders:
        return "anonymous"
    if len(holders) <= 1:
        return holders[0] if holders else None
    raise ApiError(409, "holder_required", "several services hold this subscription; "
                   "say which one lets go with ?requested_by=", {"requesters": holders})
