"""``run_in_thread``: the simulator on its own event loop thread, for sync tests."""
from __future__ import annotations

import asyncio
import threading
from contextlib import contextmanager

from .control import ControlMethods, SimControlError
from .options import SimOptions
from .server import SimServer
from .sim import ControlError


class SimHandle(ControlMethods):
    """What ``run_in_thread`` yields: URLs plus the control hooks, run on the sim's loop."""

    def __init__(self, server: SimServer, loop: asyncio.AbstractEventLoop, host: str):
        self.server, self.loop = server, loop
        self.sim = server.sim
        self.port = server.port
        self.host = host
        self.ws_public_base = f"ws://{host}:{self.port}/v5/public"
        self.ws_private_url = f"ws://{host}:{self.port}/v5/private"
        self.rest_url = f"http://{host}:{self.port}"

    def ws_public_url(self, category: str) -> str:
        return f"{self.ws_public_base}/{category}"

    def run(self, fn, *args):
        """Call ``fn(*args)`` on the simulator's loop thread and return its result."""
        async def call():
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def _call(self, op: str, payload: dict | None) -> dict:
        try:
            return self.run(self.sim.control, op, payload)
        except ControlError as exc:
            raise SimControlError(400, {"error": str(exc)}) from None


@contextmanager
def run_in_thread(host: str = "127.0.0.1", port: int = 0, rate: float = 10.0,
                  api_key: str = "sim-key", api_secret: str = "sim-secret", **opts):
    """Start a simulator on a thread; yields a SimHandle; stops it on exit.

    ``opts`` are further SimOptions fields: symbols, account_rate, seed, reject_mode,
    account_symbols.
    """
    options = SimOptions(host=host, port=port, rate=rate, api_key=api_key, api_secret=api_secret, **opts)
    loop = asyncio.new_event_loop()
    server = SimServer(options)
    ready = threading.Event()
    failure: list[BaseException] = []

    def main():
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, name="bybitsim", daemon=True)
    thread.start()
    ready.wait(10)
    if failure:
        thread.join(5)
        raise failure[0]
    try:
        yield SimHandle(server, loop, host)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
