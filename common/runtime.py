"""What every process of the gateway does the same way: back off, stop on signals, write and
read its status file, keep an append-only spool, estimate a remote clock.

Small and dependency-free (orjson aside), so each role uses one copy instead of its own.
"""
from __future__ import annotations

import gc
import os
import signal
import time
from pathlib import Path
from typing import Callable

import orjson

# -- backoff ------------------------------------------------------------------------------


def backoff_s(attempt: int, cap_s: float, base_s: float = 0.5, jitter: float | None = None) -> float:
    """Delay before retry number ``attempt``: 0 for attempt <= 0 (the first retry is immediate),
    then base, 2*base, 4*base ... capped at ``cap_s``. ``jitter`` (a number in [0, 1)) scales the
    delay into [50%, 100%] of that, so many clients do not retry in step."""
    if attempt <= 0:
        return 0.0
    delay = min(cap_s, base_s * 2 ** min(attempt - 1, 62))
    return delay if jitter is None else delay * (0.5 + jitter / 2)


# -- garbage collection -------------------------------------------------------------------

# Young-generation size before a collection (Python's default: 700). Each frame allocates a few
# containers that die within the loop turn; at the default, tens of thousands of collections a
# second promoted waiting frames into the old generations, and full collections walked them all.
GC_GEN0 = 20_000


def tune_gc(gen0: int = GC_GEN0) -> None:
    """Once the process is set up: move everything made so far out of the collector's sight
    (modules, settings, the loop) and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)


# -- CPU priority -------------------------------------------------------------------------


def lower_priority(increment: int) -> int:
    """Lower this process's CPU priority by ``increment`` (nice; once, at start: children and
    gunicorn's workers inherit it). Returns the niceness now in force."""
    return os.nice(increment)


# -- stopping -----------------------------------------------------------------------------


class StopSignals:
    """SIGTERM/SIGINT in two stages: the first asks the process to stop cleanly (``on_stop``),
    the second ends it at once (``on_force``, by default ``os._exit(1)``): an operator who sends
    it twice means it.

    ``install(loop)`` uses the asyncio loop's handlers; ``install()`` plain ``signal.signal``
    (synchronous processes; ``on_stop`` then runs in the signal handler and must be short)."""

    def __init__(self, on_stop: Callable[[str], None], on_force: Callable[[str], None] | None = None):
        self.on_stop, self.on_force = on_stop, on_force
        self.requested: str | None = None        # the signal that asked first

    def __call__(self, signame: str) -> None:
        if self.requested is not None:
            if self.on_force is not None:
                self.on_force(signame)
            else:
                os._exit(1)
            return
        self.requested = signame       # before the callback: a handler can be interrupted by the next signal
        self.on_stop(signame)

    def install(self, loop=None) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            if loop is not None:
                loop.add_signal_handler(sig, self, sig.name)
            else:
                signal.signal(sig, lambda signum, _frame: self(signal.Signals(signum).name))
        return self


# -- status files ---------------------------------------------------------------------------

# Every status file has these keys; each process adds its own sections (docs/internals.md).
STATUS_KEYS = ("process", "pid", "started_at", "updated_at")


def status_doc(process: str, started_at: float, **sections) -> dict:
    """The common head of a status file, then the process's own sections."""
    return {"process": process, "pid": os.getpid(), "started_at": started_at, "updated_at": time.time(),
            **sections}


def write_status(path: Path, doc: dict, indent: bool = False) -> None:
    """Replace ``path`` atomically (a temp file, then a rename): readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(doc, default=str, option=orjson.OPT_INDENT_2 if indent else 0))
    os.replace(tmp, path)


def read_status(path: Path) -> dict | None:
    """A status file as written by ``write_status``; None when missing, unreadable or not a JSON
    object (a reader must cope with a process that never wrote one, or a file being replaced)."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


# -- spool ----------------------------------------------------------------------------------


class LineSpool:
    """An append-only file of one record per line, read back in order from a cursor.

    A line cut short by a crash is ended at open and skipped when read (``corrupt``).
    ``depth`` counts lines written and not yet read. What the records are and when the file
    may go is the caller's: ``truncate()`` once everything read back is safe elsewhere.
    """

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        self._read_at = 0
        self.corrupt = 0
        size = os.fstat(self._fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":          # torn last line from a crash: end it, skip it on read
                    os.write(self._fd, b"\n")
        self.depth = self._count_lines()

    def _count_lines(self) -> int:
        with open(self.path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))

    def append(self, lines: list[bytes]) -> None:
        """Each element one record without its newline."""
        if lines:
            os.write(self._fd, b"".join(line + b"\n" for line in lines))
            self.depth += len(lines)

    def read(self, limit: int) -> list[bytes]:
        """Up to ``limit`` records in the order they were appended (complete lines only)."""
        out: list[bytes] = []
        if not self.depth:
            return out
        with open(self.path, "rb") as f:
            f.seek(self._read_at)
            while len(out) < limit:
                line = f.readline()
                if not line.endswith(b"\n"):
                    break
                self._read_at += len(line)
                self.depth -= 1
                out.append(line[:-1])
        return out

    def unread(self) -> bytes:
        """Every complete line not yet read (for a rewrite)."""
        with open(self.path, "rb") as f:
            f.seek(self._read_at)
            return f.read()

    def truncate(self) -> None:
        os.ftruncate(self._fd, 0)
        self._read_at, self.depth = 0, 0

    def replace(self, data: bytes) -> None:
        """Make the file exactly ``data`` (durably, by rename), read again from its start."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._read_at = 0
        self.depth = self._count_lines()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- a remote clock ---------------------------------------------------------------------------


def clock_offset_ms(server_ms: int, sent_ms: float, received_ms: float) -> int:
    """A remote clock's offset from ours: its reading against the midpoint of the round trip
    that fetched it (the answer was stamped somewhere inside it)."""
    return int(server_ms - (sent_ms + received_ms) / 2)
