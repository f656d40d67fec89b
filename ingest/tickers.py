"""ingest's copy of one linear/inverse ticker (docs/bybit.md#tickers). Pure state.

Those tickers come as a snapshot, then deltas holding only the fields that changed, so a delta
lost on the way to consumers leaves the publisher's merged ticker wrong until the next snapshot,
and Bybit sends one only on a new subscription. ingest reads every such push anyway (it checks
them), so it keeps the merged ticker too: when one is dropped, a snapshot made from this copy
heals the stream at once, where a resubscribe costs a round trip to Bybit and drops every delta
until its snapshot comes (seen under overload: most of a flood's tickers).
"""
from __future__ import annotations


class KeptTicker:
    """The merged ticker as the pushes ingest handed off say it is now. A delta before any
    snapshot, or a malformed push, makes the copy invalid until the next snapshot: the caller
    resubscribes instead."""

    __slots__ = ("data", "head", "valid", "recv_ns", "session")

    def __init__(self):
        self.data: dict = {}
        self.head: dict = {}          # topic, cs and ts of the last push applied
        self.valid = False
        self.recv_ns = 0              # when ingest read the last push applied
        self.session = ""

    def invalidate(self) -> None:
        self.valid = False
        self.data = {}

    def apply(self, frame: dict, recv_ns: int, session: str) -> None:
        """A push handed off: a snapshot replaces the copy, a delta overwrites the fields it holds."""
        data = frame.get("data")
        if not isinstance(data, dict):
            self.invalidate()
            return
        if frame.get("type", "snapshot") != "delta":
            self.data = dict(data)
        elif self.valid:
            self.data.update(data)
        else:
            return
        self.head = {"topic": frame.get("topic"), "cs": frame.get("cs"), "ts": frame.get("ts")}
        self.valid, self.recv_ns, self.session = True, recv_ns, session

    def snapshot(self) -> dict:
        """The copy as a Bybit snapshot push of the ticker."""
        h = self.head
        out = {"topic": h["topic"], "type": "snapshot", "data": dict(self.data)}
        if h["cs"] is not None:
            out["cs"] = h["cs"]
        out["ts"] = h["ts"]
        return out
