"""Order-book stream integrity per topic (docs/bybit.md#order-books). Pure state machine.

A delta before any snapshot, a gap in ``u`` or ``seq`` going backwards makes the topic
resync (resubscribe just that topic); any snapshot, including ``u == 1`` after a
Bybit restart, resets. Level 1 is snapshot-only and repeats with the same ``u``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ingest.parse import BookUpdate

OK = "ok"            # forward the frame
STALE = "stale"      # an old delta (u <= last): drop it silently
RESYNC = "resync"    # the book can't be trusted: drop the frame, resubscribe


@dataclass(slots=True)
class Verdict:
    action: str
    reason: str = ""


class BookTracker:
    __slots__ = ("u", "seq", "resyncing")

    def __init__(self):
        self.u: int | None = None
        self.seq: int | None = None
        self.resyncing = False

    def reset(self) -> None:
        self.u = self.seq = None
        self.resyncing = True   # waiting for the snapshot a resubscribe brings

    def check(self, upd: BookUpdate) -> Verdict:
        if upd.type == "snapshot":
            self.u, self.seq, self.resyncing = upd.u, upd.seq, False
            return Verdict(OK)
        if self.resyncing:
            return Verdict(STALE, "waiting for snapshot")
        if self.u is None:
            self.resyncing = True
            return Verdict(RESYNC, "delta before any snapshot")
        if upd.u <= self.u:
            return Verdict(STALE, f"old delta u={upd.u} <= {self.u}")
        if upd.u != self.u + 1:
            reason = f"gap in u: {self.u} -> {upd.u}"
            self.resyncing = True
            return Verdict(RESYNC, reason)
        if upd.seq is not None and self.seq is not None and upd.seq < self.seq:
            reason = f"seq went backwards: {self.seq} -> {upd.seq}"
            self.resyncing = True
            return Verdict(RESYNC, reason)
        self.u = upd.u
        if upd.seq is not None:
            self.seq = upd.seq
        return Verdict(OK)


class KeptBook:
    """ingest's copy of one order book, from the frames the tracker accepted: what a snapshot of
    it would say now. When frames of the book are dropped on the way to consumers, a snapshot made
    from this copy heals their books at once, without resubscribing (a round trip, and a snapshot
    that waits behind the deltas it replaces). Levels are kept as Bybit sent them (strings); a
    level of size 0 is removed. Anything malformed makes the copy invalid until the next
    snapshot: the caller resubscribes instead."""

    __slots__ = ("bids", "asks", "head", "valid", "recv_ns", "session")

    def __init__(self):
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self.head: dict = {}          # topic, ts, cts, and data's s, u, seq of the last frame applied
        self.valid = False
        self.recv_ns = 0              # when ingest read the last frame applied
        self.session = ""

    def invalidate(self) -> None:
        self.valid = False
        self.bids, self.asks = {}, {}

    def apply(self, frame: dict, recv_ns: int, session: str) -> None:
        """A frame the tracker passed (OK): a snapshot replaces the copy, a delta updates it."""
        data = frame.get("data")
        snapshot = frame.get("type") == "snapshot"
        if not snapshot and not self.valid:
            return
        try:
            if snapshot:
                self.bids, self.asks = {}, {}
            for side, levels in ((self.bids, data.get("b") or ()), (self.asks, data.get("a") or ())):
                for price, size in levels:
                    if not isinstance(price, str) or not isinstance(size, str):
                        raise TypeError("level not two strings")
                    if float(size) == 0:
                        side.pop(price, None)
                    else:
                        side[price] = size
        except (TypeError, ValueError, AttributeError):
            self.invalidate()
            return
        self.head = {"topic": frame.get("topic"), "ts": frame.get("ts"), "cts": frame.get("cts"),
                     "s": data.get("s"), "u": data.get("u"), "seq": data.get("seq")}
        self.valid, self.recv_ns, self.session = True, recv_ns, session

    def snapshot(self) -> dict:
        """The copy as a Bybit snapshot push: bids best (highest) first, asks lowest first."""
        h = self.head
        data = {"s": h["s"], "b": [[p, q] for p, q in sorted(self.bids.items(), key=_price, reverse=True)],
                "a": [[p, q] for p, q in sorted(self.asks.items(), key=_price)], "u": h["u"]}
        if h["seq"] is not None:
            data["seq"] = h["seq"]
        out = {"topic": h["topic"], "type": "snapshot", "ts": h["ts"], "data": data}
        if h["cts"] is not None:
            out["cts"] = h["cts"]
        return out


def _price(level: tuple[str, str]) -> float:
    return float(level[0])
