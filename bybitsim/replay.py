"""``python -m bybitsim.replay RECORDING... [--speed N|max]``: serve a recording made by
ingest (GW_RECORD_DIR) to a gateway, through the simulator.

The simulator runs as usual (handshake, auth, subscribe acks, pongs, REST time) but makes up
no data of its own: it sends the recorded data pushes instead. Each recorded connection is a
track (its pushes in receive order). A track starts when a live connection of its endpoint
holds every topic the track carries (or ``--wait`` seconds after the first of them is held)
and plays once, at the recorded pace divided by ``--speed`` (``max``: no pauses). Each push
goes, byte for byte, to the live connection that holds its topic at that moment; a push
whose topic nobody holds for ``--wait`` seconds is skipped (counted), as Bybit would not
have sent it. Recorded control replies (acks, pongs, auth) are not sent: the simulator
answers the gateway's own requests. ``GET /__sim/state`` carries the replay's progress
under ``replay``.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from common.config import ConfigError, load_settings
from common.logs import get_logger, setup_logging
from common.runtime import StopSignals

from .options import SimOptions, options_from_env
from .protocol import ENDPOINTS
from .server import SimServer
from .sim import Simulator

log = get_logger("bybitsim.replay")
POLL_S = 0.02


# -- reading recordings (the format ingest/recorder.py writes) ------------------------------------
FORMAT, VERSION = "ws-gateway-recording", 1
SUFFIX = ".rec.gz"


class RecordingError(ValueError):
    """A recording file that is not one, or is damaged before its end; the message names it."""


@dataclass(frozen=True, slots=True)
class Record:
    recv_ns: int
    endpoint: str
    conn: str
    sock: int
    raw: bytes
    run: str = ""        # which ingest run wrote it (connection ids repeat across runs)


def recording_files(paths: Iterable[str | Path]) -> list[Path]:
    """Recording files named by ``paths`` (files, or directories of ``*.rec.gz``), oldest first."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob(f"*{SUFFIX}"))
            if not found:
                raise RecordingError(f"{p}: no {SUFFIX} files in this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise RecordingError(f"{p}: no such file or directory")
    return sorted(dict.fromkeys(files), key=lambda f: f.name)


def _decompressed(path: Path, chunk: int = 1 << 16) -> Iterator[bytes]:
    """The file's uncompressed bytes; a stream cut short just ends (no trailer is needed)."""
    with open(path, "rb") as f:
        d = zlib.decompressobj(wbits=31)
        while True:
            data = f.read(chunk)
            if not data:
                return
            while data:
                try:
                    out = d.decompress(data)
                except zlib.error as exc:
                    raise RecordingError(f"{path}: damaged compressed data: {exc}") from None
                if out:
                    yield out
                if d.eof:            # another gzip member may follow
                    data = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                else:
                    data = b""


_HEADER_START = orjson.dumps({"format": FORMAT})[:-1]


def read_file(path: str | Path) -> Iterator[Record]:
    """Every complete record of one file, in order. A file cut short (ingest killed) ends at
    its last complete record; a file that is not a recording, or is damaged before its end,
    raises RecordingError naming it (after the records before the damage)."""
    path = Path(path)
    buf = bytearray()
    pos = 0
    header = None
    n_read = 0
    for data in _decompressed(path):
        buf += data
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                break
            line = bytes(buf[pos:nl])
            if header is None:
                try:
                    header = orjson.loads(line)
                except orjson.JSONDecodeError:
                    header = None
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise RecordingError(f"{path}: not a ws-gateway recording (first line {line[:80]!r})")
                if header.get("version") != VERSION:
                    raise RecordingError(f"{path}: recording version {header.get('version')!r}, "
                                         f"this reader knows {VERSION}")
                pos = nl + 1
                continue
            try:
                h = orjson.loads(line)
                t, ep, conn, sock, n = h["t"], h["ep"], h["conn"], h["sock"], h["n"]
                if not (isinstance(n, int) and n >= 0 and isinstance(t, int) and isinstance(ep, str)):
                    raise ValueError("bad field types")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise RecordingError(f"{path}: record {n_read + 1} is malformed ({exc}): {line[:80]!r}") from None
            end = nl + 1 + n
            if len(buf) < end + 1:
                break                # the rest of this record is in the next chunk (or was never written)
            if buf[end] != 0x0A:
                raise RecordingError(f"{path}: record {n_read + 1} does not end where its length says")
            yield Record(t, ep, str(conn), int(sock), bytes(buf[nl + 1:end]), header.get("run", ""))
            n_read += 1
            pos = end + 1
        if pos > 1 << 20:
            del buf[:pos]
            pos = 0
    if header is None and buf and not _HEADER_START.startswith(bytes(buf[:len(_HEADER_START)])):
        raise RecordingError(f"{path}: not a ws-gateway recording")   # (a header cut short is an empty file)


def read_recording(paths: Iterable[str | Path]) -> Iterator[Record]:
    for path in recording_files(paths):
        yield from read_file(path)


@dataclass
class Track:
    """One recorded connection's data pushes: (recv_ns, topic, raw) in receive order."""
    run: str
    endpoint: str
    conn: str
    frames: list = field(default_factory=list)
    state: str = "waiting"          # waiting, playing, done
    sent: int = 0
    skipped: int = 0
    first_held: float | None = None

    @property
    def topics(self) -> set[str]:
        return {topic for _, topic, _ in self.frames}

    def describe(self) -> dict:
        return {"endpoint": self.endpoint, "conn": self.conn, "run": self.run, "state": self.state,
                "frames": len(self.frames), "sent": self.sent, "skipped": self.skipped,
                "topics": sorted(self.topics)}


def load_tracks(paths) -> tuple[list[Track], dict]:
    """Tracks from recording files or directories; RecordingError for a bad recording."""
    tracks: dict[tuple[str, str, str], Track] = {}
    counts = {"records": 0, "data": 0, "control": 0, "unserved": 0}
    for rec in read_recording(paths):
        counts["records"] += 1
        if rec.endpoint not in ENDPOINTS:      # a socket this simulator does not serve: said, not fatal
            counts["unserved"] += 1
            continue
        try:
            obj = orjson.loads(rec.raw)
        except orjson.JSONDecodeError:
            obj = None        # recorded as received; a frame that never parsed is not replayed
        topic = obj.get("topic") if isinstance(obj, dict) else None
        if not isinstance(topic, str) or not topic:
            counts["control"] += 1
            continue
        counts["data"] += 1
        key = (rec.run, rec.endpoint, rec.conn)
        track = tracks.get(key)
        if track is None:
            track = tracks[key] = Track(rec.run, rec.endpoint, rec.conn)
        track.frames.append((rec.recv_ns, topic, rec.raw))
    for track in tracks.values():
        track.frames.sort(key=lambda f: f[0])     # stable: equal times keep their recorded order
    return sorted(tracks.values(), key=lambda t: t.frames[0][0]), counts


class Replayer:
    def __init__(self, tracks: list[Track], speed: float | None, wait_s: float, counts: dict | None = None):
        self.tracks, self.speed, self.wait_s = tracks, speed, wait_s
        self.counts = counts or {}
        self.sim: Simulator | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._tasks: set[asyncio.Task] = set()
        self.finished = asyncio.Event()

    def status(self) -> dict:
        states = [t.state for t in self.tracks]
        return {"speed": self.speed or "max", "tracks": len(self.tracks),
                "waiting": states.count("waiting"), "playing": states.count("playing"),
                "done": states.count("done"), "finished": self.finished_at is not None,
                "frames": sum(len(t.frames) for t in self.tracks),
                "sent": sum(t.sent for t in self.tracks), "skipped": sum(t.skipped for t in self.tracks),
                "recorded": self.counts, "track_list": [t.describe() for t in self.tracks]}

    def _holder(self, endpoint: str, topic: str):
        for conn in self.sim.matching(endpoint):
            if topic in conn.topics and not conn.closing:
                return conn
        return None

    async def run(self) -> None:
        """Start each track once its topics are held; returns when every track has played."""
        if not self.tracks:
            self._finish()
            return
        while any(t.state == "waiting" for t in self.tracks):
            now = time.monotonic()
            for track in self.tracks:
                if track.state != "waiting":
                    continue
                held = {tp for tp in track.topics if self._holder(track.endpoint, tp) is not None}
                if held and track.first_held is None:
                    track.first_held = now
                if held == track.topics or (held and now - track.first_held >= self.wait_s):
                    track.state = "playing"
                    self.started_at = self.started_at or now
                    log.info("track_started", endpoint=track.endpoint, conn=track.conn, frames=len(track.frames),
                             topics_held=len(held), topics=len(track.topics))
                    task = asyncio.create_task(self._play(track), name=f"replay-{track.conn}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(POLL_S)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self._finish()

    def _finish(self) -> None:
        self.finished_at = time.monotonic()
        self.finished.set()
        s = self.status()
        log.info("replay_finished", tracks=s["tracks"], sent=s["sent"], skipped=s["skipped"])

    async def _play(self, track: Track) -> None:
        t0, start = track.frames[0][0], time.monotonic()
        try:
            for recv_ns, topic, raw in track.frames:
                if self.speed:
                    delay = start + (recv_ns - t0) / 1e9 / self.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if await self._send(track, topic, raw):
                    track.sent += 1
                else:
                    track.skipped += 1
                if not self.speed and track.sent % 200 == 0:
                    await asyncio.sleep(0)       # at full speed, let the simulator answer requests too
        finally:
            track.state = "done"
            log.info("track_done", endpoint=track.endpoint, conn=track.conn, sent=track.sent, skipped=track.skipped)

    async def _send(self, track: Track, topic: str, raw: bytes) -> bool:
        deadline = time.monotonic() + self.wait_s
        while True:
            conn = self._holder(track.endpoint, topic)
            if conn is not None:
                try:
                    await conn.ws.send(raw, text=True)    # the recorded bytes, unchanged
                    self.sim.sent(conn, topic)
                    return True
                except Exception as exc:     # the socket went away: the next holder gets the next push
                    log.info("replay_send_failed", conn_id=conn.id, topic=topic, error=repr(exc))
                    return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()


class ReplaySimulator(Simulator):
    """The simulator's state with the replay's progress in ``state`` and ``/__sim/replay``."""

    def __init__(self, opts: SimOptions, replayer: Replayer):
        super().__init__(opts)
        self.replayer = replayer

    def op_state(self, payload: dict) -> dict:
        return {**super().op_state(payload), "replay": self.replayer.status()}

    def op_replay(self, payload: dict) -> dict:
        return self.replayer.status()


class ReplayServer(SimServer):
    """A SimServer that makes up no data and plays a recording instead."""

    def __init__(self, opts: SimOptions, tracks: list[Track], speed: float | None, wait_s: float = 5.0,
                 counts: dict | None = None):
        super().__init__(dataclasses.replace(opts, rate=0.0, account_rate=0.0))
        self.replayer = Replayer(tracks, speed, wait_s, counts)
        self.sim = ReplaySimulator(self.opts, self.replayer)
        self.replayer.sim = self.sim
        self._replay_task: asyncio.Task | None = None

    async def start(self) -> None:
        await super().start()
        self._replay_task = asyncio.get_running_loop().create_task(self.replayer.run())

    async def stop(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
        self.replayer.cancel()
        await super().stop()


def parse_speed(text: str) -> float | None:
    """``max`` -> None (no pauses); else a factor > 0."""
    if text.lower() == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--speed: expected a number > 0 or 'max', got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--speed: expected a number > 0 or 'max', got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bybitsim.replay",
        description="Serve a recording (GW_RECORD_DIR) through the simulator to a gateway with BYBIT_ENV=sim.")
    parser.add_argument("recording", nargs="+", help="recording directories or .rec.gz files")
    parser.add_argument("--speed", type=parse_speed, default=1.0,
                        help="1 = recorded pace (default), 10 = ten times faster, max = no pauses")
    parser.add_argument("--host", default=None, help="default SIM_HOST")
    parser.add_argument("--port", type=int, default=None, help="default SIM_PORT")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds a track waits for the rest of its topics, and a push for a holder (default 5)")
    parser.add_argument("--exit-when-done", action="store_true", help="exit once every track has played")
    args = parser.parse_args(argv)
    if not args.wait > 0:
        parser.error("--wait: expected seconds > 0")
    if args.port is not None and not 0 <= args.port <= 65535:
        parser.error("--port: expected 0..65535")
    return args


async def serve(server: ReplayServer, exit_when_done: bool) -> None:
    stop = asyncio.Event()
    StopSignals(lambda _sig: stop.set()).install(asyncio.get_running_loop())
    await server.start()
    waits = [asyncio.ensure_future(stop.wait())]
    if exit_when_done:
        waits.append(asyncio.ensure_future(server.replayer.finished.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
        opts = options_from_env(settings)
    except ConfigError as exc:
        print(f"bybitsim.replay: bad setting: {exc}", file=sys.stderr)
        return 2
    opts = dataclasses.replace(opts, host=args.host or opts.host, port=opts.port if args.port is None else args.port)
    setup_logging("simulator", settings.log_level)
    try:
        tracks, counts = load_tracks(args.recording)
    except (RecordingError, OSError) as exc:
        print(f"bybitsim.replay: {exc}", file=sys.stderr)
        return 2
    log.info("replay_loaded", tracks=len(tracks), **counts, speed=args.speed or "max", host=opts.host, port=opts.port)
    if counts["unserved"]:
        log.warning("replay_unserved_endpoints", records=counts["unserved"],
                    hint=f"only {', '.join(ENDPOINTS)} are served")
    try:
        asyncio.run(serve(ReplayServer(opts, tracks, args.speed, args.wait, counts), args.exit_when_done))
    except OSError as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
