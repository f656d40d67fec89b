"""Pure parts of the simulator: topic checks, subscribe planning, settings parsing."""
from __future__ import annotations

import pytest

from bybitsim import protocol as p
from bybitsim.options import SimOptions, options_from_env
from common.config import ConfigError, load_settings


def test_public_topic_checks_follow_the_tables():
    none = p.Symbols("")
    ok = ["publicTrade.BTCUSDT", "orderbook.1000.BTCUSDT", "tickers.BTCUSDT", "kline.W.BTCUSDT",
          "allLiquidation.BTCUSDT"]
    assert all(p.public_topic_error("linear", t, none) is None for t in ok)
    bad = ["orderbook.500.BTCUSDT", "orderbook.050.BTCUSDT", "orderbook.50", "kline.2.BTCUSDT",
           "publicTrade.BTCUSDT.X", "tickers.btcusdt", "liquidation.BTCUSDT", "", 42]
    assert all(p.public_topic_error("linear", t, none) == p.handler_not_found(t) for t in bad)
    assert p.public_topic_error("option", "orderbook.100.BTC-31JUL26-120000-C", none) is None
    assert p.public_topic_error("option", "orderbook.50.BTC-31JUL26-120000-C", none) is not None
    assert p.public_topic_error("option", "publicTrade.BTC-31JUL26-120000-C", none) is not None


def test_symbol_list_per_category():
    listed = p.Symbols("BTCUSDT, inverse:BTCUSD, option:ETH-31JUL26-4000-P")
    assert listed.allows("spot", "BTCUSDT") and listed.allows("inverse", "BTCUSD")
    assert not listed.allows("linear", "BTCUSD")
    assert listed.allows("option", "ETH", base_coin=True) and not listed.allows("option", "BTC", base_coin=True)
    with pytest.raises(ValueError):
        p.Symbols("moon:BTCUSDT")
    with pytest.raises(ValueError):
        p.Symbols("btcusdt")


def test_plan_subscribe_modes():
    def err(t):
        return None if t.startswith("ok") else f"bad {t}"
    whole = p.plan_subscribe("linear", ["ok1", "bad1", "ok2", "bad2"], {}, err, "whole")
    assert whole == p.SubscribePlan((), ("ok1", "bad1", "ok2", "bad2"), "bad bad1")
    partial = p.plan_subscribe("linear", ["ok1", "bad1", "ok2", "bad2"], {}, err, "partial")
    assert partial == p.SubscribePlan(("ok1", "ok2"), ("bad1", "bad2"), "bad bad1")
    dup = p.plan_subscribe("linear", ["ok1", "ok1"], {}, err, "partial")
    assert dup.accepted == ("ok1",) and dup.error == "error:already subscribed,topic:ok1"
    assert p.plan_subscribe("spot", ["ok"] * 11, {}, err, "partial").error == "args size >10"
    assert p.plan_subscribe("linear", "ok1", {}, err, "whole").error == "error:args invalid"


@pytest.mark.parametrize("value,seconds", [(None, 600.0), ("30s", 30.0), ("600s", 600.0), ("1m", 60.0),
                                           ("10m", 600.0)])
def test_max_active_time_accepts_bybits_range(value, seconds):
    assert p.parse_max_active_time(value) == seconds


@pytest.mark.parametrize("value", ["29s", "601s", "11m", "0m", "1h", "", "30"])
def test_max_active_time_refuses_the_rest(value):
    with pytest.raises(ValueError):
        p.parse_max_active_time(value)


def test_auth_checks_key_expiry_and_signature():
    sig = p.sign("s", 2000)
    assert p.auth_ok(["k", 2000, sig], "k", "s", now_ms=1000)
    assert p.auth_ok(["k", "2000", sig], "k", "s", now_ms=1000)
    assert not p.auth_ok(["k", 2000, sig], "k", "s", now_ms=2000)        # expired
    assert not p.auth_ok(["x", 2000, sig], "k", "s", now_ms=1000)
    assert not p.auth_ok(["k", 2000, sig.upper()], "k", "s", now_ms=1000)
    assert not p.auth_ok(["k", True, sig], "k", "s", now_ms=0)
    assert not p.auth_ok(["k", 2000], "k", "s", now_ms=0)


def test_options_from_env_are_strict():
    settings = load_settings({"SIM_PORT": "9000", "SIM_RATE": "2.5"})
    opts = options_from_env(settings, {"SIM_API_KEY": "a", "SIM_API_SECRET": "s3cr3t", "SIM_ACCOUNT_RATE": "0.5"})
    assert (opts.port, opts.rate, opts.api_key, opts.account_rate) == (9000, 2.5, "a", 0.5)
    assert "s3cr3t" not in repr(opts) and "'a'" not in repr(opts)
    for env in ({"SIM_ACCOUNT_RATE": "-1"}, {"SIM_SEED": "x"}, {"SIM_REJECT_MODE": "half"},
                {"SIM_SYMBOLS": "btc"}):
        with pytest.raises(ConfigError):
            options_from_env(settings, env)
    with pytest.raises(ConfigError):
        SimOptions(rate=-1)
