"""The gateway under supervisord (the e2e harness) with account and public load, a consumer on
every ws-gateway.* queue, and the fault driver from bench/_faults.py."""
from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from bench._consumer import ConsumerProcess
from bench._faults import Run
from bench._gw import market_requests, private_requests, subscribe
from tests.e2e.conftest import gateway_stores, start_gateway, stop_gateway  # noqa: F401 (fixture)
from tests.support import wait_for

BOOK = "orderbook.50.B0USDT"


@pytest.fixture(scope="module")
def faults_run(xprocess, gateway_stores):  # noqa: F811 (the e2e fixture, imported)
    """A Run over a module-wide gateway: 5 linear trade topics and one book at 50 frames/s each,
    the four private topics, the simulator's account trading at 10 events/s."""
    pg_url, amqp_url = gateway_stores
    gw, run_dir = start_gateway(xprocess, f"faults-{uuid.uuid4().hex[:8]}", pg_url, amqp_url,
                                SIM_RATE="0", SIM_ACCOUNT_RATE="0")
    out = Path(tempfile.mkdtemp(prefix="wsgw-tf-", dir="/tmp"))
    consumer = None
    try:
        gw.wait_ready()
        subscribe(gw, market_requests(5, books=1) + private_requests())
        consumer = ConsumerProcess(amqp_url, out)
        run = Run(gw, consumer, account_rate=10)
        run.sim_rate(rate=50, account_rate=10)
        run.snapshot_subscriptions(BOOK)
        wait_for(lambda: len(consumer.account()) > 10, 20, message="account events flowing")
        yield run
    finally:
        if consumer is not None:
            consumer.close()
        stop_gateway(xprocess, gw, run_dir)
        shutil.rmtree(out, ignore_errors=True)
