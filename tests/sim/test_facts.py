"""The simulator is an oracle of its own: it takes no protocol fact from the gateway's code.

If it decided what Bybit accepts with the gateway's tables, a mapping bug in the gateway
would be mirrored by the simulator and no test could see it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bybitsim import facts
from bybitsim import protocol as p

ROOT = Path(__file__).resolve().parents[2]
SIM_DIR = ROOT / "bybitsim"
GATEWAY_PACKAGES = {"common", "ingest", "publisher", "persister", "api"}
# Logging and settings plumbing only: neither decides what Bybit accepts.
ALLOWED = {"common.logs", "common.config", "common.runtime"}   # process plumbing, no protocol facts


def gateway_imports(path: Path) -> list[str]:
    """``file:line module`` for every gateway module ``path`` imports outside ALLOWED."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from common import topics" imports common.topics
            names = ([f"{node.module}.{alias.name}" for alias in node.names]
                     if node.module in GATEWAY_PACKAGES else [node.module])
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic:
                arg = node.args[0] if node.args else None
                names = [arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                         else "<dynamic import>"]
        for name in names:
            top = name.split(".")[0]
            if name == "<dynamic import>" or (top in GATEWAY_PACKAGES and not _allowed(name)):
                found.append(f"{path.name}:{node.lineno} {name}")
    return found


def _allowed(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ALLOWED)


def test_no_simulator_module_imports_protocol_code_from_the_gateway():
    files = sorted(SIM_DIR.glob("*.py"))
    assert len(files) > 10, files
    found = [hit for f in files for hit in gateway_imports(f)]
    assert found == [], "bybitsim must decide protocol facts itself: " + ", ".join(found)


def test_the_import_check_sees_every_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import common.topics\nfrom common import classify\nfrom ingest.plan import batches\n"
                   "import importlib\nimportlib.import_module('api.errors')\n"
                   "from common.logs import get_logger\nfrom common import config\nimport json\n")
    assert gateway_imports(src) == ["m.py:1 common.topics", "m.py:2 common.classify",
                                    "m.py:3 ingest.plan", "m.py:5 api.errors"]


def test_importing_the_simulator_loads_no_gateway_protocol_module():
    code = ("import sys, pkgutil, importlib, bybitsim\n"
            "for m in pkgutil.iter_modules(bybitsim.__path__):\n"
            "    if m.name != '__main__':\n"          # __main__ would start a simulator
            "        importlib.import_module('bybitsim.' + m.name)\n"
            "print(' '.join(sorted(n for n in sys.modules if n.split('.')[0] in "
            f"{sorted(GATEWAY_PACKAGES)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert loaded <= ALLOWED | {"common"}, sorted(loaded - ALLOWED - {"common"})


# What Bybit accepts, as literals taken from its documentation, not from any code.
OPT = "BTC-31JUL26-120000-C"
DEC = "XRP-30OCT26-0.4-P-USDT"
INTERVALS = ["1", "3", "5", "15", "30", "60", "120", "240", "360", "720", "D", "W", "M"]
ACCEPTED = {
    "spot": ["publicTrade.BTCUSDT", "tickers.BTCUSDT", "orderbook.1.BTCUSDT", "orderbook.50.BTCUSDT",
             "orderbook.200.BTCUSDT", "orderbook.1000.BTCUSDT", "orderbook.rpi.BTCUSDT", "priceLimit.BTCUSDT",
             *[f"kline.{i}.BTCUSDT" for i in INTERVALS]],
    "linear": ["publicTrade.BTCUSDT", "tickers.BTCUSDT", "orderbook.1.BTCUSDT", "orderbook.50.BTCUSDT",
               "orderbook.200.BTCUSDT", "orderbook.1000.BTCUSDT", "orderbook.rpi.BTCUSDT",
               "priceLimit.BTCUSDT", "allLiquidation.BTCUSDT", "insurance.USDT", "insurance.USDC",
               "adlAlert.USDT", "adlAlert.USDC", "tickers.BTCUSDT-21FEB25", "tickers.BTCPERP",
               "tickers.BTC-24MAR23", "tickers.1000PEPEUSDT", *[f"kline.{i}.BTCUSDT" for i in INTERVALS]],
    "inverse": ["publicTrade.BTCUSD", "tickers.BTCUSD", "tickers.BTCUSDH23", "orderbook.1.BTCUSD",
                "orderbook.50.BTCUSD", "orderbook.200.BTCUSD", "orderbook.1000.BTCUSD", "orderbook.rpi.BTCUSD",
                "priceLimit.BTCUSD", "allLiquidation.BTCUSD", "insurance.inverse", "adlAlert.inverse",
                *[f"kline.{i}.BTCUSD" for i in INTERVALS]],
    "option": ["publicTrade.BTC", "publicTrade.XRP", f"tickers.{OPT}", f"orderbook.25.{OPT}",
               f"orderbook.100.{OPT}", "tickers.BTC-13FEB25-89000-P-USDT", "tickers.ETH-28FEB25-2800-C",
               f"tickers.{DEC}", f"orderbook.25.{DEC}", f"orderbook.100.{DEC}"],
}
REFUSED = {
    "spot": ["orderbook.25.BTCUSDT", "orderbook.100.BTCUSDT", "orderbook.500.BTCUSDT", "allLiquidation.BTCUSDT",
             "insurance.USDT", "adlAlert.USDT", "liquidation.BTCUSDT", "kline.2.BTCUSDT", "kline.1m.BTCUSDT",
             f"tickers.{OPT}", "tickers_lt.BTC3LUSDT", "order", "system.status"],
    "linear": ["orderbook.500.BTCUSDT", "orderbook.25.BTCUSDT", "orderbook.100.BTCUSDT", "orderbook.050.BTCUSDT",
               "orderbook.50", "orderbook.linear.BTCUSDT", "orderbook.rpi.50.BTCUSDT", "insurance.inverse",
               "adlAlert.inverse", "insurance.BTC", "liquidation.BTCUSDT", "tickers.btcusdt", "tickers.BTCUSDT.X",
               "publicTrade.BTC.USDT", "kline.7.BTCUSDT", "kline.240", "tickers.", "tickers", f"tickers.{OPT}",
               "Tickers.BTCUSDT", "order", "wallet", "", 42, None],
    "inverse": ["orderbook.500.BTCUSD", "insurance.USDT", "adlAlert.USDC", "kline.4.BTCUSD"],
    "option": [f"orderbook.1.{OPT}", f"orderbook.50.{OPT}", f"orderbook.200.{OPT}", f"orderbook.1000.{OPT}",
               f"orderbook.rpi.{OPT}", f"kline.1.{OPT}", f"allLiquidation.{OPT}", f"priceLimit.{OPT}",
               f"publicTrade.{OPT}", "tickers.BTCUSDT", "orderbook.25.BTCUSDT", "insurance.USDT",
               "publicTrade.btc", "tickers.XRP-30OCT26-.4-P-USDT", "tickers.XRP-30OCT26-0.4.1-P-USDT",
               "tickers.XRP-30OCT26-0,4-P-USDT"],
}
PRIVATE_ACCEPTED = [
    "order", "order.spot", "order.linear", "order.inverse", "order.option",
    "execution", "execution.spot", "execution.linear", "execution.inverse", "execution.option",
    "execution.fast", "execution.fast.spot", "execution.fast.linear", "execution.fast.inverse",
    "execution.fast.option", "position", "position.linear", "position.inverse", "position.option",
    "wallet", "greeks", "dcp.future", "dcp.spot", "dcp.option", "strategy", "spread.order", "spread.execution",
]
PRIVATE_REFUSED = ["position.spot", "wallet.linear", "greeks.option", "order.spread", "execution.fast.fast",
                   "Order", "orders", "publicTrade.BTCUSDT", "tickers.BTCUSDT", "dcp", "dcp.linear", "", 7]


def test_depths_intervals_and_limits_are_bybits():
    assert facts.DEPTHS == {"spot": (1, 50, 200, 1000), "linear": (1, 50, 200, 1000),
                            "inverse": (1, 50, 200, 1000), "option": (25, 100)}
    assert list(facts.KLINE_INTERVALS) == INTERVALS
    assert facts.MAX_ARGS_PER_REQUEST == {"spot": 10}
    assert facts.MAX_TOPICS_PER_CONNECTION == {"option": 2000}
    assert facts.MAX_TOPIC_CHARS_PER_CONNECTION == 21_000
    assert facts.PRIVATE_TOPICS == frozenset(PRIVATE_ACCEPTED)


@pytest.mark.parametrize("category", ["spot", "linear", "inverse", "option"])
def test_each_socket_accepts_bybits_topics_and_refuses_the_rest(category):
    none = p.Symbols("")
    wrong = {t: p.public_topic_error(category, t, none) for t in ACCEPTED[category]}
    assert {t: e for t, e in wrong.items() if e is not None} == {}
    for topic in REFUSED[category]:
        assert p.public_topic_error(category, topic, none) == f"error:handler not found,topic:{topic}", topic


def test_private_topics_are_bybits():
    for topic in PRIVATE_ACCEPTED:
        assert p.private_topic_error(topic, authenticated=True) is None, topic
        assert p.private_topic_error(topic, authenticated=False) == f"error:topic:{topic} needs auth first"
    for topic in PRIVATE_REFUSED:
        assert p.private_topic_error(topic, authenticated=True) == f"error:handler not found,topic:{topic}"
    for topic in PRIVATE_ACCEPTED:
        assert p.public_topic_error("linear", topic, p.Symbols("")) is not None, topic


def _plan(endpoint, args, existing=()):
    def err(t):
        if endpoint == "private":
            return p.private_topic_error(t, True)
        return p.public_topic_error(endpoint, t, p.Symbols(""))
    return p.plan_subscribe(endpoint, list(args), {t: None for t in existing}, err, "whole")


def test_request_and_connection_limits():
    spot = [f"publicTrade.C{i}USDT" for i in range(11)]
    assert _plan("spot", spot).error == "args size >10"
    assert _plan("spot", spot[:10]).error is None
    assert _plan("linear", [f"publicTrade.C{i}USDT" for i in range(200)]).error is None   # no limit there
    # Option: at most 2,000 topics, and the 21,000 characters below apply there too (so 2,000
    # topics of more than 10 characters can never all fit).
    options = [f"tickers.BTC-31JUL26-{100000 + 100 * i}-C" for i in range(2001)]
    assert _plan("option", options[:750]).error is None                      # 750 x 28 = 21,000
    assert _plan("option", options[750:751], existing=options[:750]).accepted == ()
    assert _plan("option", options[2000:], existing=options[:2000]).error == "error:topics exceed 2000"
    # 21,000 characters of topic names per public connection, counting what it holds.
    held = [f"tickers.S{i:07d}USDT" for i in range(1049)]              # 20 characters each
    assert sum(map(len, held)) == 20_980
    assert _plan("linear", ["tickers.S1234567USDT"], existing=held).error is None     # 21,000
    over = _plan("linear", ["tickers.S12345678USDT"], existing=held)                # 21,001
    assert over.accepted == () and over.error is not None
    assert _plan("spot", ["tickers.S12345678USDT"], existing=held).accepted == ()
    assert _plan("private", ["order", "wallet"]).error is None


@pytest.mark.parametrize("args,first", [
    (["order", "order.linear"], ("order", "order.linear")),
    (["execution.option", "position", "execution"], ("execution", "execution.option")),
    (["execution.fast.spot", "execution.fast"], ("execution.fast", "execution.fast.spot")),
    (["position.inverse", "position"], ("position", "position.inverse")),
])
def test_all_in_one_and_its_categorised_variant_cannot_share_a_request(args, first):
    plan = _plan("private", args)
    assert plan.accepted == () and plan.error.endswith(f"{first[0]} and {first[1]}")
    assert all(_plan("private", [t]).error is None for t in args)


@pytest.mark.parametrize("args", [["order", "execution.linear"], ["execution", "execution.fast.linear"],
                                  ["order.linear", "position.linear", "wallet"], ["execution.fast", "execution.spot"]])
def test_different_topics_mix_freely(args):
    assert _plan("private", args).error is None


def test_symbol_list_takes_decimal_strikes_and_checks_shapes():
    listed = p.Symbols(f"option:{DEC}, BTCUSDT")
    assert listed.allows("option", DEC) and listed.allows("option", "XRP", base_coin=True)
    assert p.public_topic_error("option", f"tickers.{DEC}", listed) is None
    assert p.public_topic_error("option", "tickers.XRP-30OCT26-0.5-P-USDT", listed) is not None
    for bad in ("option:BTCUSDT", f"linear:{DEC}", "btcusdt", "BTC USDT", "BTCUSDT.X"):
        with pytest.raises(ValueError):
            p.Symbols(bad)
