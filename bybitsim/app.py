"""``python -m bybitsim``: the simulator as a process under supervisord."""
from __future__ import annotations

import asyncio
import os
import signal
import sys

from common.config import ConfigError, load_settings
from common.logs import get_logger, setup_logging

from .options import options_from_env
from .server import SimServer


async def run(server: SimServer) -> None:
    """Serve until the first SIGTERM/SIGINT; a second one exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop():
        if stop.is_set():
            os._exit(1)              # second signal: force
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> int:
    try:
        settings = load_settings()
        opts = options_from_env(settings)
    except ConfigError as exc:
        print(f"bybitsim: bad setting: {exc}", file=sys.stderr)
        return 2
    setup_logging("simulator", settings.log_level)
    log = get_logger("bybitsim")
    log.info("starting", options=repr(opts))
    try:
        asyncio.run(run(SimServer(opts)))
    except OSError as exc:
        log.error("cannot_start", error=str(exc))
        return 1
    log.info("exited")
    return 0
