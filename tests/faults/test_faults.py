"""The short fault suite (``make faults`` runs every fault): under account load, kill -9 of the
publisher and of the persister, a private drop and a book gap each lose no account event —
PostgreSQL and the account queues hold the simulator's ground truth afterwards."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(240)


def check(res) -> None:
    print(f"{res.fault}: detected by {res.detected_by} in {res.detect_s} s, recovered in {res.recovered_s} s "
          f"({res.recovery_what}), market gaps {res.market_gaps}, settled in {res.settle_s} s")
    assert not res.error, res.error
    assert not res.account_missing, f"account events lost: {res.account_missing}"
    assert res.recovered_s is not None


@pytest.mark.parametrize("program", ["publisher", "persister"])
def test_kill9_under_account_load_loses_no_account_event(faults_run, program):
    res = faults_run.measure(f"kill9_{program}", faults_run.kill9(program))
    check(res)
    assert res.detected_by.startswith("system.process_crashed")


def test_private_drop_resubscribes_and_loses_no_account_event(faults_run):
    res = faults_run.measure("drop_private", faults_run.drop("private"))
    check(res)
    assert res.detected_by.startswith("system.connection_lost")


def test_book_gap_is_announced_and_resynced(faults_run):
    res = faults_run.measure("book_gap", faults_run.book("book_gap"))
    check(res)
    assert "gap" in res.detected_by
