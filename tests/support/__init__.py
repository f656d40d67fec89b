"""Helpers the tests and the bench share: waiting on conditions and free ports (here),
throwaway PostgreSQL databases, clusters and RabbitMQ vhosts (``stores``), the whole gateway
under supervisord (``gateway``) and a consumer-side ledger of the account (``ledger``).
No pytest here: bench scripts import it too."""
from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]   # the checkout: supervisord.conf, sql/, scripts/


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the condition may not be checkable yet (service starting)
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                         + (f" (last error: {last_exc!r})" if last_exc else ""))


async def until(predicate, timeout: float = 10.0, message: str = "condition", interval: float = 0.05):
    """The asyncio form of ``wait_for``: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
