"""ingest never holds both forms of a private channel (order with order.linear ...), even when
the table already has both (rows written before the API refused the mix): the first is
subscribed, the other reported failed with why, and no subscribe request carries both.
ingest runs as its own process against the simulator, which refuses a mixed request."""
from __future__ import annotations

import pytest

from common.topics import build_topic
from ingest import plan
from tests.ingest.test_ingest import subscribe_all
from tests.support import wait_for

pytestmark = pytest.mark.timeout(120)


def test_batches_never_mix_the_two_forms():
    topics = ["execution.linear", "order", "order.spot", "wallet", "execution", "position.option", "position"]
    batches = plan.batches("private", topics)
    assert sorted(sum(batches, [])) == sorted(topics)
    for batch in batches:
        wholes = {t for t in batch if "." not in t and t != "wallet"}
        scoped = {t.split(".")[0] for t in batch if "." in t}
        assert not wholes & {"order", "execution", "position"} or not scoped, batch
    assert plan.batches("linear", ["order", "order.linear"]) == [["order", "order.linear"]]


def test_other_private_forms():
    assert plan.other_private_forms("order") == ["order.spot", "order.linear", "order.inverse", "order.option"]
    assert plan.other_private_forms("position") == ["position.linear", "position.inverse", "position.option"]
    assert plan.other_private_forms("execution.linear") == ["execution"]
    assert plan.other_private_forms("wallet") == [] and plan.other_private_forms("orderbook.50.BTCUSDT") == []
    held = {"order.linear"}
    assert "order.linear" in plan.private_form_clash("private", "order", held.__contains__)
    assert plan.private_form_clash("private", "order.spot", held.__contains__) is None
    assert plan.private_form_clash("linear", "order", held.__contains__) is None


def test_a_table_holding_both_forms_subscribes_one_of_each(ingest, ingest_db, sim):
    pairs = [(build_topic("order"), build_topic("order", "linear")),
             (build_topic("execution", "spot"), build_topic("execution")),
             (build_topic("position"), build_topic("position", "option"))]
    subscribe_all(ingest, ingest_db, [t for pair in pairs for t in pair] + [build_topic("order", "spot")])

    def settled():
        st = ingest.statuses()
        return all(sorted(st.get(t.key, "") for t in pair) == ["active", "failed"] for pair in pairs) and st
    statuses = wait_for(settled, 20, message=f"one of each pair active, the other failed: {ingest.statuses()}")
    subscribed = set(sim.state()["subscribed"]["private"])
    for pair in pairs:
        [kept] = [t for t in pair if statuses[t.key] == "active"]
        [refused] = [t for t in pair if t is not kept]
        assert kept.name in subscribed and refused.name not in subscribed
        report = [e.json() for e in ingest.persister.of_kind("sub_status") if e.json()["topic"] == refused.name][-1]
        assert report["status"] == "failed" and kept.name in report["error"] and "conflicts" in report["error"]
        assert refused.key not in ingest.status()["topics"]
    # order.spot is the same (category-scoped) form as order.linear: it follows order's fate
    assert (statuses["private:order.spot"] == "active") == (statuses["private:order"] == "failed")
    assert "cannot be in the same request" not in ingest.log()
