import orjson
import pytest

from common.envelope import BATCH, FRAME, Envelope, EnvelopeError, json_envelope, pack, unpack


def test_round_trip_keeps_every_field_and_the_payload_bytes():
    raw = b'{"topic":"publicTrade.BTCUSDT","data":[{"p":"118250.40"}]}'
    env = Envelope(FRAME, raw, "linear", "publicTrade.BTCUSDT", 1_785_000_000_123_456_789, 42, "ep1", "linear-1",
                   "tr-1", {"k": 1})
    back = Envelope.decode(env.encode())
    assert back == env
    assert back.payload == raw


def test_json_envelope():
    env = json_envelope("sub_status", {"status": "active"}, trace_id="t")
    assert Envelope.decode(env.encode()).json() == {"status": "active"}


@pytest.mark.parametrize("parts", [
    [b"gw1", b"{}"],
    [b"gw0", b'{"k":"frame"}', b""],
    [b"gw1", b"not json", b""],
    [b"gw1", b'{"k":"mystery"}', b""],
    [b"gw1", b"[1]", b""],
])
def test_bad_envelopes_raise(parts):
    with pytest.raises(EnvelopeError):
        Envelope.decode(parts)


@pytest.mark.parametrize("field,value", [
    ("e", 5), ("e", None), ("t", ["publicTrade.BTCUSDT"]), ("p", {}), ("c", 1.5), ("tr", True),
    ("r", -1), ("r", "1785000000"), ("r", True), ("r", 2**63), ("r", 1.5),
    ("s", -3), ("s", None), ("x", [1]),
])
def test_wrong_typed_header_fields_are_refused_with_the_field_named(field, value):
    """Found by fuzzing the publisher: an int endpoint reached str methods deep in the pipeline
    (AttributeError) and a negative receive time broke the AMQP encoder (struct.error)."""
    header = {"k": "frame", "e": "linear", "t": "publicTrade.BTCUSDT", "r": 1, "s": 1, "p": "ep", "c": "",
              "tr": "", field: value}
    names = {"e": "endpoint", "t": "topic", "p": "epoch", "c": "conn_id", "tr": "trace_id", "r": "recv_ns",
             "s": "stream_seq", "x": "extra"}
    with pytest.raises(EnvelopeError, match=names[field]):
        Envelope.decode([b"gw1", orjson.dumps(header), b"{}"])


def test_kept_envelopes_cost_their_size_not_orjsons_buffer():
    """40,000 kept headers cost ~157 MB straight from orjson.dumps (its write buffer stays
    allocated), ~7 MB through common.envelope.dumps."""
    import resource

    from common.envelope import dumps

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept = [dumps({"k": "frame", "t": "publicTrade.BTCUSDT", "s": i, "p": "epoch123"}) for i in range(40_000)]
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert len(kept) == 40_000 and grown_mb < 60


# -- several envelopes in one message -------------------------------------------------------

def test_pack_unpack_keeps_every_envelope_in_order():
    envs = [Envelope("frame", b'{"n":%d}' % i, "linear", "publicTrade.BTCUSDT", 10 + i, i, "ep", "c1").encode()
            for i in range(1, 6)]
    envs.append(Envelope("frame", b"", "spot", "tickers.X", 1, 1, "ep").encode())      # empty payload
    parts = pack([(e[1], e[2]) for e in envs])
    assert parts[0] == BATCH and len(parts) == 2
    back = unpack(parts)
    assert back == [list(e) for e in envs]
    assert [Envelope.decode(p).stream_seq for p in back] == [1, 2, 3, 4, 5, 1]


def test_unpack_passes_a_single_envelope_through():
    one = Envelope("system", b"{}", topic="x").encode()
    assert unpack(one) == [one]


@pytest.mark.parametrize("parts, message", [
    ([BATCH], "2 frames"),
    ([BATCH, b"x", b"y"], "2 frames"),
    ([BATCH, b"\x00\x00\x00\x01"], "cut short"),
    ([BATCH, b"\x00\x00\x00\x05\x00\x00\x00\x05abc"], "overruns"),
    ([BATCH, pack([(b"{}", b"{}")])[1] + b"\x00"], "cut short"),
])
def test_unpack_refuses_a_broken_batch(parts, message):
    with pytest.raises(EnvelopeError, match=message):
        unpack(parts)
