"""ingest's pure parts: frame classification, acks, book integrity, limits and backoff."""
from pathlib import Path

import pytest

from ingest import acks, books, parse, plan

FRAMES = Path(__file__).resolve().parent.parent / "frames"


def frame(name):
    return (FRAMES / name).read_bytes()


@pytest.mark.parametrize("name, kind, success", [
    ("pong_public.json", parse.PONG, True), ("pong_public_spot.json", parse.PONG, True),
    ("pong_public_option.json", parse.PONG, True), ("pong_private.json", parse.PONG, True),
    ("auth_ok.json", parse.AUTH, True), ("auth_fail.json", parse.AUTH, False),
    ("subscribe_ok.json", parse.SUB_ACK, True), ("subscribe_ok_spot.json", parse.SUB_ACK, True),
    ("subscribe_ok_private.json", parse.SUB_ACK, True), ("subscribe_ok_option.json", parse.SUB_ACK, True),
    ("subscribe_fail.json", parse.SUB_ACK, False), ("subscribe_fail_spot_args.json", parse.SUB_ACK, False),
])
def test_control_frames(name, kind, success):
    ctl = parse.classify_control(parse.loads(frame(name)))
    assert (ctl.kind, ctl.success) == (kind, success)


def test_data_frames_have_topics():
    for name in ("public_trade.json", "orderbook_delta.json", "order.json", "wallet.json", "kline.json"):
        assert "topic" in parse.loads(frame(name))


PUBLIC_PUSHES = ("public_trade.json", "public_trade_option.json", "orderbook_delta.json", "orderbook_snapshot.json",
                 "orderbook_l1_snapshot.json", "ticker_linear_delta.json", "ticker_linear_snapshot.json",
                 "ticker_option.json", "ticker_spot.json", "kline.json", "all_liquidation.json", "insurance.json",
                 "price_limit.json")


def test_leading_topic_of_every_recorded_frame_as_sent():
    """On the wire a push is compact JSON in Bybit's key order: its topic is read without parsing,
    and is what a full parse finds; every other recorded frame gives None (then parsed)."""
    import json

    read = 0
    for path in sorted(FRAMES.glob("*.json")):
        doc = json.loads(path.read_bytes())
        wire = json.dumps(doc, separators=(",", ":")).encode()
        got = parse.leading_topic(wire)
        if got is not None:
            read += 1
            assert got == doc["topic"], path.name
        elif path.name in PUBLIC_PUSHES and next(iter(doc)) == "topic":
            raise AssertionError(f"{path.name}: topic first, yet not read")
    assert read >= len(PUBLIC_PUSHES) - 1     # the option trade puts "id" first


@pytest.mark.parametrize("raw", [
    b'{"id":"x","topic":"publicTrade.BTCUSDT"}',       # another key first
    b'{ "topic":"publicTrade.BTCUSDT"}', b'{"topic": "publicTrade.BTCUSDT"}',   # spaces
    b'{"topic":"public\\u0054rade.BTCUSDT"}',         # an escape inside
    b'{"topic":"publicTrade.BTCUSDT', b'{"topic":""}', b'{"topic":"\xff"}', b"", b"[]",
])
def test_leading_topic_leaves_other_layouts_to_the_parser(raw):
    assert parse.leading_topic(raw) is None


@pytest.mark.parametrize("raw", [b"", b"{", b"[1,2]", b'"pong"', b"\xff\xfe"])
def test_garbage_raises_frame_error(raw):
    with pytest.raises(parse.FrameError):
        parse.loads(raw)


def test_topic_named_in_failure_texts():
    assert parse.topic_named_in("error:handler not found,topic:orderbook.50.NOPEUSDT") == "orderbook.50.NOPEUSDT"
    assert parse.topic_named_in("error:already subscribed,topic:publicTrade.BTCUSDT") == "publicTrade.BTCUSDT"
    assert parse.topic_named_in("Invalid symbol :[tickers.XYZ]") == "tickers.XYZ"
    assert parse.topic_named_in("args size >10") is None


def ctl(**kw):
    return parse.Control(parse.SUB_ACK, **kw)


def test_ack_success():
    assert acks.interpret(["a", "b"], ctl(success=True)).ok == ["a", "b"]


def test_ack_one_bad_topic_fails_it_and_retries_the_rest():
    r = acks.interpret(["a", "bad", "c"], ctl(success=False, ret_msg="error:handler not found,topic:bad"))
    assert r.failed == {"bad": "error:handler not found,topic:bad"}
    assert r.retry == ["a", "c"] and r.ok == []


def test_ack_already_subscribed_is_success():
    assert acks.interpret(["a"], ctl(success=False, ret_msg="error:already subscribed,topic:a")).ok == ["a"]


def test_ack_args_size_retries_each():
    assert acks.interpret(list("abc"), ctl(success=False, ret_msg="args size >10")).retry == list("abc")


def test_ack_option_per_topic():
    r = acks.interpret(["x", "y", "z"], ctl(success=False, success_topics=["x"], fail_topics=["y"], per_topic=True))
    assert r.ok == ["x"] and list(r.failed) == ["y"] and r.retry == ["z"]


def upd(t, u, seq=None):
    return parse.BookUpdate(t, u, seq)


def test_book_tracker():
    b = books.BookTracker()
    assert b.check(upd("delta", 5)).action == books.RESYNC          # delta before any snapshot
    b = books.BookTracker()
    assert b.check(upd("snapshot", 10, 100)).action == books.OK
    assert b.check(upd("delta", 11, 101)).action == books.OK
    assert b.check(upd("delta", 11, 101)).action == books.STALE      # repeat
    assert b.check(upd("delta", 13, 103)).action == books.RESYNC     # gap
    assert b.check(upd("delta", 14, 104)).action == books.STALE      # waiting for the snapshot
    assert b.check(upd("snapshot", 1, 5)).action == books.OK          # u == 1 restart resets
    assert b.check(upd("delta", 2, 4)).action == books.RESYNC        # seq backwards
    b = books.BookTracker()
    for _ in range(3):                                                # level 1 repeats the same u
        assert b.check(upd("snapshot", 7, 70)).action == books.OK


def test_book_update_from_recorded_frames():
    snap = parse.book_update(parse.loads(frame("orderbook_snapshot.json")))
    delta = parse.book_update(parse.loads(frame("orderbook_delta.json")))
    b = books.BookTracker()
    assert b.check(snap).action == books.OK and b.check(delta).action == books.OK


def test_spot_batches_of_ten():
    topics = [f"publicTrade.S{i}USDT" for i in range(150)]
    batches = plan.batches("spot", topics)
    assert len(batches) == 15 and all(len(b) <= 10 for b in batches)
    assert sum(batches, []) == topics


def test_connection_room():
    assert not plan.has_room("option", [f"t{i}" for i in range(2000)], "x")
    assert plan.has_room("option", [f"t{i}" for i in range(1999)], "x")
    long_topics = ["x" * 1000] * 21
    assert not plan.has_room("linear", long_topics, "y")
    assert plan.has_room("private", long_topics * 10, "order")


def test_connection_budget_caps_new_connections():
    now = [0.0]
    b = plan.ConnectionBudget(3, 300, clock=lambda: now[0])
    for _ in range(3):
        assert b.delay() == 0
        b.take()
    assert b.delay() == pytest.approx(300)
    now[0] = 301
    assert b.delay() == 0


def test_backoff_first_retry_at_once_and_capped():
    from common.runtime import backoff_s

    assert backoff_s(0, 30, jitter=0.9) == 0
    delays = [backoff_s(n, 30, jitter=1.0) for n in range(1, 12)]
    assert delays == sorted(delays) and max(delays) == 30
    assert backoff_s(20, 30, jitter=0.0) == 15
    assert [backoff_s(n, 1.0, 0.25) for n in range(1, 6)] == [0.25, 0.5, 1.0, 1.0, 1.0]     # no jitter
    assert backoff_s(10_000, 5.0) == 5.0                                                    # no overflow
