"""The bench's overload table judges a step on the age of what was delivered both since ingest read
it and since Bybit stamped it (``ts``): a gateway that read its socket late must not pass on its
own clock. And its CPU table predicts the delivered ratio from what every program spent."""
from __future__ import annotations

from bench._consumer import merge
from bench.run_all import overload_rows


def _step(mult: int, ages: dict, ages_x: dict | None, ratio: float = 0.9) -> dict:
    step = {"mult": mult, "offered": 1000.0 * mult, "sim_per_s": 1000.0 * mult, "sent": {"orderbook": 10},
            "delivered_per_s": 900.0, "bare_around": [1000.0, 1000.0], "ratio": ratio, "ages": ages,
            "drops": {"ingest": {}, "publisher": {}}, "queued_at_end": 0, "resync_requests": 0,
            "book_resync_events": 0, "book_heals": {}, "account_missing": {}, "fills": None, "rss": {"ingest": 50.0},
            "cpu_us_per_event": 50.0,
            "cpu_us_by_process": {"ingest": 20.0, "publisher": 30.0, "simulator": 20.0, "consumer": 30.0,
                                  "rabbitmq": 60.0}}
    if ages_x is not None:
        step["ages_exchange"] = ages_x
    return step


def _over(*steps: dict) -> dict:
    bare = {"delivered_per_s": 1000.0, "ages": {c: (10.0, 20.0, 5) for c in ("orderbook", "tickers", "trades")},
            "cpu_us_per_event": {"bare": 40.0, "simulator": 10.0, "consumer": 30.0, "rabbitmq": 60.0}}
    return {"capacity": 1000.0, "bare_runs": [bare, bare], "simulator_alone": {"sim_per_s": 5000.0},
            "steps": list(steps)}


def _results(lines: list[str]) -> dict[str, str]:
    return {line.split("|")[1].split("=")[0].strip(): line.rstrip(" |").rsplit("|", 1)[1].strip()
            for line in lines if line.startswith("| ") and "x = " in line}


FRESH = {c: (100.0, 400.0, 50) for c in ("orderbook", "tickers", "trades")}


def test_a_step_fresh_on_ingests_clock_but_late_from_bybits_ts_fails():
    late = {**FRESH, "tickers": (900.0, 1300.0, 50)}
    lines = overload_rows(_over(_step(1, FRESH, FRESH), _step(2, FRESH, late), _step(4, FRESH, None)))
    assert _results(lines) == {"1x": "PASS", "2x": "FAIL", "4x": "PASS"}
    row = next(line for line in lines if line.startswith("| 2x"))
    assert "ts 900/1300" in row


def test_the_cpu_table_predicts_the_ratio_with_and_without_the_simulator():
    lines = overload_rows(_over(_step(1, FRESH, FRESH, ratio=0.77)))
    row = next(line for line in lines if line.startswith("| gateway 1x")).strip(" |").split(" | ")
    # forwarder: 40 + 10 + 30 + 60 = 140 us an event, 130 without its simulator; gateway 160 and 140
    assert row[-4:] == ["160", f"{140 / 160:.2f}", f"{130 / 140:.2f}", "0.77"]


def test_ages_since_bybits_ts_are_kept_apart_from_ages_since_ingest():
    wins = [{"hist": {}, "hist_by_class": {"orderbook": {"5.0": 2}},
             "hist_by_class_exchange": {"orderbook": {"700.0": 2}}}]
    assert merge(wins, "orderbook") == {5.0: 2}
    assert merge(wins, "orderbook", since="exchange") == {700.0: 2}
    assert merge([{"hist": {}, "hist_by_class": {}}], "orderbook", since="exchange") == {}
