"""Service.pump when a publish fails: a closing channel keeps the event, a broken event never blocks.

The broker here is a stand-in: a channel that closes between the readiness check and a
publish, or an event pika cannot encode, cannot be produced on demand with a real broker.
"""
from __future__ import annotations

import pika.exceptions

from common.config import load_settings
from publisher.service import Service
from tests.publisher.conftest import account_env, market_env


class _Broker:
    ready = True

    def __init__(self, fail_on: int, exc: Exception):
        self.inflight: dict = {}
        self.sent: list = []
        self.calls, self.fail_on, self.exc = 0, fail_on, exc

    def cork(self):
        pass

    def uncork(self):
        pass

    def publish(self, ev):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.exc
        self.sent.append(ev.event_id)
        self.inflight[len(self.inflight) + 1] = (ev, 0.0)


def _service(tmp_path) -> Service:
    return Service(load_settings({"GW_RUN_DIR": str(tmp_path)}))


def _fill(svc: Service) -> list[str]:
    for i in range(1, 4):
        svc.handle(account_env(i).encode())
    ids = [ev.event_id for ev in list(svc.outbox._account)]
    assert len(ids) == 3
    return ids


def test_a_closing_channel_keeps_the_event_first_in_line(tmp_path):
    svc = _service(tmp_path)
    ids = _fill(svc)
    svc.broker = _Broker(2, pika.exceptions.ChannelWrongStateError("Channel is closed."))
    svc.pump()
    assert svc.broker.sent == ids[:1]                 # stopped at the refusal
    assert [ev.event_id for ev in svc.outbox._account] == ids[1:]   # nothing lost, order kept
    svc.broker.fail_on = 0
    svc.pump()
    assert svc.broker.sent == ids


def test_an_event_that_cannot_be_encoded_is_counted_and_skipped(tmp_path):
    svc = _service(tmp_path)
    ids = _fill(svc)
    svc.handle(market_env(1).encode())
    svc.broker = _Broker(2, TypeError("header 'x': unsupported value"))
    svc.pump()
    assert svc.broker.sent[:2] == [ids[0], ids[2]] and len(svc.broker.sent) == 3   # then the market event
    assert svc.tally.bad_input["unpublishable"] == 1
    assert len(svc.outbox) == 0


def test_an_unexpected_error_in_handle_costs_one_envelope(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    calls = []

    def boom(env, *_args):
        calls.append(env)
        if len(calls) == 1:
            raise AttributeError("a bug")
        return []

    monkeypatch.setattr(svc.pipeline, "process", boom)

    class _Sock:
        def __init__(self, n):
            self.left = [market_env(i).encode() for i in range(1, n + 1)]

        def recv_multipart(self, _flags):
            import zmq
            if not self.left:
                raise zmq.Again()
            return self.left.pop(0)

    svc._sock = _Sock(3)
    svc._on_readable()
    assert len(calls) == 3                              # the envelopes after the bug were handled
    assert svc.tally.bad_input["internal_error"] == 1
