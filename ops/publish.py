"""What the listener does with an event: metrics, metrics-file cleanup, a system event.

The system event goes to the publisher's ZeroMQ PULL socket as a ``system`` envelope
(docs/internals.md), not over a pika connection of our own:
- the send never blocks (NOBLOCK, bounded queue), so supervisord's listener never waits on
  RabbitMQ — a short-lived pika connection costs a TCP+AMQP handshake per event and hangs
  while the broker is away;
- the event gets the publisher's guarantees (confirms, outage buffer, spool, the same body
  as every other system event);
- when the publisher itself is the one that died, ZeroMQ keeps the message in this
  connecting socket's queue and delivers it as soon as the restarted publisher binds again.
The cost: a listener restart while the publisher is down loses what is queued (bounded
linger on close); and what the publisher had received but not yet published when it was
killed is lost with it, so the listener re-sends the events of the last few seconds when
the publisher crashes (same envelope, same event id: consumers drop the duplicate).
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import orjson
import zmq

from common.addresses import publisher_priority
from common.envelope import SYSTEM, Envelope
from ops import metrics

QUEUE_LIMIT = 1000     # system events queued for an absent publisher
LINGER_MS = 1000       # at exit, how long queued events may still take to leave


class SystemEventSink:
    """The listener's outlet: system events to the publisher's ZeroMQ socket, and a dead process's
    live gauges out of the metrics directory."""

    def __init__(self, run_dir: Path, metrics_dir: str | None = None, ctx: zmq.Context | None = None):
        self.metrics_dir = metrics_dir if metrics_dir is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._ctx = ctx or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, QUEUE_LIMIT)
        self._sock.setsockopt(zmq.LINGER, LINGER_MS)
        self.address = publisher_priority(run_dir)   # system events: read ahead of market data
        self._sock.connect(self.address)

    def system_event(self, kind: str, details: dict, trace_id: str | None = None, recv_ns: int | None = None,
                     result: str = "queued") -> Envelope | None:
        """Queue a ``system`` envelope for the publisher; None (and counted) when the queue is full.

        The same (kind, details, recv_ns) always gives the same envelope, hence the same
        event id at the publisher: a re-send is a duplicate consumers drop on message_id.
        """
        env = Envelope(kind=SYSTEM, topic=kind, payload=orjson.dumps(details),
                       recv_ns=recv_ns if recv_ns is not None else time.time_ns(),
                       conn_id="ops", trace_id=trace_id or uuid.uuid4().hex)
        return env if self.send(env, result) else None

    def send(self, env: Envelope, result: str = "queued") -> bool:
        try:
            self._sock.send_multipart(env.encode(), flags=zmq.NOBLOCK)
        except zmq.Again:
            metrics.SYSTEM_EVENTS.labels(env.topic, "dropped").inc()
            return False
        metrics.SYSTEM_EVENTS.labels(env.topic, result).inc()
        return True

    def process_gone(self, pid: int) -> bool:
        """Drop a dead process's live gauges from /metrics (its counters stay and are summed)."""
        if not self.metrics_dir or pid <= 0:
            return False
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.metrics_dir)
        return True

    def close(self) -> None:
        self._sock.close()
