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

from persister.rows import Row


def _default(obj):
    if isinstance(obj, Decimal):
        return str(obj)
    raise TypeError(f"cannot spool {type(obj).__name__}")


class Spool:
    def __init__(self, path: Path):
        self.path = path
        self._out = None
        self._in = None
        self._written = 0       # lines appended and not yet read back
        self.corrupt = 0        # unreadable lines skipped (a torn write from a crash)
        if path.exists() and path.stat().st_size:
            with path.open("rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":  # torn last line from a crash: end it, it is skipped on read
                    f.write(b"\n")
            with path.open("rb") as f:
                self._written = sum(1 for _ in f)

    def __len__(self) -> int:
        return self._written

    def append(self, rows: list[Row]) -> None:
        if not rows:
            return
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = self.path.open("ab")
        self._out.write(b"".join(
            orjson.dumps([r.table, r.key, r.rank, r.values, r.event_id], default=_default) + b"\n"
            for r in rows))
        self._out.flush()
        self._written += len(rows)

    def read(self, n: int) -> list[Row]:
        """Up to ``n`` rows in the order they were appended."""
        if not self._written:
            return []
        if self._in is None:
            self._in = self.path.open("rb")
        rows = []
        taken = 0
        while len(rows) < n:
            line = self._in.readline()
            if not line:
                break
            taken += 1
            try:
                table, key, rank, values, event_id = orjson.loads(line)
            except (orjson.JSONDecodeError, ValueError):
                self.corrupt += 1
                continue
            rows.append(Row(table, tuple(key), tuple(rank), tuple(values), event_id))
        self._written -= taken
        return rows

    def remove_if_drained(self) -> bool:
        """Delete the file once every line was read; call it only after those rows are written."""
        if self._written or not self.path.exists():
            return False
        self.close()
        self.path.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        for f in (self._in, self._out):
            if f is not None:
                f.close()
        self._in = self._out = None
