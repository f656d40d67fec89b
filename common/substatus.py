"""A subscription's status: the one vocabulary the API, ingest, the persister and the table share.

``pending`` until Bybit acknowledged the topic, then ``active`` or ``failed`` (with Bybit's
message); ``removed`` once no requester holds it. The API writes ``pending`` (a new row, or a
failed one asked for again) and ``removed``; ingest reports the others through the persister
and never touches a removed row. sql/0001_subscriptions.sql checks the same four values.
"""
from __future__ import annotations

PENDING, ACTIVE, FAILED, REMOVED = "pending", "active", "failed", "removed"
STATUSES = (PENDING, ACTIVE, FAILED, REMOVED)
HELD = (PENDING, ACTIVE)                 # rows ingest subscribes to
REPORTED_BY_INGEST = (PENDING, ACTIVE, FAILED)
# Who may move a row from one status to another (None: the row does not exist yet).
TRANSITIONS = {
    None: {PENDING},
    PENDING: {ACTIVE, FAILED, REMOVED},
    ACTIVE: {PENDING, FAILED, REMOVED},      # pending again while a dropped connection resubscribes
    FAILED: {PENDING, ACTIVE, REMOVED},      # asked for again, or acknowledged after all
    REMOVED: set(),                          # a new request makes a new row
}


def sql_list(statuses: tuple[str, ...]) -> str:
    """``'pending', 'active'`` for an SQL ``IN (...)`` (constants only, never user input)."""
    return ", ".join(f"'{s}'" for s in statuses)
