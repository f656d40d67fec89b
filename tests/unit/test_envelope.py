import orjson
import pytest

from common.envelope import FRAME, Envelope, EnvelopeError, json_envelope


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
