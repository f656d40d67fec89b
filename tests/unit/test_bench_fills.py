"""The bench's fill latency: Bybit fills pushed in a window, from their push time (the fill's
``creationTime``) to the consumer process taking them; other records and other windows left out."""
from __future__ import annotations

from bench.run_all import fill_latencies, fill_stats, fills_cell


class _Consumer:
    def __init__(self, lines):
        self.lines = lines

    def account(self):
        return self.lines


def test_only_bybit_fills_pushed_in_the_window_count():
    lines = [
        {"cls": "executions", "source": "bybit", "exchange_ts": 10_000, "at": 10.012},    # 12 ms
        {"cls": "executions", "source": "bybit", "exchange_ts": 10_500, "at": 10.530},    # 30 ms
        {"cls": "executions", "source": "reconciliation", "exchange_ts": 10_600, "at": 11.0},
        {"cls": "orders", "source": "bybit", "exchange_ts": 10_700, "at": 12.0},
        {"cls": "executions", "source": "bybit", "exchange_ts": 12_000, "at": 12.001},    # after the window
        {"cls": "executions", "source": "bybit", "exchange_ts": None, "at": 10.9},
    ]
    got = fill_latencies(_Consumer(lines), 10.0, 11.0)
    assert [(p, round(lat, 3)) for p, lat in got] == [(10.0, 12.0), (10.5, 30.0)]
    stats = fill_stats([lat for _, lat in got])
    assert stats["fills"] == 2 and stats["max"] == 30.0 and stats["p50"] == 30.0
    assert fills_cell(stats) == "; fills 30.0/30.0/30.0 ms (2)"


def test_no_fills_no_figures():
    assert fill_stats([]) == {"fills": 0, "p50": None, "p99": None, "max": None}
    assert fills_cell(fill_stats([])) == "" and fills_cell(None) == ""
