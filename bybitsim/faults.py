"""Injected faults, set by the control API and read by the server on every decision.

Endpoint-scoped flags use ``None`` as "every endpoint". Everything here is cleared by
``reset()`` (POST /__sim/reset); rates are settings, not faults, and survive it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REJECT_MODES = ("whole", "partial")


@dataclass
class Faults:
    no_pong: set = field(default_factory=set)          # endpoints (or None) not answering pings
    stalled: set = field(default_factory=set)          # endpoints (or None) sending nothing
    rejected: set = field(default_factory=set)         # (endpoint or None, topic) that fail to subscribe
    reject_mode: str = "whole"
    book_gap: set = field(default_factory=set)         # (endpoint, topic): next delta skips a u
    book_reset: set = field(default_factory=set)       # (endpoint, topic): next frame is a u == 1 snapshot
    auth_fail: bool = False
    close_private_after_s: float | None = None
    rest: list = field(default_factory=list)           # RestFault: scripted REST errors, consumed per call

    @staticmethod
    def _hit(flags: set, endpoint: str) -> bool:
        return None in flags or endpoint in flags

    def pong_enabled(self, endpoint: str) -> bool:
        return not self._hit(self.no_pong, endpoint)

    def is_stalled(self, endpoint: str) -> bool:
        return self._hit(self.stalled, endpoint)

    def is_rejected(self, endpoint: str, topic) -> bool:
        return (None, topic) in self.rejected or (endpoint, topic) in self.rejected

    def set_flag(self, flags: set, endpoint: str | None, on: bool) -> None:
        if on:
            flags.add(endpoint)
        elif endpoint is None:
            flags.clear()
        else:
            flags.discard(endpoint)
            flags.discard(None)

    def take(self, flags: set, endpoint: str, topic: str) -> bool:
        """True once per pending (endpoint, topic) book fault, which is then consumed."""
        key = (endpoint, topic)
        if key in flags:
            flags.discard(key)
            return True
        return False

    def take_rest(self, path: str):
        """The first scripted REST fault matching ``path`` (one use consumed), or None."""
        for fault in self.rest:
            if fault.matches(path):
                fault.count -= 1
                if fault.count <= 0:
                    self.rest.remove(fault)
                return fault
        return None

    def reset(self) -> None:
        fresh = Faults()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))

    def to_dict(self) -> dict:
        def eps(flags):
            return sorted("*" if e is None else e for e in flags)

        return {
            "no_pong": eps(self.no_pong),
            "stalled": eps(self.stalled),
            "rejected": [{"endpoint": e, "topic": t}
                         for e, t in sorted(self.rejected, key=lambda x: (x[0] or "", str(x[1])))],
            "reject_mode": self.reject_mode,
            "book_gap": [{"endpoint": e, "topic": t} for e, t in sorted(self.book_gap)],
            "book_reset": [{"endpoint": e, "topic": t} for e, t in sorted(self.book_reset)],
            "auth_fail": self.auth_fail,
            "close_private_after_s": self.close_private_after_s,
            "rest": [dict(vars(f)) for f in self.rest],
        }
