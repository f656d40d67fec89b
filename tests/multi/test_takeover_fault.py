"""``make faults``' instance_takeover case (bench/_faults.py) run once under pytest: a second
instance owning the private stream and half the shards is killed (every process, kill -9); the
first takes everything over within 15 s, says so, and the account loses nothing (PostgreSQL, the
queues and the consumer's ledger against the simulator's truth)."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import gateway_stores  # noqa: F401 (fixture)
from tests.faults.conftest import faults_run  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]


def test_instance_takeover_fault_recovers_in_time_and_loses_no_account_event(faults_run):  # noqa: F811
    from bench._results import table

    res = faults_run.measure("instance_takeover", faults_run.takeover())
    print("\n".join(table([res])))
    assert res.ok, res
    assert "system.owner_changed (private: faults-b ->" in res.detected_by and "expired" in res.detected_by
