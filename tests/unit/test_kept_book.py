"""ingest's copy of an order book (``KeptBook``) and the snapshot it hands off when frames of
the book are dropped on the way to consumers. The oracle is the simulator's own book: the
levels it holds after the frames it sent, not anything computed by ingest."""
from __future__ import annotations

import time
from decimal import Decimal

import orjson

from bybitsim.market import Market
from bybitsim.streams import make_stream
from common.envelope import unpack
from ingest import books, parse
from ingest.handoff import HWM


def _truth(side: dict) -> dict[Decimal, Decimal]:
    return {Decimal(p): Decimal(q) for p, q in side.items()}


def test_the_copy_equals_the_simulators_book_after_thousands_of_deltas():
    stream = make_stream(Market(11), "linear", "orderbook.50.BTCUSDT", 11)
    kept, tracker = books.KeptBook(), books.BookTracker()
    ts = 1_796_000_000_000
    for i in range(3000):
        frame = parse.loads(orjson.dumps(stream.next(ts + i * 7)))    # as the socket carries it
        assert tracker.check(parse.book_update(frame)).action == books.OK
        kept.apply(frame, i, "s1")
        if i % 500 == 499 or i == 0:
            snap = kept.snapshot()
            assert _truth(dict(snap["data"]["b"])) == _truth(stream.levels()[0])
            assert _truth(dict(snap["data"]["a"])) == _truth(stream.levels()[1])
            bids = [Decimal(p) for p, _ in snap["data"]["b"]]
            asks = [Decimal(p) for p, _ in snap["data"]["a"]]
            assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
            assert (snap["type"], snap["topic"], snap["data"]["u"], snap["data"]["s"]) == (
                "snapshot", "orderbook.50.BTCUSDT", stream.u, "BTCUSDT")
            # what the hand-off sends is a frame ingest itself accepts as the next snapshot
            again = books.BookTracker()
            assert again.check(parse.book_update(parse.loads(orjson.dumps(snap)))).action == books.OK
    assert kept.recv_ns == 2999 and kept.session == "s1"


def test_a_malformed_level_or_a_delta_before_any_snapshot_leaves_no_copy():
    kept = books.KeptBook()
    kept.apply({"topic": "orderbook.50.X", "type": "delta", "ts": 1, "data": {"s": "X", "b": [["1", "2"]],
                                                                             "a": [], "u": 2}}, 1, "s")
    assert not kept.valid
    snap = {"topic": "orderbook.50.X", "type": "snapshot", "ts": 1, "data": {"s": "X", "b": [["1", "2"]],
                                                                            "a": [["3", "4"]], "u": 1, "seq": 9}}
    kept.apply(snap, 1, "s")
    assert kept.valid and kept.snapshot()["data"] == {"s": "X", "b": [["1", "2"]], "a": [["3", "4"]], "u": 1,
                                                      "seq": 9}
    kept.apply({"topic": "orderbook.50.X", "type": "delta", "ts": 2,
                "data": {"s": "X", "b": [["1", "2", "3"]], "a": [], "u": 2}}, 2, "s")   # three fields
    assert not kept.valid
    kept.apply(snap, 3, "s")
    kept.apply({"topic": "orderbook.50.X", "type": "delta", "ts": 2,
                "data": {"s": "X", "b": [["1", "0.000"]], "a": [["3.5", "1"]], "u": 2}}, 4, "s")
    assert kept.valid and kept.snapshot()["data"]["b"] == [] and kept.snapshot()["data"]["a"] == [["3", "4"],
                                                                                                 ["3.5", "1"]]
    kept.apply({"topic": "orderbook.50.X", "type": "delta", "ts": 3,
                "data": {"s": "X", "b": [["2", "x"]], "a": [], "u": 3}}, 5, "s")          # size not a number
    assert not kept.valid


def test_a_healing_snapshot_replaces_the_books_waiting_frames_and_goes_first(slow_publisher):
    """While the publisher reads nothing, frames wait in the hand-off. A snapshot handed off to
    heal one book drops that book's waiting frames (superseded, counted, not a loss that asks for
    another snapshot), leaves other topics' frames in order, goes before every market frame, and
    replaces an earlier one of the same book still waiting."""
    h, pull = slow_publisher
    now = time.time_ns()
    pad = b"x" * 20_000                      # beyond what ZeroMQ and the kernel buffer hold
    for i in range(HWM * 6):
        h.frame("linear", "orderbook.50.AUSDT", "orderbook", b'{"a":%d,"p":"%s"}' % (i, pad), now + i, "c")
        h.frame("linear", "orderbook.50.BUSDT", "orderbook", b'{"b":%d,"p":"%s"}' % (i, pad), now + i, "c")
    h.flush()
    waiting_a = sum(1 for e in h.publisher.market.queues["orderbook"] if e[3][4] == "orderbook.50.AUSDT")
    waiting_b = sum(1 for e in h.publisher.market.queues["orderbook"] if e[3][4] == "orderbook.50.BUSDT")
    assert waiting_a > 0 and waiting_b > 0
    h.heal("linear", "orderbook.50.AUSDT", "orderbook", b'{"snapshot":0}', now + 10**6, "c")
    assert ("linear", "orderbook.50.AUSDT") in h.publisher.healing
    assert h.publisher.dropped_by["superseded"]["orderbook"] == waiting_a
    # a later one replaces it while it waits: one per book in the lane that is never dropped
    h.frame("linear", "orderbook.50.AUSDT", "orderbook", b'{"a":-1,"p":"%s"}' % pad, now + 10**6, "c")
    h.release()
    seq = h.heal("linear", "orderbook.50.AUSDT", "orderbook", b'{"snapshot":1}', now + 2 * 10**6, "c")
    assert h.publisher.dropped_by["superseded"]["orderbook"] == waiting_a + 2
    assert len(h.publisher.healing) == 1 and not h.publisher.account
    assert not h.publisher.lost                                   # superseded is not a loss
    assert all(e[3][4] == "orderbook.50.BUSDT" for e in h.publisher.market.queues["orderbook"])
    got = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (h.publisher.buffered or not got or pull.poll(200)):
        if pull.poll(20):
            got.extend(unpack(pull.recv_multipart()))
        h.flush()
    payloads = [p[2] for p in got]
    assert b'{"snapshot":0}' not in payloads
    at = payloads.index(b'{"snapshot":1}')
    assert orjson.loads(got[at][1])["s"] == seq
    assert all(not p.startswith(b'{"a"') for p in payloads[at + 1:])       # nothing older of A after it
    # ahead of B's backlog: before it only what ZeroMQ had taken already
    assert sum(p.startswith(b'{"b"') for p in payloads[:at]) == HWM * 6 - waiting_b
    b_after = [orjson.loads(p)["b"] for p in payloads[at + 1:] if p.startswith(b'{"b"')]
    assert b_after == sorted(b_after) and b_after                  # B's frames still in order, after it
    assert not h.publisher.healing                                  # sent: the next loss may heal again
