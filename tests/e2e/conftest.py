"""Fixture starting the whole gateway (supervisord: four programs + simulator) with pytest-xprocess."""
from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from xprocess import ProcessStarter

from tests.support.gateway import ROOT, Gateway, gateway_env
from tests.support.stores import AMQP_BASE, throwaway_database, throwaway_vhost


def start_gateway(xprocess, name: str, pg_url: str, amqp_url: str, **overrides):
    run_dir = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    env = gateway_env(run_dir, pg_url, amqp_url, **overrides)

    class Starter(ProcessStarter):
        args = [str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(ROOT / "supervisord.conf")]
        pattern = "supervisord started with pid"
        timeout = 30
        terminate_on_interrupt = True

    Starter.env = env
    xprocess.ensure(name, Starter)
    gw = Gateway(env, pg_url, amqp_url)
    gw.xprocess_name = name
    return gw, run_dir


def stop_gateway(xprocess, gw: Gateway, run_dir: Path) -> None:
    try:
        gw.ctl("stop", "all")
    finally:
        info = xprocess.getinfo(gw.xprocess_name)
        info.terminate(timeout=20)
        gw.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway_stores():
    """A database and a vhost of the module's own, so no other test's rows reach its ingest."""
    with throwaway_database() as pg_url, throwaway_vhost() as vhost:
        yield pg_url, f"{AMQP_BASE}/{vhost}"


@pytest.fixture(scope="module")
def gateway(xprocess, gateway_stores):
    """One gateway for a test module: every program RUNNING, the API answering."""
    pg_url, amqp_url = gateway_stores
    # a unique name: concurrent pytest runs share .pytest_cache, and xprocess reuses a live process by name
    gw, run_dir = start_gateway(xprocess, f"gateway-{uuid.uuid4().hex[:8]}", pg_url, amqp_url)
    try:
        gw.wait_ready()
        yield gw
    finally:
        stop_gateway(xprocess, gw, run_dir)
