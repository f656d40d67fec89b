"""A long-lived ingest task that ends unexpectedly is logged with its traceback, counted and
started again: a connection whose task raised reconnects and its frames flow again."""
from __future__ import annotations

import asyncio
import time

import pytest
import zmq
from structlog.testing import capture_logs

from common import addresses
from common.config import load_settings
from common.topics import build_topic
from ingest import metrics
from ingest.handoff import Handoff
from ingest.manager import Manager
from ingest.supervise import TaskFailures, supervise
from tests.ingest.conftest import API_KEY, API_SECRET
from tests.ingest.harness import Capture
from tests.support import until

pytestmark = pytest.mark.timeout(60)


def test_a_task_that_raises_or_returns_is_counted_and_started_again():
    failures, cleaned, runs = TaskFailures(), [], []

    async def job():
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("boom")
        if len(runs) == 2:
            return                   # a loop meant to run for good that returns is a failure too
        await asyncio.Event().wait()

    async def cleanup(exc):
        cleaned.append(exc)

    async def main():
        before = metrics.TASK_FAILURES.labels("sync")._value.get()
        with capture_logs() as logs:
            task = asyncio.create_task(supervise("sync", "sync", job, failures, cleanup=cleanup, backoff_max_s=0.2))
            await until(lambda: len(runs) == 3, 10, "the third run")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert failures.status()["by_kind"] == {"sync": 2}
        assert failures.last["error"] == "returned"
        assert metrics.TASK_FAILURES.labels("sync")._value.get() == before + 2
        assert [type(e).__name__ if e else None for e in cleaned] == ["RuntimeError", None]
        failed = [e for e in logs if e["event"] == "task_failed"]
        assert len(failed) == 1 and isinstance(failed[0]["exc_info"], RuntimeError)
        assert failed[0]["exc_info"].__traceback__ is not None
        assert [e["event"] for e in logs if e["event"].startswith("task_")] == ["task_failed", "task_ended"]

    asyncio.run(main())


def test_a_wanted_end_is_not_a_failure():
    failures = TaskFailures()
    done = []

    async def job():
        done.append(1)

    asyncio.run(supervise("conn-x", "connection", job, failures, finished=lambda: bool(done)))
    assert failures.status() == {"total": 0, "by_kind": {}, "last": None}


class BrokenReconciler:
    """Stands where ingest's Reconciler sits (Manager.reconciler, set by the app). Its request()
    has a bug the first time it is called, which is from the connection's own task: right
    after the private socket's topics are subscribed."""

    def __init__(self):
        self.calls = 0

    def request(self, reason: str, lost_since_ms: int | None = None) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("deliberately broken reconciler hook")

    def take(self, *args) -> bool:
        return False

    def status(self) -> dict:
        return {"configured": True}


def test_a_connection_whose_task_raised_comes_back_and_frames_flow(sim, short_tmp):
    settings = load_settings({"BYBIT_ENV": "sim", "SIM_PORT": str(sim.port), "BYBIT_API_KEY": API_KEY,
                              "BYBIT_API_SECRET": API_SECRET, "GW_RUN_DIR": str(short_tmp),
                              "GW_PING_INTERVAL_S": "0.5", "GW_DEAD_AFTER_S": "2", "GW_BACKOFF_MAX_S": "2"})
    ctx = zmq.Context()
    publisher = Capture(ctx, addresses.publisher_frames(short_tmp), addresses.publisher_priority(short_tmp))
    persister = Capture(ctx, addresses.persister_frames(short_tmp))
    sim.rate(account_rate=10)

    def private_conns():
        return [c for c in sim.state()["connections"] if c["endpoint"] == "private"]

    async def main():
        handoff = Handoff(short_tmp, 10_000, ctx=ctx)
        mgr = Manager(settings, handoff)
        mgr.reconciler = BrokenReconciler()
        before = metrics.TASK_FAILURES.labels("connection")._value.get()
        try:
            with capture_logs() as logs:
                assert mgr.add(build_topic("wallet")) is None
                await until(lambda: mgr.task_failures.status()["total"] == 1, 15, "the connection task's failure")
                failed_at_ns = time.time_ns()
                await until(lambda: mgr.reconciler.calls >= 2, 15, "the restarted connection subscribed again")
                # frames flow again, from the restarted connection, to both downstreams
                await until(lambda: any(e.recv_ns > failed_at_ns for e in publisher.frames("wallet", "private"))
                            and any(e.recv_ns > failed_at_ns for e in persister.frames("wallet", "private")),
                            15, "wallet pushes after the restart")
                # the socket the dead task left open was closed, not left reading beside the new one
                await until(lambda: len(private_conns()) == 1, 10, "one private socket at the simulator")
                status = mgr.status()
        finally:
            await mgr.close()
            handoff.close()
        assert status["task_failures"]["by_kind"] == {"connection": 1}
        assert status["task_failures"]["last"]["error"] == "RuntimeError: deliberately broken reconciler hook"
        assert metrics.TASK_FAILURES.labels("connection")._value.get() == before + 1
        [conn] = status["connections"]
        assert conn["state"] == "ready" and conn["reconnects"] == 1
        failed = [e for e in logs if e["event"] == "task_failed"]
        assert len(failed) == 1 and failed[0]["task"] == "conn-private-1"
        assert failed[0]["exc_info"].__traceback__ is not None
        assert [e.json()["reason"] for e in publisher.of_kind("system", "connection_lost")] == \
            ["internal error: RuntimeError: deliberately broken reconciler hook"]
        assert publisher.of_kind("system", "connection_restored")

    try:
        asyncio.run(main())
    finally:
        sim.rate(account_rate=2)
        publisher.close()
        persister.close()
        ctx.term()

