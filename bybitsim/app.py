"""``python -m bybitsim``: the simulator as a process under supervisord."""
from __future__ import annotations

import asyncio
import sys

from common.config import ConfigError, load_settings
from common.logs import get_logger, setup_logging
from common.runtime import StopSignals

from .options import options_from_env
from .server import SimServer


async def run(server: SimServer) -> None:
    """Serve until the first SIGTERM/SIGINT; a second one exits at once."""
    stop = asyncio.Event()
    StopSignals(lambda _sig: stop.set()).install(asyncio.get_running_loop())
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
