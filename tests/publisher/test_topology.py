"""A gateway queue deleted under the running publisher (real broker, real process):
account events the broker returns unroutable are held, the topology is declared
again and they are published again in order; the restoration is an alert."""
from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pika
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from api import status as api_status
from api.models import ConnectionStatus
from tests.publisher.conftest import account_env
from tests.support import wait_for
from tests.support.stores import rabbitmqctl

QUEUE = "ws-gateway.executions"


def metric(run_dir, name: str, labels: dict | None = None) -> float | None:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir / "metrics"))
    return registry.get_sample_value(name, labels or {})


def take_all(ch, queue: str) -> list[dict]:
    """basic_get with auto-ack until the queue is empty: once taken, a deletion cannot lose them."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(orjson.loads(body))


def queue_policies(vhost: str) -> dict[str, str]:
    rows = orjson.loads(rabbitmqctl("list_queues", "-p", vhost, "name", "policy", "--formatter", "json"))
    return {r["name"]: r["policy"] for r in rows}


def rabbitmq_item(run_dir) -> dict:
    """The publisher's broker link as GET /api/v1/status shows it (through the response model)."""
    files = api_status.read_status_files(run_dir / "status")
    [item] = [c for c in api_status.connection_list(files) if c["name"] == "rabbitmq"]
    return ConnectionStatus.model_validate(item).model_dump(mode="json")


@pytest.mark.timeout(180)
def test_executions_queue_deleted_while_fills_flow_loses_none(publisher, broker, amqp_url, amqp_vhost, short_tmp):
    pub = publisher()
    wait_for(lambda: pub.status()["retention_policy"]["applied"], timeout=60, message="retention applied")
    total, before, burst = 3000, 1000, 500
    sent = [0]
    deleted = threading.Event()

    def pusher() -> None:     # ~1,000 fills/s in bursts; the main thread never uses this socket meanwhile
        for i in range(1, total + 1):
            pub.push(account_env(i, "execution"))
            sent[0] = i
            if i == before:
                deleted.wait(30)
            elif i % 50 == 0 and i > before + burst:
                time.sleep(0.05)

    t = threading.Thread(target=pusher, daemon=True)
    t.start()
    got: list[dict] = []
    try:
        # The pusher stops for the instant of the deletion: a fill the broker has already routed
        # to the queue when the queue is deleted is destroyed by the deletion itself (and acked),
        # which no publisher can tell. Every fill the queue took is in `got` first, so a fill
        # missing at the end was lost by the gateway.
        wait_for(lambda: (s := pub.status())["confirmed"].get("executions", 0) == before and s["unconfirmed"] == 0,
                 timeout=30, message="first fills confirmed")
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            ch = conn.channel()
            got += take_all(ch, QUEUE)
            ch.queue_delete(QUEUE, if_empty=True)
        finally:
            conn.close()
        deleted_at = sent[0]
        # The next 500 reach the publisher while it is stopped, so it publishes them in one go:
        # hundreds are in flight when the first comes back unroutable.
        os.kill(pub.proc.pid, signal.SIGSTOP)
        try:
            deleted.set()
            wait_for(lambda: sent[0] >= before + burst, timeout=30, message="burst pushed")
        finally:
            os.kill(pub.proc.pid, signal.SIGCONT)
    finally:
        t.join(60)
    assert 0 < deleted_at < total, "the queue was not deleted while fills flowed"

    wait_for(lambda: (s := pub.status())["confirmed"].get("executions", 0) >= total and s["buffered"] == 0
             and s["unconfirmed"] == 0 and not s["topology"]["restoring"], timeout=60, message="all fills confirmed")
    st = pub.status()
    got += [b for _m, _p, b in broker.drain(QUEUE, None, timeout=20)]
    seqs = [b["stream_seq"] for b in got]
    # Every fill, once, in the order sent; returned fills were not counted as delivered.
    assert seqs == list(range(1, total + 1)), (len(seqs), sorted(set(range(1, total + 1)) - set(seqs))[:10],
                                               deleted_at, st["returned"], st["topology"], st["events_in"])
    assert st["confirmed"]["executions"] == total
    returned = st["returned"].get("executions", 0)
    assert returned >= 2, "the deletion was not exercised with fills in flight"

    # The alert: status file, log line, counter, system event; the queue has its retention again.
    topo = st["topology"]
    assert topo["restorations"] >= 1 and topo["held"] == 0
    assert sum(topo["last"]["returned"].values()) >= 1 and topo["last"]["trigger"]["event_class"] == "executions"
    assert "broker topology restored" in pub.log()
    assert metric(short_tmp, "wsgw_publisher_topology_restored_total") >= 1
    system = broker.drain("ws-gateway.system", None, timeout=5)
    restored = [b for m, _p, b in system if m.routing_key == "system.topology_restored"]
    assert restored and sum(sum(b["data"]["returned"].values()) for b in restored) == returned
    assert st["broker"]["connects"] == 1      # restored on the open channel, no reconnect
    assert queue_policies(amqp_vhost)[QUEUE] == "ws-gateway-retention-account"
    assert rabbitmq_item(short_tmp)["topology"]["restorations"] >= 1
    assert pub.stop() == 0


@pytest.mark.timeout(90)
def test_account_queue_deleted_while_idle_is_restored_without_a_reconnect(publisher, broker, amqp_url):
    """No fill flows, so nothing comes back: the 10 s depth check notices the queue is gone.
    Its passive declare used to close the publishing channel (404) and cost a reconnect."""
    pub = publisher()
    wait_for(lambda: "ws-gateway.positions" in pub.status()["account_queue_depths"], timeout=15,
             message="first depth check")
    broker.ch.queue_delete("ws-gateway.positions")
    wait_for(lambda: pub.status()["topology"]["restorations"] == 1, timeout=30, message="queue restored")
    st = pub.status()
    assert st["topology"]["last"]["trigger"] == {"reason": "queue_missing", "queue": "ws-gateway.positions"}
    assert st["broker"]["connects"] == 1 and st["broker"]["state"] == "ready"
    assert broker.count("ws-gateway.positions") == 0      # declared again (a missing queue raises here)
    pub.push(account_env(1, "position"))
    [(method, _p, body)] = broker.drain("ws-gateway.positions", 1)
    assert body["stream_seq"] == 1 and pub.status()["returned"] == {}
    [(method, _p, body)] = [m for m in broker.drain("ws-gateway.system", None, timeout=3)
                            if m[0].routing_key == "system.topology_restored"]
    assert body["data"]["trigger"]["queue"] == "ws-gateway.positions"
    assert pub.stop() == 0
