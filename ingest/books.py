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
