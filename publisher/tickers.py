"""Ticker delta merging (docs/bybit.md#tickers): every published ``tickers`` event
carries a complete ticker.

linear/inverse send a snapshot, then deltas holding only the fields that
changed. We keep the last full ticker per (category, symbol), replace it on a
snapshot and overwrite only the keys present on a delta. A delta before any
snapshot cannot be completed: it is not published and is counted (ingest
resubscribes, which brings a snapshot).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Merged:
    data: dict
    type: str                        # "snapshot" | "delta"
    changed_keys: list[str] | None   # keys the delta carried (None for snapshots)


class TickerMerger:
    def __init__(self) -> None:
        self._state: dict[tuple[str, str], dict] = {}

    def __len__(self) -> int:
        return len(self._state)

    def apply(self, category: str, frame: dict) -> Merged | None:
        """The complete ticker for this frame, or None for a delta without a snapshot."""
        data = frame.get("data")
        if not isinstance(data, dict):
            raise ValueError("tickers frame data is not an object")
        symbol = data.get("symbol") or frame.get("topic", "").rsplit(".", 1)[-1]
        key = (category, symbol)
        if frame.get("type", "snapshot") != "delta":
            self._state[key] = dict(data)
            return Merged(data, "snapshot", None)
        current = self._state.get(key)
        if current is None:
            return None
        current.update(data)
        return Merged(dict(current), "delta", [k for k in data if k != "symbol"])

    def forget(self, category: str, symbol: str) -> None:
        self._state.pop((category, symbol), None)
