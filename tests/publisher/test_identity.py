"""One account fact, one message_id and one shape, whatever the source.

Recorded WebSocket pushes and recorded REST answers for the same account state go
through the publisher's pipeline; the judge compares what comes out with each other
and with Bybit's own keys (execId, orderId ...), never with the gateway's id code.
"""
from __future__ import annotations

import copy
from pathlib import Path

import orjson

from common.envelope import Envelope, json_envelope
from publisher.events import StreamNumbers
from publisher.pipeline import Pipeline

FRAMES = Path(__file__).resolve().parent.parent / "frames"
RECV_NS = 1_785_000_010_123_456_789
# Fields a REST answer cannot give: present with null in events reconciled over REST.
REST_NULLS = {"execution": {"execPnl", "isLeverage", "marketUnit"},
              "order": {"brokerOrderPrice", "closedPnl", "feeCurrency", "rpiMatchedQty", "rpiTakerAccess",
                        "slippageTolerance", "slippageToleranceType"},
              "position": set(), "wallet": set()}
PAIRS = {"execution": "rest_execution_list", "order": "rest_order_realtime", "position": "rest_position_list",
         "wallet": "rest_wallet_balance"}


def load(name: str) -> dict:
    return orjson.loads((FRAMES / f"{name}.json").read_bytes())


def push(frame: dict, seq: int = 1) -> Envelope:
    return Envelope("frame", orjson.dumps(frame), endpoint="private", topic=frame["topic"], recv_ns=RECV_NS,
                    stream_seq=seq, epoch="ep1", conn_id="c1", trace_id="t")


def reconciled(topic: str, records: list, category: str | None, fetched_ms: int = 1785000009000) -> Envelope:
    return json_envelope("rest", {"topic": topic, "category": category, "list": records,
                                  "fetched_at_ms": fetched_ms}, endpoint="private", topic=topic,
                         recv_ns=RECV_NS, epoch="ep1")


def bodies(events) -> list[dict]:
    return [orjson.loads(e.body) for e in events]


def test_rest_records_are_published_in_the_push_shape():
    for topic, rest_name in PAIRS.items():
        p = Pipeline(StreamNumbers("e"))
        [ws] = bodies(p.process(push(load(topic))))
        answer = load(rest_name)["result"]
        [rest] = bodies(p.process(reconciled(topic, answer["list"], answer.get("category", "linear")
                                              if topic != "wallet" else None)))
        assert rest["source"] == "bybit-rest" and ws["source"] == "bybit"
        [w], [r] = ws["data"], rest["data"]
        assert set(r) == set(w), (topic, set(r) ^ set(w))
        for key in REST_NULLS[topic]:
            assert r[key] is None, (topic, key)
        for key in set(w) - REST_NULLS[topic]:
            assert type(r[key]) is type(w[key]) or r[key] is None or w[key] is None, (topic, key, r[key], w[key])
        if topic == "position":
            assert r["entryPrice"] == answer["list"][0]["avgPrice"] and "avgPrice" not in r
        assert (ws["event_class"], ws["category"]) == (rest["event_class"], rest["category"])


def test_a_fill_pushed_and_reconciled_twice_has_one_id():
    p = Pipeline(StreamNumbers("e"))
    frame = load("execution")
    answer = load("rest_execution_list")["result"]
    seen = bodies(p.process(push(frame)))
    seen += bodies(p.process(reconciled("execution", answer["list"], "linear", 1785000009000)))
    seen += bodies(p.process(reconciled("execution", answer["list"], "linear", 1785000099000)))
    exec_ids = {r["execId"] for b in seen for r in b["data"]}
    assert exec_ids == {frame["data"][0]["execId"]}
    assert len({b["event_id"] for b in seen}) == 1
    # the same fill from another process's numbering (a restart, another instance): same id
    again = bodies(Pipeline(StreamNumbers("other")).process(push(frame, seq=42)))
    assert again[0]["event_id"] == seen[0]["event_id"]


def test_order_and_position_states_have_one_id_per_state_from_either_source():
    for topic in ("order", "position"):
        p = Pipeline(StreamNumbers("e"))
        answer = load(PAIRS[topic])["result"]
        [ws] = bodies(p.process(push(load(topic))))
        [rest] = bodies(p.process(reconciled(topic, answer["list"], "linear")))
        assert ws["event_id"] == rest["event_id"], topic
        assert ws["version"] == rest["version"] == int(ws["data"][0]["updatedTime"])
        # the next state of the same order / position is a new fact
        later = load(topic)
        later["data"][0]["updatedTime"] = str(int(later["data"][0]["updatedTime"]) + 5)
        later["data"][0]["leavesQty" if topic == "order" else "size"] = "0.010"
        [nxt] = bodies(p.process(push(later)))
        assert nxt["event_id"] != ws["event_id"] and nxt["version"] > ws["version"]


def test_wallet_a_b_a_is_three_facts_and_a_repeated_push_is_one():
    a = load("wallet")
    b = copy.deepcopy(a)
    b["creationTime"] += 1000
    b["data"][0]["coin"][0]["locked"] = "25"
    a2 = copy.deepcopy(a)
    a2["creationTime"] += 2000
    p = Pipeline(StreamNumbers("e"))
    out = bodies(p.process(push(a)) + p.process(push(b)) + p.process(push(a2)) + p.process(push(a)))
    ids = [o["event_id"] for o in out]
    assert len(set(ids[:3])) == 3, "A -> B -> A must be three events a consumer keeps"
    assert ids[3] == ids[0], "the same push delivered twice must keep its id"
    assert [o["version"] for o in out[:3]] == [a["creationTime"], b["creationTime"], a2["creationTime"]]


def test_stream_seq_counts_per_routing_key_across_sources():
    p = Pipeline(StreamNumbers("e"))
    frame = load("execution")
    spot = copy.deepcopy(frame)
    spot["data"][0].update(category="spot", execId="spot-fill-1")
    both = copy.deepcopy(frame)
    both["data"] = [dict(frame["data"][0], execId="lin-2"), dict(spot["data"][0], execId="spot-2")]
    answer = load("rest_execution_list")["result"]
    evs = p.process(push(frame, 1)) + p.process(push(spot, 2)) + p.process(push(both, 3))
    evs += p.process(reconciled("execution", [dict(answer["list"][0], execId="lin-3")], "linear"))
    seqs: dict[str, list[int]] = {}
    for e in evs:
        b = orjson.loads(e.body)
        seqs.setdefault(e.routing_key, []).append(b["stream_seq"])
        assert b["stream_epoch"] == "e" and e.headers["stream_seq"] == b["stream_seq"]
    assert seqs == {"executions.linear": [1, 2, 3], "executions.spot": [1, 2]}


def test_a_counted_ingest_gap_shows_in_the_consumers_numbering_and_names_the_routing_key():
    p = Pipeline(StreamNumbers("e"))
    trade = load("public_trade")

    def env(seq: int) -> Envelope:
        return Envelope("frame", orjson.dumps(trade), endpoint="linear", topic=trade["topic"],
                        recv_ns=RECV_NS + seq, stream_seq=seq, epoch="ep1")

    first = p.process(env(1)) + p.process(env(2))
    later = p.process(env(6))           # frames 3, 4, 5 never reached the publisher
    assert [orjson.loads(e.body)["stream_seq"] for e in first] == [1, 2]
    gap, ev = later
    notice = orjson.loads(gap.body)
    assert gap.routing_key == "system.stream_gap"
    assert notice["data"]["routing_key"] == ev.routing_key == "trades.linear.BTCUSDT"
    assert (notice["data"]["stream_seq_from"], notice["data"]["stream_seq_to"]) == (3, 5)
    assert orjson.loads(ev.body)["stream_seq"] == 6


def test_system_events_are_numbered_in_their_own_streams():
    p = Pipeline(StreamNumbers("e"))
    evs = [p.system("broker_outage", {"n": i}, recv_ns=RECV_NS + i) for i in range(3)]
    evs.append(p.system("events_dropped", {"n": 0}, recv_ns=RECV_NS))
    assert [(e.routing_key, orjson.loads(e.body)["stream_seq"]) for e in evs] == [
        ("system.broker_outage", 1), ("system.broker_outage", 2), ("system.broker_outage", 3),
        ("system.events_dropped", 1)]


def test_a_fill_pushed_then_reconciled_twice_is_one_message_id_on_the_bus(publisher, broker):
    """Through the real publisher process and RabbitMQ: three deliveries, one message_id."""
    from tests.support import wait_for

    pub = publisher()
    frame = load("execution")
    answer = load("rest_execution_list")["result"]
    pub.push(push(frame))
    for fetched in (1785000009000, 1785000099000):
        pub.push(reconciled("execution", answer["list"], "linear", fetched))
    wait_for(lambda: broker.count("ws-gateway.executions") == 3, timeout=10, message="three deliveries queued")
    got = broker.drain("ws-gateway.executions", 3)
    ids = {props.message_id for _m, props, _b in got}
    assert len(ids) == 1 and {b["event_id"] for _m, _p, b in got} == ids
    assert sorted(b["source"] for _m, _p, b in got) == ["bybit", "bybit-rest", "bybit-rest"]
    assert [b["stream_seq"] for _m, _p, b in got] == [1, 2, 3]      # numbered per routing key
    assert {b["data"][0]["execId"] for _m, _p, b in got} == {frame["data"][0]["execId"]}
