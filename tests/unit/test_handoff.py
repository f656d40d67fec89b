"""ingest's hand-off never blocks and stays bounded: market frames beyond the bound (count or
bytes) are dropped oldest first and counted by class; account frames are kept."""
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
