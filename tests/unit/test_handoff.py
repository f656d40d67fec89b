"""ingest's hand-off never blocks and stays bounded: market frames beyond the bound (count or
bytes) are dropped (the longest-bound class oldest first) and counted by class; account frames are kept.
Frames that come together leave together, several to a ZeroMQ message."""
import time

import zmq

from ingest.handoff import HWM, Downstream


def test_bounded_in_bytes_drops_market_keeps_account(short_tmp):
    ctx = zmq.Context()
    try:
        # connected, nobody reading: ZeroMQ takes HWM messages, then we buffer
        d = Downstream(ctx, "publisher", f"ipc://{short_tmp}/nobody", bound=10**9, bound_bytes=100_000)
        frame = [b"gw1", b"{}", b"x" * 1000]
        n = HWM + 5000
        for i in range(n):
            d.send(frame, "orderbook" if i % 2 else "trades")
        for _ in range(300):
            d.send(frame, "executions")
        assert d.market_bytes <= 100_000
        assert sum(d.dropped.values()) == n - HWM - len(d.market)
        assert set(d.dropped) == {"trades", "orderbook"}
        assert len(d.account) == 300          # never dropped
        d.sock.close(0)
    finally:
        ctx.term()


def test_a_frame_goes_out_as_its_envelope_and_waits_while_the_socket_is_full(slow_publisher):
    """The hand-off writes the envelope's bytes itself (no Envelope object per frame) and, while
    ZeroMQ's queue is full, keeps frames in its buffer in order until the reader takes them."""
    from common.envelope import Envelope, unpack

    h, pull = slow_publisher
    owner = {"oi": "gw-a", "oe": 3}
    n, t0 = HWM * 4, time.time_ns()      # received now: within the trades' age bound

    def body(i: int) -> bytes:       # 10 KB: beyond what ZeroMQ and the kernel buffer hold
        return b'{"i":%d,"pad":"%s"}' % (i, b"x" * 10_000)

    for i in range(1, n + 1):
        h.frame("linear", "publicTrade.BTCUSDT", "trades", body(i), t0 + i, "c1", "tr", owner)
    assert h.publisher.buffered > 0               # more than ZeroMQ holds: the rest waits with us
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        if pull.poll(50):
            got.extend(unpack(pull.recv_multipart()))
        h.flush()
    assert len(got) == n and h.publisher.buffered == 0 and not h.publisher.dropped
    for i, parts in enumerate(got, 1):
        assert Envelope.decode(parts) == Envelope("frame", body(i), "linear", "publicTrade.BTCUSDT", t0 + i, i,
                                                  h.epoch, "c1", "tr", owner)
    # the header's fixed part is kept per topic: a new socket, request or lease shows at once
    later = [("c2", "tr", owner), ("c2", "tr2", owner), ("c2", "tr2", {"oi": "gw-b", "oe": 4}), ("c2", "tr2", None)]
    for i, (conn, trace, lease) in enumerate(later, n + 1):
        h.frame("linear", "publicTrade.BTCUSDT", "trades", body(i), t0 + i, conn, trace, lease)
    h.frame("linear", "publicTrade.ETHUSDT", "trades", body(0), t0, "c1", "tr", owner)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(later) + 1 and time.monotonic() < deadline:
        if pull.poll(50):
            got.extend(unpack(pull.recv_multipart()))
        h.flush()
    assert [Envelope.decode(p) for p in got] == [
        Envelope("frame", body(i), "linear", "publicTrade.BTCUSDT", t0 + i, i, h.epoch, conn, trace, lease or {})
        for i, (conn, trace, lease) in enumerate(later, n + 1)] + [
        Envelope("frame", body(0), "linear", "publicTrade.ETHUSDT", t0, 1, h.epoch, "c1", "tr", owner)]


def _linger_rig(short_tmp, linger_s: float):
    from common import addresses
    from ingest.handoff import Handoff

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(addresses.publisher_frames(short_tmp))
    pull.bind(addresses.publisher_priority(short_tmp))
    return ctx, pull, Handoff(short_tmp, bound=10**6, ctx=ctx, linger_s=linger_s)


def _messages(pull, want_envelopes: int) -> list[list[bytes]]:
    """Messages as received (each a list of frames) until ``want_envelopes`` envelopes came."""
    from common.envelope import unpack

    got, n, deadline = [], 0, time.monotonic() + 10
    while n < want_envelopes and time.monotonic() < deadline:
        if pull.poll(50):
            got.append(pull.recv_multipart())
            n += len(unpack(got[-1]))
    return got


def test_an_account_frame_passes_a_backlog_of_market_frames(slow_publisher):
    """Account frames go on the priority pipe: while market frames wait in the hand-off (the
    publisher slow), a fill is handed to ZeroMQ at once, and the reader, taking from its pipes in
    turn, gets it after at most the few market messages already queued on the other pipe."""
    from common.envelope import Envelope, unpack

    h, pull = slow_publisher
    t0 = time.time_ns()
    pad = b"x" * 10_000
    for i in range(1, HWM * 4 + 1):
        h.frame("linear", "publicTrade.BTCUSDT", "trades", b'{"i":%d,"p":"%s"}' % (i, pad), t0 + i, "c1")
    h.flush()
    waiting = len(h.publisher.market)
    assert waiting > 0                                   # the market lane is backed up
    h.frame("private", "execution", "executions", b'{"fill":1}', time.time_ns(), "p1")
    h.flush()
    assert not h.publisher.account                       # handed to ZeroMQ, not waiting behind them
    got, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline and not any(Envelope.decode(p).endpoint == "private" for p in got):
        if pull.poll(50):
            got.extend(unpack(pull.recv_multipart()))
        h.flush()
    kinds = [Envelope.decode(p).endpoint for p in got]
    # before it only market frames ZeroMQ held already, none of those that waited in the hand-off
    assert kinds[-1] == "private" and len(kinds) - 1 <= HWM * 4 - waiting


def test_frames_read_in_one_loop_turn_leave_together_in_order_and_a_notice_on_its_own_pipe(short_tmp):
    """The frames of one loop turn go in batches, in order; a system notice goes on the priority
    pipe (it may pass them: the publisher reads its pipes in turn) and releases the held frames."""
    import asyncio

    from common.envelope import BATCH, Envelope, unpack
    from ingest.handoff import MAX_BATCH
    ctx, pull, h = _linger_rig(short_tmp, 0.0)
    n = MAX_BATCH + 8            # more than one message holds

    async def turn():
        for i in range(1, n + 1):
            h.frame("linear", "publicTrade.BTCUSDT", "trades", b'{"i":%d}' % i, time.time_ns(), "c1")
        h.system("connection_lost", {"why": "test"})      # after the frames of this turn
        assert h._held == []                              # released by the notice, none left behind

    try:
        asyncio.run(turn())
        got = _messages(pull, n + 1)
        batches = [m for m in got if m[0] == BATCH]
        assert len(batches) == 2 and len(unpack(batches[0])) == MAX_BATCH
        envs = [Envelope.decode(p) for m in got for p in unpack(m)]
        assert [e.stream_seq for e in envs if e.kind == "frame"] == list(range(1, n + 1))
        assert [(e.kind, e.topic) for e in envs if e.kind != "frame"] == [("system", "connection_lost")]
        assert h.stats()["publisher"]["lingered"] == {"frames": n, "batches": 1}
    finally:
        h.close()
        pull.close(0)
        ctx.term()


def test_fills_among_a_turns_market_frames_reach_the_persister_and_market_only_turns_do_not(short_tmp):
    """Turns of market frames alone, and turns with a fill among them, in any order: every fill
    reaches the persister once and the publisher's priority pipe, every frame the publisher."""
    import asyncio

    from common import addresses
    from common.envelope import Envelope, unpack
    ctx, pull, h = _linger_rig(short_tmp, 0.0)
    persister = ctx.socket(zmq.PULL)
    persister.bind(addresses.persister_frames(short_tmp))
    turns = ["market", "fill", "market", "market", "fill", "fill", "market"]

    async def run():
        for i, kind in enumerate(turns):
            for j in range(5):
                h.frame("linear", "publicTrade.BTCUSDT", "trades", b'{"t":%d,"j":%d}' % (i, j), time.time_ns(), "c1")
                if kind == "fill" and j == 2:
                    h.frame("private", "execution", "executions", b'{"fill":%d}' % i, time.time_ns(), "p1")
            await asyncio.sleep(0)            # the turn ends: its frames are released together

    try:
        asyncio.run(run())
        fills = [i for i, kind in enumerate(turns) if kind == "fill"]
        to_publisher = [Envelope.decode(p) for m in _messages(pull, len(turns) * 5 + len(fills)) for p in unpack(m)]
        to_persister = [Envelope.decode(p) for m in _messages(persister, len(fills)) for p in unpack(m)]
        assert [e.payload for e in to_persister] == [b'{"fill":%d}' % i for i in fills]
        assert [e.payload for e in to_publisher if e.endpoint == "private"] == [b'{"fill":%d}' % i for i in fills]
        assert [e.stream_seq for e in to_publisher if e.endpoint == "linear"] == list(range(1, len(turns) * 5 + 1))
        assert not persister.poll(200)        # nothing else: market frames never go to the persister
    finally:
        h.close()
        persister.close(0)
        pull.close(0)
        ctx.term()


def test_with_a_linger_the_first_frame_goes_at_once_and_the_next_wait_for_company(short_tmp):
    import asyncio

    from common.envelope import BATCH, Envelope, unpack
    ctx, pull, h = _linger_rig(short_tmp, 0.05)
    first_at = []

    async def flow():
        h.frame("linear", "tickers.BTCUSDT", "tickers", b'{"n":1}', time.time_ns(), "c1")
        assert pull.poll(1000)                           # sent before anything else happened
        first_at.append(pull.recv_multipart())
        for i in range(2, 6):
            h.frame("linear", "tickers.BTCUSDT", "tickers", b'{"n":%d}' % i, time.time_ns(), "c1")
            await asyncio.sleep(0.001)
        assert not pull.poll(0)                          # still lingering
        deadline = asyncio.get_running_loop().time() + 5
        while h._held and asyncio.get_running_loop().time() < deadline:    # the linger's timer fires
            await asyncio.sleep(0.005)

    try:
        asyncio.run(flow())
        assert first_at[0][0] != BATCH
        [batch] = _messages(pull, 4)
        assert batch[0] == BATCH and [Envelope.decode(p).stream_seq for p in unpack(batch)] == [2, 3, 4, 5]
    finally:
        h.close()
        pull.close(0)
        ctx.term()


def test_close_sends_what_still_waits_while_the_reader_reads(short_tmp):
    """At a stop under load most of what is left waits in ingest's buffer (ZeroMQ's queues are a
    few messages): close keeps flushing while the publisher still reads, so none of it is lost."""
    import threading

    from common import addresses
    from common.envelope import Envelope, unpack
    from ingest.handoff import Handoff

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind(addresses.publisher_frames(short_tmp))
    pull.bind(addresses.publisher_priority(short_tmp))
    h = Handoff(short_tmp, bound=10**6, ctx=ctx)
    n, got = 2000, []
    try:
        for i in range(1, n + 1):
            h.frame("linear", "publicTrade.BTCUSDT", "trades", b'{"i":%d}' % i, time.time_ns(), "c1")
        assert h.publisher.buffered > 0                # ZeroMQ took a few; the rest waits with us

        def read():
            deadline = time.monotonic() + 10
            while len(got) < n and time.monotonic() < deadline:
                if pull.poll(50):
                    got.extend(unpack(pull.recv_multipart()))

        reader = threading.Thread(target=read)
        reader.start()
        h.close(drain_s=5)
        reader.join(10)
        assert [Envelope.decode(p).stream_seq for p in got] == list(range(1, n + 1))
    finally:
        pull.close(0)
        ctx.term()


def test_a_batch_beyond_the_bound_drops_the_oldest_and_names_each_streams_range(short_tmp):
    """Frames handed over together (``send_many``) while nobody reads: the buffer stays at its
    bound, the oldest trades go, and the drop notice names per stream the first and last frame
    number dropped and how many."""
    ctx = zmq.Context()
    d = Downstream(ctx, "publisher", f"ipc://{short_tmp}/nobody-batch", bound=500, bound_bytes=10**9)
    try:
        topics = ("publicTrade.AUSDT", "publicTrade.BUSDT")
        seqs = {t: 0 for t in topics}
        entries = []
        for i in range(20_000):
            t = topics[i % 3 == 0]
            seqs[t] += 1
            entries.append(([b"gw1", b"{}", b"x" * 100], "trades", time.time_ns(), "linear", t, seqs[t]))
        for at in range(0, len(entries), 700):
            d.send_many(entries[at:at + 700])
        assert len(d.market) == 500
        kept: dict[str, list[int]] = {t: [] for t in topics}
        for q in d.market.queues.values():
            for entry in q:
                kept[entry[3][4]].append(entry[3][5])
        [notice] = d.take_drop_notices()
        frames = notice["dropped_frames"]
        assert notice["reason"] == "buffer_full" and notice["dropped_total"] == {"trades": sum(d.dropped.values())}
        for t in topics:
            r = frames[f"linear:{t}"]
            assert r["ingest_seq_to"] < min(kept[t])          # what is left is newer than all dropped
            assert r["count"] == r["ingest_seq_to"] - r["ingest_seq_from"] + 1   # one run, nothing counted twice
            assert max(kept[t]) == seqs[t]                      # the newest is kept
    finally:
        d.sock.close(0)         # before term(), which waits for every socket: a failure must not hang
        ctx.term()
