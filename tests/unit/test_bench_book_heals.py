"""The bench consumer's judge of order books (``BookHeals``): a hole in a book's ``stream_seq``
breaks the book until the next snapshot of that routing key, as a consumer keeping the book would
see it. The bench's overload table passes a step only on what this records."""
from __future__ import annotations

from bench._consumer import BookHeals
from bench.run_all import book_heals


def test_a_hole_breaks_the_book_until_the_next_snapshot():
    h = BookHeals()
    h.see("orderbook.linear.X", "e1", 1, "snapshot", 10.0)
    h.see("orderbook.linear.X", "e1", 2, "delta", 10.1)
    assert h.open(10.2) == {} and h.take() == []
    h.see("orderbook.linear.X", "e1", 5, "delta", 10.3)       # 3 and 4 never came
    h.see("orderbook.linear.X", "e1", 6, "delta", 10.4)
    assert h.open(10.5) == {"orderbook.linear.X@e1": 200.0}
    h.see("orderbook.linear.X", "e1", 7, "snapshot", 10.9, made=10.75)   # made by ingest 150 ms before
    [(seen_ms, quiet_ms, deltas, key, _at, snapshot_ms)] = h.take()
    assert (seen_ms, quiet_ms, deltas, key, snapshot_ms) == (600.0, 800.0, 2, "orderbook.linear.X", 150.0)
    assert h.open(11.0) == {}
    h.see("orderbook.linear.X", "e1", 8, "delta", 11.0)      # in sequence after the snapshot: whole
    assert h.take() == [] and h.open(11.1) == {}


def test_a_snapshot_that_shows_the_hole_heals_it_at_once():
    h = BookHeals()
    h.see("k", "e1", 1, "snapshot", 1.0)
    h.see("k", "e1", 9, "snapshot", 1.3)
    assert [r[:3] for r in h.take()] == [[0.0, 300.0, 0]]


def test_books_are_judged_per_key_and_epoch():
    h = BookHeals()
    h.see("a", "e1", 1, "snapshot", 1.0)
    h.see("b", "e1", 1, "snapshot", 1.0)
    h.see("a", "e1", 3, "delta", 1.1)
    h.see("b", "e1", 2, "delta", 1.1)
    assert set(h.open(1.2)) == {"a@e1"}
    h.see("b", "e2", 1, "delta", 1.3)             # a restarted publisher: a delta first is a hole
    assert set(h.open(1.4)) == {"a@e1", "b@e2"}
    h.see("b", "e2", 2, "snapshot", 1.5)
    assert set(h.open(1.6)) == {"a@e1"}
    h.see("a", "e1", 2, "delta", 1.7)             # a late duplicate does not heal or break anything
    assert set(h.open(1.8)) == {"a@e1"}


def test_other_publishers_on_the_same_keys_leave_the_gateways_books_alone():
    h = BookHeals()
    h.see("a", "gw", 1, "snapshot", 1.0)
    h.see("a", "gw", 2, "delta", 1.1)
    for n in range(1, 50):                        # the bench's forwarder: its own numbers, no type
        h.see("a", None, n * 3, None, 2.0 + n / 100)
    h.see("a", "gw", 3, "delta", 9.0)             # the gateway again, in sequence: nothing broken
    assert h.take() == [] and h.open(9.1) == {}


def test_the_step_summary_counts_every_heal_and_keeps_the_last_open_books():
    wins = [{"book_heals": [[0.0, 300.0, 0, "a", 1.0, 90.0], [600.0, 800.0, 2, "b", 1.5, 20.0]],
             "books_open": {"a": 50.0}},
            {"book_heals": [[100.0, 900.0, 1, "a", 2.0, 40.0]], "books_open": {"c": 1500.0}}]
    out = book_heals(wins)
    assert out["holes"] == 3 and out["deltas"] == 3
    assert out["seen"] == (100.0, 600.0, 600.0) and out["quiet"] == (800.0, 900.0, 900.0)
    assert out["snapshot_age"] == (40.0, 90.0, 90.0)
    assert out["open"] == {"c": 1500.0}
    assert book_heals([]) == {"holes": 0, "seen": (None, None, None), "quiet": (None, None, None),
                              "snapshot_age": (None, None, None), "deltas": 0, "open": {}}
