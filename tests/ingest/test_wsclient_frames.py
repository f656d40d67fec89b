"""ingest's WebSocket frame parsing (PushProtocol, ingest/wsclient.py) fed bytes directly: frames
serialized by websockets itself, cut into random pieces, must come out as the same messages
in the same order, control frames handled as websockets handles them, and every malformed
frame refused as websockets refuses it."""
from __future__ import annotations

import random

import pytest
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from ingest.wsclient import PushProtocol

MAX_SIZE = 100_000


def protocol(delivering: bool = True) -> tuple[PushProtocol, list[bytes]]:
    p = PushProtocol(parse_uri("ws://127.0.0.1/v5/public/linear"), state=State.OPEN, max_size=MAX_SIZE)
    got: list[bytes] = []
    if delivering:
        p.on_data = got.extend
    return p, got


def server_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=False)


def feed(p: PushProtocol, wire: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(wire):
        step = rng.choice((1, 2, 3, 7, 64, 500, 4096, 70_000))
        p.receive_data(wire[pos:pos + step])
        pos += step


def test_messages_of_every_size_and_shape_in_any_pieces_come_out_whole_and_in_order():
    rng = random.Random(7)
    sizes = [0, 1, 124, 125, 126, 127, 200, 65_535, 65_536, 65_537, MAX_SIZE]
    for trial in range(30):
        wire, expected, pings = b"", [], 0
        for i in range(60):
            size = rng.choice(sizes + [rng.randint(0, 3000)] * 5)
            data = bytes(rng.getrandbits(8) for _ in range(min(size, 64))) * (size // 64 + 1)
            data = data[:size]
            opcode = rng.choice((Opcode.TEXT, Opcode.BINARY))
            if size > 10 and rng.random() < 0.2:         # fragmented, a ping between its frames
                cut = rng.randint(1, size - 1)
                wire += server_frame(opcode, data[:cut], fin=False)
                wire += server_frame(Opcode.PING, b"p%d" % i)
                pings += 1
                wire += server_frame(Opcode.CONT, data[cut:])
            else:
                wire += server_frame(opcode, data)
            expected.append(data)
        p, got = protocol()
        feed(p, wire, rng)
        assert p.parser_exc is None
        assert got == expected, f"trial {trial}"
        assert all(type(m) is bytes for m in got)
        # each ping answered with a pong carrying its data, as websockets does
        assert [e.opcode for e in p.events_received()] == [Opcode.PING] * pings
        assert len(p.data_to_send()) == pings


def test_the_whole_messages_of_one_read_come_in_one_list():
    p = PushProtocol(parse_uri("ws://127.0.0.1/v5/public/linear"), state=State.OPEN, max_size=MAX_SIZE)
    calls: list[list[bytes]] = []
    p.on_data = calls.append
    p.receive_data(b"".join(server_frame(Opcode.TEXT, b"m%d" % i) for i in range(3)) + server_frame(Opcode.TEXT, b"m3")[:3])
    assert calls == [[b"m0", b"m1", b"m2"]]      # the cut fourth waits for its rest
    p.receive_data(server_frame(Opcode.TEXT, b"m3")[3:] + server_frame(Opcode.TEXT, b"m4") + server_frame(Opcode.TEXT, b"m5"))
    # the message completed by websockets' own parser comes alone, as does a fragmented one
    p.receive_data(server_frame(Opcode.TEXT, b"f", fin=False) + server_frame(Opcode.CONT, b"g"))
    assert calls == [[b"m0", b"m1", b"m2"], [b"m3"], [b"m4", b"m5"], [b"fg"]]


def test_before_on_data_is_set_messages_are_events_as_in_websockets():
    p, got = protocol(delivering=False)
    p.receive_data(server_frame(Opcode.TEXT, b"auth reply") + server_frame(Opcode.TEXT, b"m2", fin=False))
    events = p.events_received()
    assert [(e.opcode, e.data) for e in events] == [(Opcode.TEXT, b"auth reply"), (Opcode.TEXT, b"m2")]
    p.on_data = got.extend
    p.assemble(events[1])                   # what PushConnection.deliver_to does with waiting frames
    p.receive_data(server_frame(Opcode.CONT, b"-rest") + server_frame(Opcode.TEXT, b"m3"))
    assert got == [b"m2-rest", b"m3"]


def test_a_close_frame_ends_parsing_and_what_follows_is_discarded():
    p, got = protocol()
    p.receive_data(server_frame(Opcode.TEXT, b"a") + Frame(Opcode.CLOSE, Close(1000, "bye").serialize()).serialize(
        mask=False) + server_frame(Opcode.TEXT, b"after the close"))
    assert got == [b"a"]
    assert p.close_rcvd.code == 1000 and p.state is State.CLOSING
    p.receive_data(server_frame(Opcode.TEXT, b"later"))
    assert got == [b"a"]


@pytest.mark.parametrize("wire, error, code", [
    (Frame(Opcode.TEXT, b"masked").serialize(mask=True), ProtocolError, CloseCode.PROTOCOL_ERROR),
    (b"\xc1\x04rsv1", ProtocolError, CloseCode.PROTOCOL_ERROR),       # FIN + RSV1 with no extension
    (server_frame(Opcode.CONT, b"a continuation with nothing to continue"), ProtocolError,
     CloseCode.PROTOCOL_ERROR),
    (server_frame(Opcode.TEXT, b"a", fin=False) + server_frame(Opcode.TEXT, b"b"), ProtocolError,
     CloseCode.PROTOCOL_ERROR),
    (b"\x83\x00", ProtocolError, CloseCode.PROTOCOL_ERROR),                    # opcode 3 is reserved
    (server_frame(Opcode.TEXT, b"x" * (MAX_SIZE + 1)), PayloadTooBig, CloseCode.MESSAGE_TOO_BIG),
    (server_frame(Opcode.TEXT, b"x" * 60_000, fin=False) + server_frame(Opcode.CONT, b"y" * 60_000),
     PayloadTooBig, CloseCode.MESSAGE_TOO_BIG),
], ids=["masked", "rsv1", "stray-continuation", "text-inside-fragmented", "reserved-opcode", "too-big",
        "too-big-fragmented"])
def test_malformed_frames_are_refused_as_websockets_refuses_them(wire, error, code):
    p, got = protocol()
    p.receive_data(server_frame(Opcode.TEXT, b"fine") + wire)
    assert got == [b"fine"]
    assert isinstance(p.parser_exc, error)
    assert p.close_sent.code == code
    p.receive_data(server_frame(Opcode.TEXT, b"after the error"))    # discarded
    assert got == [b"fine"]


def test_the_end_of_the_stream_mid_frame_is_an_abnormal_closure():
    p, got = protocol()
    p.receive_data(server_frame(Opcode.TEXT, b"whole") + server_frame(Opcode.TEXT, b"cut short")[:5])
    p.receive_eof()
    assert got == [b"whole"]
    assert isinstance(p.parser_exc, EOFError)
