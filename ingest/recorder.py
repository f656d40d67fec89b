"""Recording of every raw frame ingest receives from Bybit, and the reader of recordings.

The read loop only appends (receive time, endpoint, connection, socket, bytes) to a bounded
queue; a thread compresses and writes. When the disk does not keep up the queue fills and
frames are dropped (counted), never waited for. Files are gzip, rotated by size and age, and
the oldest are deleted past a total size.

File format (``frames-<UTC time>-<pid>.rec.gz``): gzip of a first line
``{"format": "ws-gateway-recording", "version": 1, "run": ..., "created_ns": ...}`` and then
per frame a JSON line ``{"t": recv_ns, "ep": endpoint, "conn": connection id, "sock": socket
serial, "n": length}``, the frame's ``n`` bytes exactly as received, and a newline. The stream
is sync-flushed every FLUSH_S, so a file cut short (ingest killed) reads up to its last
complete record. The reader is bybitsim/replay.py's (the simulator imports nothing of ingest).
"""
from __future__ import annotations

import collections
import gzip
import os
import threading
import time
import uuid
from pathlib import Path

import orjson

from common.config import ConfigError
from common.logs import RateLimited, get_logger

log = get_logger(__name__)
FORMAT, VERSION = "ws-gateway-recording", 1
SUFFIX = ".rec.gz"
FLUSH_S = 0.2             # a kill loses at most about this much of what was received
POLL_S = 0.05             # the writer looks at the queue this often (the reader never signals it)
OVERHEAD = 150            # bytes the queue counts per frame on top of its length (tuple, header)
BATCH_MAX = 8192          # frames written per compress call
RETRY_S = 5.0             # after a write error, a new file is tried this much later
LEVEL = 3                 # gzip level: simulator frames 6.4:1 at 141 MB/s, level 6 7.6:1 at 60 MB/s
MB = 2 ** 20


def prepare_dir(directory: Path) -> None:
    """Create ``directory`` and check it is writable; ConfigError naming GW_RECORD_DIR if not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"GW_RECORD_DIR: cannot write recordings to {directory}: {exc.strerror or exc}") from None


def file_name(ns: int, pid: int) -> str:
    """A recording file's name: its creation time to the nanosecond (UTC), so names sort as the
    files were made. One clock reading: seconds and nanoseconds read apart could straddle a
    second and name a later file as the earlier one."""
    sec, frac = divmod(ns, 1_000_000_000)
    return f"frames-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(sec))}_{frac:09d}Z-{pid}{SUFFIX}"


class Recorder:
    def __init__(self, directory: Path, rotate_bytes: int, rotate_s: float, max_bytes: int,
                 queue_bytes: int, level: int = LEVEL):
        if rotate_bytes < 1 or not rotate_s > 0 or max_bytes < rotate_bytes or queue_bytes < 1:
            raise ValueError("rotate_bytes >= 1, rotate_s > 0, max_bytes >= rotate_bytes, queue_bytes >= 1")
        self.dir = Path(directory)
        self.rotate_bytes, self.rotate_s, self.max_bytes = rotate_bytes, rotate_s, max_bytes
        self.queue_bytes, self.level = queue_bytes, level
        self.run = uuid.uuid4().hex[:12]
        self._queue: collections.deque = collections.deque()
        # each counter is written by one thread only: in_* by the reader, out_* by the writer
        self._in_bytes = self._out_bytes = 0
        self.dropped = 0             # refused by a full queue (reader side)
        self.lost = 0                # taken from the queue but not written (write errors)
        self.records = 0
        self.files_created = 0
        self.files_deleted = 0
        self.bytes_deleted = 0
        self.errors = 0
        self.last_error: str | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._gz: gzip.GzipFile | None = None
        self._raw = None
        self._current: Path | None = None
        self._opened_at = 0.0
        self._unflushed = False
        self._last_flush = 0.0
        self._retry_at = 0.0
        self._old: collections.deque[tuple[Path, int]] = collections.deque()   # closed files, oldest first
        self._old_bytes = 0
        self._warn = RateLimited(log, 10.0)

    @classmethod
    def from_settings(cls, settings) -> "Recorder":
        return cls(settings.record_dir, int(settings.record_rotate_mb * MB), settings.record_rotate_s,
                   int(settings.record_max_mb * MB), int(settings.record_queue_mb * MB))

    # -- the read loop's side --------------------------------------------------------------
    def record(self, recv_ns: int, endpoint: str, conn: str, sock: int, raw: bytes) -> None:
        """Queue one received frame; never blocks: a full queue drops it (counted)."""
        size = len(raw) + OVERHEAD
        if self._in_bytes - self._out_bytes + size > self.queue_bytes or self._closing:
            self.dropped += 1
            self._warn("warning", "recording_dropping", dropped=self.dropped + self.lost,
                       queued_mb=round((self._in_bytes - self._out_bytes) / MB, 1))
            return
        self._in_bytes += size
        self._queue.append((recv_ns, endpoint, conn, sock, raw, size))

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        prepare_dir(self.dir)
        for path in sorted(self.dir.glob(f"*{SUFFIX}")):     # earlier runs' files count towards the bound
            try:
                size = path.stat().st_size
            except OSError:
                continue
            self._old.append((path, size))
            self._old_bytes += size
        self._enforce_total(0)
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        log.info("recording", dir=str(self.dir), rotate_mb=round(self.rotate_bytes / MB, 3),
                 rotate_s=self.rotate_s, max_mb=round(self.max_bytes / MB, 3), files_kept=len(self._old))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, end the current file; new frames are refused from now on."""
        self._closing = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("recorder_close_timed_out", queued=len(self._queue))
        else:
            self._end_file()
        log.info("recording_closed", **self.status())

    def status(self) -> dict:
        raw, path, current = self._raw, self._current, 0     # the writer may swap them meanwhile
        if raw is not None:
            try:
                current = raw.tell()
            except (OSError, ValueError):
                pass
        return {"enabled": True, "dir": str(self.dir), "current_file": path.name if path else None,
                "files": len(self._old) + (path is not None), "bytes": self._old_bytes + current,
                "records": self.records, "dropped": self.dropped + self.lost,
                "queued": len(self._queue), "queued_mb": round((self._in_bytes - self._out_bytes) / MB, 2),
                "files_created": self.files_created, "files_deleted": self.files_deleted,
                "bytes_deleted": self.bytes_deleted, "errors": self.errors, "last_error": self.last_error}

    # -- the writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                now = time.monotonic()
                if batch:
                    self._write(batch, now)
                if self._gz is not None:
                    if self._unflushed and (not batch or now - self._last_flush >= FLUSH_S):
                        self._flush(now)
                    if now - self._opened_at >= self.rotate_s:
                        self._end_file()     # an idle file is closed on time too, whole
                if not batch:
                    if self._closing and not self._queue:
                        break
                    time.sleep(POLL_S)
        except Exception as exc:     # the recorder must never take ingest down: say so and stop
            self.errors += 1
            self.last_error = f"writer failed: {exc!r}"
            log.exception("recorder_failed")
            self._closing = True
        finally:
            self._end_file()

    def _take(self) -> list:
        q, batch = self._queue, []
        while q and len(batch) < BATCH_MAX:
            batch.append(q.popleft())
        return batch

    def _write(self, batch: list, now: float) -> None:
        self._out_bytes += sum(item[5] for item in batch)
        if now < self._retry_at:
            self.lost += len(batch)
            return
        parts = []
        for recv_ns, endpoint, conn, sock, raw, _ in batch:
            parts.append(orjson.dumps({"t": recv_ns, "ep": endpoint, "conn": conn, "sock": sock, "n": len(raw)}))
            parts.append(b"\n")
            parts.append(raw)
            parts.append(b"\n")
        blob = b"".join(parts)
        try:
            if self._gz is not None and (self._raw.tell() >= self.rotate_bytes or now - self._opened_at >= self.rotate_s):
                self._end_file()
            if self._gz is None:
                self._open(now)
            self._gz.write(blob)
        except OSError as exc:
            self._failed(exc, len(batch), now)
            return
        self.records += len(batch)
        self._unflushed = True
        self._enforce_total(self._raw.tell())

    def _open(self, now: float) -> None:
        path = self.dir / file_name(time.time_ns(), os.getpid())
        raw = open(path, "xb")
        try:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=self.level, mtime=0)
            gz.write(orjson.dumps({"format": FORMAT, "version": VERSION, "run": self.run,
                                   "created_ns": time.time_ns(), "pid": os.getpid()}) + b"\n")
        except BaseException:
            raw.close()
            raise
        self._raw, self._gz, self._current = raw, gz, path
        self._opened_at, self._last_flush = now, now
        self.files_created += 1
        log.info("recording_file_opened", file=path.name)

    def _flush(self, now: float) -> None:
        try:
            self._gz.flush()         # Z_SYNC_FLUSH: everything so far is decodable from the file
        except OSError as exc:
            self._failed(exc, 0, now)
            return
        self._unflushed, self._last_flush = False, now

    def _end_file(self) -> None:
        gz, raw, path = self._gz, self._raw, self._current
        if gz is None:
            return
        self._unflushed = False
        try:
            gz.close()
        except OSError as exc:
            self._note_error(exc)
        finally:
            try:
                raw.close()
            except OSError:
                pass
            # only now: status() shows no current file once the file is whole on disk (its gzip
            # trailer written), which is what a reader of the directory waits for
            self._gz = self._raw = self._current = None
        try:
            size = path.stat().st_size
        except OSError:
            return
        self._old.append((path, size))
        self._old_bytes += size
        self._enforce_total(0)

    def _failed(self, exc: OSError, n: int, now: float) -> None:
        self.lost += n
        self._note_error(exc)
        self._retry_at = now + RETRY_S
        self._end_file()

    def _note_error(self, exc: OSError) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        self._warn("warning", "recording_write_failed", error=self.last_error, retry_in_s=RETRY_S,
                   dropped=self.dropped + self.lost)

    def _enforce_total(self, current: int) -> None:
        """Delete the oldest closed files while everything on disk is over the bound."""
        while self._old and self._old_bytes + current > self.max_bytes:
            path, size = self._old.popleft()
            self._old_bytes -= size
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._note_error(exc)
                continue
            self.files_deleted += 1
            self.bytes_deleted += size
            log.info("recording_file_deleted", file=path.name, bytes=size, reason="GW_RECORD_MAX_MB",
                     deleted=self.files_deleted)
