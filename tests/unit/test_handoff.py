"""ingest's hand-off never blocks and stays bounded: market frames beyond the bound (count or
bytes) are dropped oldest first and counted by class; account frames are kept."""
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


def test_a_frame_goes_out_as_its_envelope_and_waits_while_the_socket_is_full(short_tmp):
    """The hand-off writes the envelope's bytes itself (no Envelope object per frame) and, while
    ZeroMQ's queue is full, keeps frames in its buffer in order until the reader takes them."""
    from common import addresses
    from common.envelope import Envelope, unpack
    from ingest.handoff import Handoff

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind(addresses.publisher_frames(short_tmp))
    h = Handoff(short_tmp, bound=10**6, ctx=ctx)
    try:
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
            assert parts == Envelope("frame", body(i), "linear", "publicTrade.BTCUSDT", t0 + i, i,
                                     h.epoch, "c1", "tr", owner).encode()
    finally:
        h.close()
        pull.close(0)
        ctx.term()
