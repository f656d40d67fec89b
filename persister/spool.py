"""Append-only overflow file for rows that do not fit the in-memory bound.

One JSON line per row: ``[table, key, rank, values, event_id]``. Decimals are
written as strings, which the sink passes to NUMERIC columns unchanged. Reading
is sequential; once everything appended has been read and the caller has
written it to PostgreSQL, the caller removes the file (``remove_if_drained``). A file left over by a
previous run is read again from the start: every write is idempotent.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson

from common.runtime import LineSpool
from persister.rows import Row


def _default(obj):
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"cannot spool {type(obj).__name__}")


class RowSpool:
    """Rows on a ``LineSpool`` (common/runtime.py): the file and its cursor are shared code."""

    def __init__(self, path: Path):
        self.path = path
        self._lines: LineSpool | None = LineSpool(path) if path.exists() and path.stat().st_size else None
        self.corrupt = 0        # unreadable lines skipped (a torn write from a crash)

    def __len__(self) -> int:
        return self._lines.depth if self._lines is not None else 0

    def append(self, rows: list[Row]) -> None:
        if not rows:
            return
        if self._lines is None:
            self._lines = LineSpool(self.path)
        self._lines.append([orjson.dumps([r.table, r.key, r.rank, r.values, r.event_id], default=_default)
                            for r in rows])

    def read(self, n: int) -> list[Row]:
        """Up to ``n`` rows in the order they were appended."""
        if self._lines is None:
            return []
        rows = []
        for line in self._lines.read(n):
            try:
                table, key, rank, values, event_id = orjson.loads(line)
            except (orjson.JSONDecodeError, ValueError):
                self.corrupt += 1
                continue
            rows.append(Row(table, tuple(key), tuple(rank), tuple(values), event_id))
        return rows

    def remove_if_drained(self) -> bool:
        """Delete the file once every line was read; call it only after those rows are written."""
        if self._lines is None or self._lines.depth:
            return False
        self._lines.remove()
        self._lines = None
        return True

    def close(self) -> None:
        if self._lines is not None:
            self._lines.close()
