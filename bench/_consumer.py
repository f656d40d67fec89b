"""A consumer process for the bench, fault and soak runs: reads every ``ws-gateway.*`` queue.

Writes three JSON-lines files in ``out_dir``:
- ``windows.jsonl``: one line per ``window_s``: market latency histogram (event ``received_at``
  -> consume time, ms; per class also from Bybit's ``ts``, the event's ``exchange_ts``), counts
  per class, ``stream_seq`` gaps, duplicates and restarts, and the order books healed by a
  snapshot after a hole (``BookHeals``) and those still broken;
- ``account.jsonl``: every account event as received (body fields, ``mid`` = message_id, ``rk`` =
  routing key), for the consumer-side ledger (tests/support/ledger.py);
- ``system.jsonl``: every system event with its consume time (same extra fields).
Latency is measured at consume time, an upper bound of "frame received -> confirmed by RabbitMQ".
"""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from pathlib import Path

MARKET = ("trades", "tickers", "orderbook", "klines", "liquidations")
ACCOUNT = ("order_status", "executions", "positions", "balances")
QUEUES = tuple(f"ws-gateway.{c}" for c in MARKET + ACCOUNT + ("system",))


def iso_to_ns(s: str) -> int:
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def bucket(ms: float) -> float:
    """Histogram key: 0.1 ms steps below 100 ms, 1 ms steps below 10 s, then 100 ms steps."""
    if ms < 100:
        return round(ms, 1)
    if ms < 10_000:
        return float(round(ms))
    return float(round(ms, -2))


def percentile(hist: dict, p: float) -> float | None:
    """The ``p``-th percentile of a {value: count} histogram."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = p / 100 * total, 0
    for value in sorted(hist):
        seen += hist[value]
        if seen >= rank:
            return value
    return max(hist)


def merge(windows: list[dict], cls: str | None = None, since: str = "received") -> Counter:
    """The windows' market latency histograms merged (``cls``: that class's only; ``since="exchange"``:
    that class's age from Bybit's ``ts``, the event's ``exchange_ts``, instead of ``received_at``)."""
    out: Counter = Counter()
    by = "hist_by_class_exchange" if since == "exchange" else "hist_by_class"
    for w in windows:
        h = w["hist"] if cls is None else (w.get(by) or {}).get(cls, {})
        out.update({float(k): v for k, v in h.items()})
    return out


class Streams:
    """``stream_seq`` bookkeeping per routing key and ``stream_epoch``: a jump is a gap, anything
    at or below the last number a duplicate (a republish); a new epoch of a known key a restart."""

    def __init__(self):
        self.last: dict[str, int] = {}
        self.keys: set[str] = set()
        self.gaps = self.dups = self.restarts = 0

    def see(self, stream: str, seq: int) -> None:
        last = self.last.get(stream)
        if last is None:
            if stream.split("@", 1)[0] in self.keys:
                self.restarts += 1
            self.keys.add(stream.split("@", 1)[0])
            self.last[stream] = seq
            return
        if seq == last + 1:
            self.last[stream] = seq
        elif seq > last + 1:
            self.gaps += seq - last - 1
            self.last[stream] = seq
        else:
            self.dups += 1


class BookHeals:
    """How long a consumer's order book stays wrong after a hole, judged from what it receives.

    Per book routing key: a ``stream_seq`` jump (events dropped somewhere in the gateway) breaks
    the book until the next ``snapshot`` event of that key. Each healed hole is recorded as
    ``[seen_ms, quiet_ms, deltas, key, healed at, snapshot_ms]``: ``seen_ms`` from the first event that showed the hole (a
    delta after it, or the snapshot itself) to the snapshot; ``quiet_ms`` from the last event
    before the hole to the snapshot (how long the book had no correct update); ``deltas`` the
    deltas received in between (a consumer must discard them); ``snapshot_ms`` the snapshot's own
    age (its ``received_at``, when ingest made it, to now: its way through the gateway and
    RabbitMQ). Each ``stream_epoch`` (one run of
    the publisher's numbering) is judged on its own, a delta first in one being a hole too; events
    without a ``type`` (the bench's forwarder shares these queues) are not judged."""

    def __init__(self):
        self.keys: dict[tuple, list] = {}     # (key, epoch) -> [last seq, last at, hole or None]
        self.healed: list[list] = []          # since the last take()

    def see(self, key: str, epoch, seq: int, kind, now: float, made: float = 0.0) -> None:
        if kind is None:
            return          # not a book event of the gateway (the bench's forwarder shares the queues)
        st = self.keys.get((key, epoch))
        if st is None:
            st = self.keys[(key, epoch)] = [None, now, None]
        last, hole = st[0], st[2]
        jumped = last is None or seq > last + 1
        if kind == "snapshot":
            if hole is None and jumped and last is not None:
                hole = [st[1], now, 0]            # the snapshot itself shows the hole it heals
            if hole is not None:
                self.healed.append([round((now - hole[1]) * 1000, 1), round((now - hole[0]) * 1000, 1), hole[2],
                                    key, round(now, 3), round((now - made) * 1000, 1)])
                st[2] = None
        else:
            if hole is None and jumped:
                hole = st[2] = [st[1], now, 0]    # [last good at, seen at, deltas since]
            if hole is not None:
                hole[2] += 1
        st[0] = seq if last is None else max(last, seq)
        st[1] = now

    def take(self) -> list[list]:
        out, self.healed = self.healed, []
        return out

    def open(self, now: float) -> dict[str, float]:
        """Keys broken now -> ms since the hole showed."""
        return {f"{k}@{e}": round((now - st[2][1]) * 1000, 1) for (k, e), st in self.keys.items() if st[2] is not None}


def run(amqp_url: str, out_dir: str, stop, ready, window_s: float = 1.0) -> None:
    """Consume until ``stop`` (an Event) is set; ``ready.set()`` once the first connection consumes."""
    import orjson
    import pika
    import pika.exceptions

    out = Path(out_dir)
    files = {name: open(out / f"{name}.jsonl", "ab", buffering=0) for name in ("windows", "account", "system")}
    streams = Streams()
    heals = BookHeals()
    state = {"hist": Counter(), "by_class": {}, "by_class_x": {}, "counts": Counter(), "n": 0, "tag": 0,
             "reconnects": 0}

    def on_message(channel, method, props, body):
        now = time.time_ns()
        doc = orjson.loads(body)
        cls = doc.get("event_class")
        state["counts"][cls] += 1
        if cls in MARKET:
            made = iso_to_ns(doc["received_at"])       # parsed once: books used it twice
            b = bucket((now - made) / 1e6)
            state["hist"][b] += 1
            by = state["by_class"].get(cls)
            if by is None:
                by = state["by_class"][cls] = Counter()
            by[b] += 1
            xts = doc.get("exchange_ts")
            if xts.__class__ is int:    # Bybit's ts (ms): also the time the event spent before ingest read it
                by = state["by_class_x"].get(cls)
                if by is None:
                    by = state["by_class_x"][cls] = Counter()
                by[bucket(now / 1e6 - xts)] += 1
            streams.see(f"{method.routing_key}@{doc.get('stream_epoch')}", doc["stream_seq"])
            if cls == "orderbook":
                heals.see(method.routing_key, doc.get("stream_epoch"), doc["stream_seq"], doc.get("type"), now / 1e9,
                          made / 1e9)
        elif cls in ACCOUNT:
            files["account"].write(orjson.dumps({
                "cls": cls, "event_class": cls, "source": doc.get("source"), "data": doc.get("data"),
                "version": doc.get("version"), "exchange_ts": doc.get("exchange_ts"),
                "stream_seq": doc.get("stream_seq"), "stream_epoch": doc.get("stream_epoch"),
                "mid": props.message_id, "rk": method.routing_key, "at": now / 1e9}) + b"\n")
        elif cls == "system":
            files["system"].write(orjson.dumps({
                "kind": doc.get("topic"), "event_class": cls, "topic": doc.get("topic"), "data": doc.get("data"),
                "stream_seq": doc.get("stream_seq"), "stream_epoch": doc.get("stream_epoch"),
                "mid": props.message_id, "rk": method.routing_key,
                "at": now / 1e9, "received_at": doc.get("received_at")}) + b"\n")
        state["n"] += 1
        state["tag"] = method.delivery_tag
        if state["n"] % 200 == 0:
            channel.basic_ack(method.delivery_tag, multiple=True)
            state["tag"] = 0

    def window() -> None:
        files["windows"].write(orjson.dumps({
            "t": time.time(), "hist": {str(k): v for k, v in state["hist"].items()},
            "hist_by_class": {c: {str(k): v for k, v in h.items()} for c, h in state["by_class"].items()},
            "hist_by_class_exchange": {c: {str(k): v for k, v in h.items()} for c, h in state["by_class_x"].items()},
            "counts": dict(state["counts"]), "gaps": streams.gaps, "dups": streams.dups,
            "restarts": streams.restarts, "reconnects": state["reconnects"],
            "book_heals": heals.take(), "books_open": heals.open(time.time())}) + b"\n")
        state["hist"], state["counts"], state["by_class"], state["by_class_x"] = Counter(), Counter(), {}, {}

    next_window = time.monotonic() + window_s
    first = True
    try:
        while not stop.is_set():       # one pass per broker connection (a fault may stop the broker)
            conn = None
            try:
                conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
                ch = conn.channel()
                ch.basic_qos(prefetch_count=2000)

                def cancelled(_frame):
                    # a queue deleted under us: consume again once the gateway has declared it anew
                    raise pika.exceptions.ConsumerCancelled("queue deleted")

                ch.add_on_cancel_callback(cancelled)
                for queue in QUEUES:
                    ch.basic_consume(queue, on_message)
                state["tag"] = 0
                if first:
                    ready.set()
                    first = False
                while not stop.is_set():
                    conn.process_data_events(time_limit=0.05)
                    if state["tag"]:
                        ch.basic_ack(state["tag"], multiple=True)
                        state["tag"] = 0
                    if time.monotonic() >= next_window:
                        next_window += window_s
                        window()
            except pika.exceptions.AMQPError:
                state["reconnects"] += 1
                stop.wait(0.5)         # broker away: retry at a steady pace until it is back
                while time.monotonic() >= next_window:
                    next_window += window_s
                    window()
            finally:
                if conn is not None and conn.is_open:
                    try:
                        conn.close()
                    except pika.exceptions.AMQPError:
                        pass
    finally:
        for f in files.values():
            f.close()


class QueueDepths:
    """Depth of every ws-gateway.* queue through one AMQP connection (reopened after a failure)."""

    def __init__(self, url: str):
        self.url, self.conn = url, None

    def read(self) -> dict[str, int]:
        import pika

        try:
            if self.conn is None or not self.conn.is_open:
                self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
            ch = self.conn.channel()
            out = {q.split(".", 1)[1]: ch.queue_declare(q, passive=True).method.message_count for q in QUEUES}
            ch.close()
            return out
        except Exception:   # a depth we cannot read this time is a gap in the plot, not a failure
            self.conn = None
            return {}

    def close(self) -> None:
        try:
            if self.conn is not None and self.conn.is_open:
                self.conn.close()
        except Exception:   # the broker already dropped it: nothing left to close
            pass
        self.conn = None


class _Ready:
    """``ready.set()`` in the consumer process: a file the parent waits for."""

    def __init__(self, path: Path):
        self.path = path

    def set(self) -> None:
        self.path.write_text("ready")


class ConsumerProcess:
    """The consumer as a child process (``python bench/_consumer.py``): SIGTERM stops it."""

    def __init__(self, amqp_url: str, out_dir: Path, window_s: float = 1.0):
        import subprocess
        import sys

        from tests.support import wait_for

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, amqp_url, str(self.out_dir), str(window_s)],
                                     stdout=open(self.out_dir / "consumer.log", "wb"), stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (self.out_dir / "ready").exists() or self.proc.poll() is not None, 30,
                     message="consumer connected")
            if self.proc.poll() is not None:
                raise RuntimeError(f"consumer exited: {(self.out_dir / 'consumer.log').read_text()[-2000:]}")
        except BaseException:
            self.close()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _lines(self, name: str) -> list[dict]:
        """Every complete line of ``name``.jsonl, read incrementally (the files only grow)."""
        import orjson

        cache = self.__dict__.setdefault("_cache", {})
        offset, lines = cache.get(name, (0, []))
        path = self.out_dir / f"{name}.jsonl"
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1          # a line still being written waits for the next read
            for line in chunk[:end].splitlines():
                lines.append(orjson.loads(line))
            cache[name] = (offset + end, lines)
        return lines

    def windows(self, since: float = 0.0, until: float = float("inf")) -> list[dict]:
        return [w for w in self._lines("windows") if since <= w["t"] < until]

    def account(self) -> list[dict]:
        return self._lines("account")

    def system(self, kind: str | None = None, since: float = 0.0) -> list[dict]:
        return [e for e in self._lines("system") if (kind is None or e["kind"] == kind) and e["at"] >= since]

    def last_window(self) -> dict:
        w = self._lines("windows")
        return w[-1] if w else {"gaps": 0, "dups": 0, "restarts": 0}

    def close(self, remove: bool = False) -> None:
        """Stop the consumer; ``remove`` deletes its output directory too."""
        import shutil
        import subprocess

        if remove:
            self.__dict__.setdefault("_remove", True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.__dict__.get("_remove"):
            shutil.rmtree(self.out_dir, ignore_errors=True)


def main(argv: list[str]) -> int:
    import signal
    import threading

    url, out_dir, window_s = argv[0], Path(argv[1]), float(argv[2])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(url, str(out_dir), stop, _Ready(out_dir / "ready"), window_s)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
