"""ingest/account_state.py on the recorded frames: the rest payloads (docs/internals.md) and
their rows in the persister, watermarks, the coins to ask for, wallet answers merged."""
from __future__ import annotations

import json
from pathlib import Path

from ingest.account_state import (EXEC_MARGIN_MS, LOSS_MARGIN_MS, SEVEN_DAYS_MS, Seen, Snapshot, exec_start_ms,
                                  loss_start_ms, merge_wallets)
from persister.rows import rows_from_rest

FRAMES = Path(__file__).resolve().parent.parent / "frames"


def frame(name: str) -> dict:
    return json.loads((FRAMES / f"{name}.json").read_text())


def snapshot() -> Snapshot:
    snap = Snapshot()
    orders = frame("rest_order_realtime")
    snap.add_orders("linear", orders["result"]["list"], orders["time"])
    pos = frame("rest_position_list")
    snap.add_positions("linear", pos["result"]["list"], pos["time"])
    ex = frame("rest_execution_list")
    snap.add_executions("linear", ex["result"]["list"], ex["time"])
    wallet = frame("rest_wallet_balance")
    snap.wallet, snap.wallet_ms = wallet["result"]["list"], wallet["time"]
    return snap


def test_seen_remembers_every_coin_of_the_unified_wallet():
    seen = Seen()
    w = frame("wallet")
    w["data"][0]["coin"].append(dict(w["data"][0]["coin"][0], coin="BTC", walletBalance="0.5"))
    seen.observe("wallet", w)
    assert seen.known().coins == {"USDT", "BTC"}
    w["data"][0]["coin"] = w["data"][0]["coin"][:1]      # a later push without BTC forgets nothing
    seen.observe("wallet", w)
    assert seen.known().coins == {"USDT", "BTC"}


def test_merge_wallets_adds_the_coins_asked_for_by_name():
    first = frame("rest_wallet_balance")["result"]["list"]
    usdt = first[0]["coin"][0]
    zero_btc = dict(usdt, coin="BTC", walletBalance="0", equity="0")
    more = [dict(first[0], coin=[zero_btc, dict(usdt)])]
    merged = merge_wallets(first, more)
    assert [c["coin"] for c in merged[0]["coin"]] == ["USDT", "BTC"]
    assert merged[0]["coin"][1]["walletBalance"] == "0"
    assert [c["coin"] for c in first[0]["coin"]] == ["USDT"]          # inputs unchanged


def test_bodies_become_rows_in_the_persister():
    snap = snapshot()
    bodies = snap.bodies()
    assert [(b["topic"], b["category"]) for b in bodies] == \
        [("execution", "linear"), ("order", "linear"), ("position", "linear"), ("wallet", None)]
    tables = {}
    for b in bodies:
        rows, bad = rows_from_rest(b, f"rest:{b['topic']}")
        assert not bad
        tables[b["topic"]] = rows
    assert tables["position"][0].values[5] is not None          # entry price from avgPrice
    assert tables["wallet"][0].values[-4] == snap.wallet_ms       # the balance version is Bybit's time
    assert tables["order"][0].key == ("1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b",)


def test_bodies_are_chunked_and_oldest_first():
    snap = Snapshot()
    recs = [{"execId": f"e{i}", "execTime": str(1000 + (i * 7) % 450)} for i in range(450)]
    snap.add_executions("linear", recs, 5)
    bodies = snap.bodies()
    assert [len(b["list"]) for b in bodies] == [200, 200, 50]
    times = [int(r["execTime"]) for b in bodies for r in b["list"]]
    assert times == sorted(times)


def test_an_order_seen_by_two_queries_keeps_its_newest_state():
    snap = Snapshot()
    rec = frame("rest_order_realtime")["result"]["list"][0]
    newer = {**rec, "orderStatus": "Filled", "updatedTime": str(int(rec["updatedTime"]) + 5)}
    snap.add_orders("linear", [newer], 2)
    snap.add_orders("linear", [rec], 1)
    assert snap.orders[rec["orderId"]][1]["orderStatus"] == "Filled"
    assert snap.counts()["open_orders"] == 0 and snap.fetched_ms["order"] == 2


def test_seen_tracks_open_orders_newest_fill_and_open_positions():
    seen = Seen()
    seen.observe("order", frame("order"))
    seen.observe("execution", frame("execution"))
    seen.observe("position", frame("position"))
    known = seen.known()
    assert known.orders == {"1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b": "linear"}
    assert known.exec_ms == 1785000008009 and known.order_ms == 1785000008009
    assert known.positions == {("linear", "BTCUSDT")}
    filled = frame("order")
    filled["data"][0]["orderStatus"] = "Filled"
    seen.observe("order.linear", filled)
    flat = frame("position")
    flat["data"][0].update(size="0", side="")
    seen.observe("position", flat)
    assert seen.known().orders == {} and seen.known().positions == set()


def test_seen_ignores_wrong_typed_fields_of_any_push():
    """Found by fuzzing: a list orderStatus raised TypeError (unhashable) inside ingest's reader,
    which dropped the private connection and never handed the push off."""
    import copy
    import random

    rng = random.Random(7)
    values = [None, 0, -1, 1.5, "", [], {}, [1], {"a": 1}, True, [None], [{}]]
    for name in ("order", "execution", "position", "wallet"):
        base = frame(name)
        for _ in range(300):
            f = copy.deepcopy(base)
            rec = f["data"][0] if isinstance(f.get("data"), list) else f
            rec[rng.choice(sorted(rec))] = rng.choice(values)
            if rng.random() < 0.2:
                f["data"] = rng.choice(values)
            Seen().observe(base["topic"], f)       # must not raise


def test_exec_start_is_the_newest_known_fill_or_loss_start_minus_a_margin():
    now = 1785000100000
    assert exec_start_ms(None, None, now) is None
    assert exec_start_ms(now - 5000, None, now) == now - 5000 - EXEC_MARGIN_MS
    assert exec_start_ms(now - 5000, now - 90000, now) == now - 90000 - EXEC_MARGIN_MS
    assert exec_start_ms(1, None, now) == now - SEVEN_DAYS_MS + 60_000     # Bybit's range is 7 days at most


def test_loss_start_from_a_dead_downstreams_last_status():
    assert loss_start_ms("persister", {"updated_at": 1000.0, "database": {"up": True, "since": 10.0}}) == \
        1_000_000 - LOSS_MARGIN_MS
    assert loss_start_ms("persister", {"updated_at": 1000.0, "database": {"up": False, "since": 400.0}}) == \
        400_000 - LOSS_MARGIN_MS
    assert loss_start_ms("publisher", {"updated_at": 1000.0, "broker": {"state": "down", "since": 700.0}}) == \
        700_000 - LOSS_MARGIN_MS
    assert loss_start_ms("publisher", {"pid": 3}) is None


def test_records_a_push_already_handed_off_are_not_sent_again_unless_a_downstream_may_have_lost_them():
    seen = Seen()
    for name in ("order", "execution", "position"):
        seen.observe(frame(name)["topic"], frame(name))
    snap = snapshot()
    newer = dict(frame("rest_order_realtime")["result"]["list"][0], orderId="o-new")
    snap.add_orders("linear", [newer], 1)
    sent = snap.without_pushed(seen, None)
    assert sent.skipped == 3                               # fill, order and position already pushed
    assert list(sent.orders) == ["o-new"] and not sent.executions and not sent.positions
    assert sent.wallet == snap.wallet and len(snap.orders) == 2     # the fetched snapshot is unchanged

    exec_ms = int(frame("execution")["data"][0]["execTime"])      # a downstream restarted: resend from its loss
    again = snapshot().without_pushed(seen, exec_ms)
    assert again.skipped == 0 and again.executions and again.orders

    fast = Seen()                                          # execution.fast lacks fees: the full record still goes
    fast.observe("execution.fast", frame("execution_fast"))
    assert snapshot().without_pushed(fast, None).skipped == 0
