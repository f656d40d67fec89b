"""Sharing units out (pure): shares by water level, as few moves as possible, a stable hash."""
from __future__ import annotations

import collections
import random

from ingest.leases import (ALWAYS, PRIVATE_UNIT, Acquired, View, plan, preference, shard_units, unit_of,
                           water_level)

SHARDS = shard_units(16)


def settle(instances: dict[str, int], owners: dict[str, str | None], rounds: int = 20,
           private: set[str] = frozenset()) -> tuple[dict[str, str | None], int]:
    """Run every instance's plan in turn (each sees the table as the others left it) until
    nothing changes: (owners, rounds taken)."""
    for n in range(rounds):
        changed = False
        for me, cap in instances.items():
            mine = {u for u, o in owners.items() if o == me}
            view = View({i: c for i, c in instances.items() if i != me}, dict(owners))
            acquire, release = plan(me, cap, mine, view, SHARDS, me in private)
            for u in release:
                owners[u] = None
                changed = True
            for u in acquire:
                if owners.get(u) in (None, me):
                    owners[u] = me
                    changed = True
        if not changed:
            return owners, n
    raise AssertionError(f"no stable state after {rounds} rounds: {owners}")


def counts(owners: dict) -> collections.Counter:
    return collections.Counter(o for u, o in owners.items() if u != PRIVATE_UNIT and o is not None)


def test_water_level():
    assert water_level(16, [16, 16, 16]) == 6
    assert water_level(16, [16] * 4) == 4
    assert water_level(16, [2, 16, 16]) == 7      # a small instance leaves more to the others
    assert water_level(16, [3, 3]) == 3           # not enough room: everyone at capacity
    assert water_level(16, []) == 0
    assert water_level(16, [0, 16]) == 16


def test_one_instance_takes_everything_then_shares_with_newcomers_moving_few():
    owners: dict[str, str | None] = {u: None for u in SHARDS + [PRIVATE_UNIT]}
    owners, _ = settle({"a": 16}, owners, private={"a"})
    assert counts(owners) == {"a": 16} and owners[PRIVATE_UNIT] == "a"
    before = dict(owners)
    owners, _ = settle({"a": 16, "b": 16, "c": 16}, owners, private={"a", "b", "c"})
    assert sorted(counts(owners).values()) == [4, 6, 6]   # nobody above ceil(16 / 3)
    moved = sum(before[u] != owners[u] for u in SHARDS)
    assert moved == 10                            # a keeps 6: only what had to move moved
    assert owners[PRIVATE_UNIT] == "a"            # the private stream stays where it was
    before = dict(owners)
    owners, _ = settle({"a": 16, "b": 16, "c": 16, "d": 16}, owners)
    assert sorted(counts(owners).values()) == [4, 4, 4, 4]
    assert sum(before[u] != owners[u] for u in SHARDS) == 4


def test_a_dead_instance_s_shards_go_to_the_others():
    owners = {u: ["a", "b", "c"][i % 3] for i, u in enumerate(SHARDS)}
    owners[PRIVATE_UNIT] = "c"
    gone = {u: None if o == "c" else o for u, o in owners.items()}    # c's leases expired
    after, _ = settle({"a": 16, "b": 16}, gone, private={"a", "b"})
    assert counts(after) == {"a": 8, "b": 8}
    assert after[PRIVATE_UNIT] in ("a", "b")
    assert all(after[u] == owners[u] for u in SHARDS if owners[u] != "c")   # nothing else moved


def test_capacity_bounds_a_share_and_leaves_the_rest_to_others():
    owners, _ = settle({"a": 3, "b": 16}, {u: None for u in SHARDS})
    assert counts(owners) == {"a": 3, "b": 13}
    owners, _ = settle({"a": 3, "b": 5}, {u: None for u in SHARDS})
    assert counts(owners) == {"a": 3, "b": 5}     # not enough room: 8 shards stay unowned
    assert sum(o is None for o in owners.values()) == 8


def test_no_private_without_keys_and_own_units_are_taken_back():
    view = View({"b": 16}, {PRIVATE_UNIT: None, **{u: None for u in SHARDS}})
    acquire, _ = plan("a", 16, set(), view, SHARDS, want_private=False)
    assert PRIVATE_UNIT not in acquire
    # after a restart the table still names this instance: its units are taken back at once
    view = View({}, {PRIVATE_UNIT: "a", **{u: "a" for u in SHARDS}})
    acquire, release = plan("a", 16, set(), view, SHARDS, want_private=True)
    assert set(acquire) == set(SHARDS) | {PRIVATE_UNIT} and release == []
    # another live owner's units are never asked for
    view = View({"b": 16}, {PRIVATE_UNIT: "b", **{u: "b" for u in SHARDS}})
    assert plan("a", 16, set(), view, SHARDS, want_private=True) == ([], [])


def test_unit_of_is_stable_and_spreads_topics():
    assert unit_of("private", "private:order", 16) == PRIVATE_UNIT
    assert unit_of("linear", "linear:publicTrade.BTCUSDT", 16) == unit_of("linear", "linear:publicTrade.BTCUSDT", 16)
    # crc32, not Python's salted hash(): the same in every process (this value is fixed)
    assert unit_of("linear", "linear:publicTrade.BTCUSDT", 16) == "shard-%dof16" % (
        __import__("zlib").crc32(b"linear:publicTrade.BTCUSDT") % 16)
    rng = random.Random(1)
    keys = [f"{rng.choice(['spot', 'linear', 'inverse'])}:publicTrade.S{i}USDT" for i in range(1600)]
    per = collections.Counter(unit_of(k.split(":")[0], k, 16) for k in keys)
    assert len(per) == 16 and max(per.values()) < 2 * min(per.values())
    assert preference("a", "shard-1of16") != preference("b", "shard-1of16")


def test_announcement_names_old_and_new_owner_and_the_gap():
    a = Acquired("shard-3of16", 7, "gw-b", 6, 1000.0, False, 1011.5)
    assert a.announcement("gw-a") == {"unit": "shard-3of16", "old_owner": "gw-b", "old_epoch": 6,
                                      "new_owner": "gw-a", "new_epoch": 7, "reason": "expired",
                                      "gap_from": 1000.0, "gap_to": 1011.5, "gap_s": 11.5}
    assert Acquired("private", 1, None, None, None, False, 5.0).announcement("gw-a")["reason"] == "first_owner"
    assert Acquired("private", 2, "gw-a", 1, 4.0, False, 5.0).announcement("gw-a")["reason"] == "reacquired"
    assert Acquired("private", 2, "gw-b", 1, 4.0, True, 5.0).announcement("gw-a")["reason"] == "handed_over"
    assert ALWAYS.valid() and ALWAYS.extra == {}
