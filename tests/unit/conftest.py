"""Fixtures for the pure tests that still need a local ZeroMQ socket."""
from __future__ import annotations

import pytest
import zmq

from common import addresses
from ingest.handoff import Handoff


@pytest.fixture
def slow_publisher(short_tmp):
    """(hand-off, the publisher's end): a PULL socket that takes one message at a time and only
    when the test reads it, so frames wait in the hand-off. Both closed afterwards."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 1)
    pull.bind(addresses.publisher_frames(short_tmp))
    pull.bind(addresses.publisher_priority(short_tmp))
    h = Handoff(short_tmp, bound=10**6, ctx=ctx)
    try:
        yield h, pull
    finally:
        h.publisher.close()
        h.persister.close()
        pull.close(0)
        ctx.term()
