"""The control message contract (common/control.py) that the API, the publisher and ingest share."""
from __future__ import annotations

import pytest

from common import control


def test_requests_round_trip_and_refuse_what_ingest_could_not_read():
    sub = {"id": "s1", "channel": "trades", "endpoint": "linear", "category": "linear", "symbol": "BTCUSDT",
           "depth": None, "interval": None, "topic": "publicTrade.BTCUSDT"}
    msg = control.decode(control.request(control.ADD, "r1", "t1", sub))
    assert msg == {"id": "r1", "op": "add", "trace_id": "t1", "subscription": sub}
    resync = control.decode(control.request(control.RESYNC, "r2", where="publisher",
                                            topics=[{"endpoint": "linear", "topic": "orderbook.50.X", "reason": "x"}]))
    assert resync["op"] == "resync" and resync["topics"][0]["endpoint"] == "linear" and "subscription" not in resync
    with pytest.raises(control.ControlError):
        control.request(control.REMOVE, "r3")               # remove without its subscription
    with pytest.raises(control.ControlError):
        control.request("drop_everything", "r4")
    for bad in (b"not json", b"[1, 2]", b'"text"'):
        with pytest.raises(control.ControlError):
            control.decode(bad)


def test_replies_carry_the_id_and_an_error_only_when_refused():
    assert control.decode(control.reply("r1", True)) == {"id": "r1", "ok": True}
    assert control.decode(control.reply("r1", False, "no keys")) == {"id": "r1", "ok": False, "error": "no keys"}
    assert control.decode(control.reply(None, True, held=True)) == {"id": None, "ok": True, "held": True}
    assert control.error_text("x" * 900) == "x" * control.ERROR_MAX and control.error_text(None) is None


def test_the_table_checks_the_same_statuses_as_the_code():
    import re
    from pathlib import Path

    from common import substatus

    sql = (Path(__file__).resolve().parents[2] / "sql" / "0001_subscriptions.sql").read_text()
    check = re.search(r"CHECK \(status IN \(([^)]*)\)\)", sql).group(1)
    assert tuple(v.strip().strip("'") for v in check.split(",")) == substatus.STATUSES
    assert set(substatus.TRANSITIONS) == {None, *substatus.STATUSES}
    assert all(t <= set(substatus.STATUSES) for t in substatus.TRANSITIONS.values())
    assert substatus.REMOVED not in substatus.REPORTED_BY_INGEST and set(substatus.HELD) <= set(substatus.STATUSES)
