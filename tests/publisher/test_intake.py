"""The publisher's intake keeps pace with the broker: while RabbitMQ takes events, no more than
``intake_high`` market events wait in the outbox and the rest stay in the frames socket (in
ingest's buffer, in the whole gateway), so a saturated publisher does not spend its CPU making
events that expire in its outbox. While the broker is away everything is taken, as before.

Real ZeroMQ sockets (inproc) and the real Service; the broker is a stand-in whose confirm
window the test fills and empties (confirm timing cannot be driven with a real broker).
"""
from __future__ import annotations

import asyncio

import zmq

from common.config import load_settings
from common.envelope import Socket, pack
from publisher.service import Service
from tests.publisher.conftest import account_env, market_env


class _Broker:
    def __init__(self, ready: bool = True):
        self.ready = ready
        self.inflight: dict = {}
        self.sent: list = []

    def cork(self):
        pass

    def uncork(self):
        pass

    def publish(self, ev):
        self.sent.append(ev)
        self.inflight[len(self.sent)] = (ev, 0.0)


def _run(tmp_path, ready: bool, n: int, confirm_rounds: int = 0, batch: int = 1):
    """Push ``n`` market envelopes (and one account envelope at the end) into the service's
    socket, ``batch`` to a message as ingest packs them; let it read; then confirm everything in
    flight ``confirm_rounds`` times."""
    svc = Service(load_settings({"GW_RUN_DIR": str(tmp_path), "PUBLISHER_CONFIRM_WINDOW": "100"}))
    svc.broker = _Broker(ready)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL, socket_class=Socket)
    push = ctx.socket(zmq.PUSH, socket_class=Socket)
    pull.setsockopt(zmq.RCVHWM, 0)
    push.setsockopt(zmq.SNDHWM, 0)
    pull.bind("inproc://intake-test")
    push.connect("inproc://intake-test")
    seen: list[int] = []

    async def main():
        for i in range(1, n + 1, batch):
            envs = [market_env(j).encode() for j in range(i, min(n + 1, i + batch))]
            push.send_multipart(envs[0] if batch == 1 else pack([(e[1], e[2]) for e in envs]), zmq.NOBLOCK)
        push.send_multipart(account_env(1).encode(), zmq.NOBLOCK)
        svc._sock = pull
        svc._on_readable()
        for _ in range(50):                       # the reads it schedules itself (call_soon)
            await asyncio.sleep(0)
        seen.append(svc._handled)
        for _ in range(confirm_rounds):
            svc.broker.inflight.clear()           # the broker confirmed the window
            svc.pump()
            for _ in range(50):
                await asyncio.sleep(0)
            seen.append(svc._handled)

    try:
        asyncio.run(main())
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
    return svc, seen


def test_intake_pauses_at_the_mark_while_the_broker_takes_events(tmp_path):
    svc, seen = _run(tmp_path, ready=True, n=3000)
    high = svc.intake_high
    assert high == 500                            # max(confirm window 100, INTAKE_HIGH_MIN)
    # the window (100) went out, then intake stopped with `high` market events waiting
    assert len(svc.broker.sent) == 100
    assert svc.outbox.market_waiting == high
    assert seen[0] == high + 100 and svc.intake_paused


def test_the_mark_counts_events_not_messages(tmp_path):
    """ingest sends up to 32 frames in a message: intake still stops at the mark (give or take one
    message), not after as many messages, which held the loop for half a second in a flood and
    made every book wait behind thousands of trades."""
    svc, seen = _run(tmp_path, ready=True, n=6400, batch=32)
    high = svc.intake_high
    assert high + 100 <= seen[0] < high + 100 + 32
    assert high <= svc.outbox.market_waiting < high + 32 and svc.intake_paused


def test_batched_intake_resumes_and_loses_nothing(tmp_path):
    svc, seen = _run(tmp_path, ready=True, n=6400, batch=32, confirm_rounds=80)
    assert seen[-1] == 6401 and [ev.event_class for ev in svc.broker.sent].count("trades") == 6400


def test_intake_resumes_as_the_broker_confirms_and_loses_nothing(tmp_path):
    svc, seen = _run(tmp_path, ready=True, n=3000, confirm_rounds=40)
    assert seen == sorted(seen) and seen[0] < seen[-1]
    assert seen[-1] == 3001                        # every envelope taken in the end, the account one too
    assert not svc.intake_paused
    classes = [ev.event_class for ev in svc.broker.sent]
    assert classes.count("trades") == 3000 and len(classes) == 3001
    assert svc.tally.dropped == {} or sum(svc.tally.dropped.values()) == 0


def test_intake_takes_everything_while_the_broker_is_away(tmp_path):
    svc, seen = _run(tmp_path, ready=False, n=3000)
    assert seen[0] == 3001 and not svc.intake_paused
    assert svc.outbox.market_waiting == 3000 and not svc.broker.sent


def test_acks_pump_once_enough_of_the_window_is_free(tmp_path):
    """pika hands over each ack frame of a socket read separately; while the window is nearly
    full the publisher waits for a few to free room, then writes once (a send(2) per ack frame
    before). With nothing left in flight it always pumps: no event waits for an ack never due."""
    svc = Service(load_settings({"GW_RUN_DIR": str(tmp_path), "PUBLISHER_CONFIRM_WINDOW": "100"}))
    assert svc.pump_min == 12
    corks = []
    broker = svc.broker = _Broker(True)
    broker.cork = lambda: corks.append(len(broker.sent))
    for i in range(1, 301):
        svc.handle(market_env(i).encode())

    def ack(n: int) -> None:
        settled = [broker.inflight.pop(k) for k in list(broker.inflight)[:n]]
        svc._on_confirm(settled, True, 0.0)

    svc.pump()                                     # the first window goes out
    assert len(broker.sent) == 100 and len(corks) == 1
    ack(5)
    ack(5)
    assert len(corks) == 1                         # 10 slots free: not yet worth a write
    ack(5)
    assert len(corks) == 2 and len(broker.sent) == 115
    ack(len(broker.inflight))                      # everything confirmed: pumps whatever is free
    assert len(corks) == 3 and len(broker.sent) == 215
    assert svc.tally.confirmed["trades"] == 115


def test_a_batch_of_envelopes_is_taken_whole_and_a_broken_one_is_counted(tmp_path):
    """ingest packs several frames into one message (common/envelope.py pack): each becomes its
    event in order; a batch whose lengths do not add up is counted as a bad envelope, not raised."""
    svc = Service(load_settings({"GW_RUN_DIR": str(tmp_path), "PUBLISHER_CONFIRM_WINDOW": "100"}))
    svc.broker = _Broker(ready=False)
    envs = [market_env(i).encode() for i in range(1, 6)]
    svc._take(pack([(e[1], e[2]) for e in envs]))
    assert svc._handled == 5 and svc.outbox.market_waiting == 5
    seqs = [ev.stream_seq for ev in (svc.outbox.pop() for _ in range(5))]
    assert seqs == list(range(seqs[0], seqs[0] + 5))       # in order, none lost
    broken = pack([(e[1], e[2]) for e in envs])
    svc._take([broken[0], broken[1][:-3]])
    assert svc.tally.bad_input["envelope"] == 1 and svc._handled == 5


def test_the_priority_socket_is_read_while_market_intake_is_paused(tmp_path):
    """ingest's account frames and system events come on a socket of their own: read (and
    published first) while market intake waits at the mark, not after the market backlog."""
    svc = Service(load_settings({"GW_RUN_DIR": str(tmp_path), "PUBLISHER_CONFIRM_WINDOW": "100"}))
    svc.broker = _Broker(True)
    ctx = zmq.Context()
    socks = []
    for name in ("market", "priority"):
        pull = ctx.socket(zmq.PULL, socket_class=Socket)
        push = ctx.socket(zmq.PUSH, socket_class=Socket)
        pull.setsockopt(zmq.RCVHWM, 0)
        push.setsockopt(zmq.SNDHWM, 0)
        pull.bind(f"inproc://intake-{name}")
        push.connect(f"inproc://intake-{name}")
        socks += [pull, push]
    market_pull, market_push, prio_pull, prio_push = socks

    async def main():
        for i in range(1, 3001):
            market_push.send_multipart(market_env(i).encode(), zmq.NOBLOCK)
        svc._sock, svc._psock = market_pull, prio_pull
        svc._on_readable()
        for _ in range(50):
            await asyncio.sleep(0)
        assert svc.intake_paused and len(svc.broker.sent) == 100      # the window full, the mark reached
        svc.broker.inflight.popitem()                                  # one slot confirmed
        prio_push.send_multipart(account_env(1).encode(), zmq.NOBLOCK)
        svc._on_priority()                                             # as the loop's reader calls it
        for _ in range(10):
            await asyncio.sleep(0)

    try:
        asyncio.run(main())
    finally:
        for sock in socks:
            sock.close(0)
        ctx.term()
    assert svc.intake_paused                                           # market intake still waits
    assert svc.broker.sent[-1].event_class == "order_status"           # the account event went out first
