"""The overload table's frames sent per class: read off the simulator's per-topic counters."""
from __future__ import annotations

from bench.run_all import sent_by_class, sent_cell


def test_frames_sent_are_counted_per_class_between_two_readings_private_pushes_left_out():
    before = {"linear:tickers.AUSDT": 5, "linear:orderbook.50.AUSDT": 100}
    after = {"linear:tickers.AUSDT": 15, "linear:orderbook.50.AUSDT": 107, "linear:orderbook.50.BUSDT": 3,
             "linear:publicTrade.AUSDT": 1000, "private:order": 40, "linear:kline.1.AUSDT": 9}
    assert sent_by_class(before, after) == {"tickers": 10, "orderbook": 10, "trades": 1000}
    assert sent_cell(sent_by_class(before, after)) == "10, 10, 1,000"
    assert sent_cell(None) == "-"
