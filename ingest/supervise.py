"""Long-lived tasks that must not end unnoticed.

A task that raises (or returns when it should run forever) is logged with its traceback,
counted (wsgw_ingest_task_failures_total and ingest's status file) and started again
after a backoff, so one bug never leaves a connection or a loop dead while the process,
its status file and /health look fine.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from common.logs import get_logger
from common.runtime import backoff_s
from ingest import metrics

log = get_logger(__name__)
STABLE_AFTER_S = 60.0     # a run this long resets the restart backoff


class TaskFailures:
    """How many supervised tasks ended unexpectedly, by kind, and the last one (for the status file)."""

    def __init__(self):
        self.by_kind: dict[str, int] = {}
        self.last: dict | None = None

    def record(self, kind: str, name: str, exc: BaseException | None) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        metrics.TASK_FAILURES.labels(kind).inc()
        error = f"{type(exc).__name__}: {exc}"[:500] if exc is not None else "returned"
        self.last = {"task": name, "kind": kind, "error": error, "at": time.time()}
        if exc is not None:
            log.error("task_failed", task=name, kind=kind, error=error, failures=self.by_kind[kind], exc_info=exc)
        else:
            log.error("task_ended", task=name, kind=kind, failures=self.by_kind[kind])

    def status(self) -> dict:
        return {"total": sum(self.by_kind.values()), "by_kind": dict(self.by_kind), "last": self.last}


async def supervise(name: str, kind: str, run: Callable[[], Awaitable[None]], failures: TaskFailures, *,
                    finished: Callable[[], bool] = lambda: False,
                    cleanup: Callable[[BaseException | None], Awaitable[None]] | None = None,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                    backoff_max_s: float = 30.0) -> None:
    """Run ``run()`` until ``finished()`` says its end was wanted; any other end is a failure:
    recorded, ``cleanup(exc)`` awaited, and ``run()`` started again after a backoff."""
    in_a_row = 0
    while True:
        started = time.monotonic()
        exc: BaseException | None = None
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            exc = e
        if finished():
            return
        in_a_row = 1 if time.monotonic() - started >= STABLE_AFTER_S else in_a_row + 1
        failures.record(kind, name, exc)
        if cleanup is not None:
            try:
                await cleanup(exc)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task_cleanup_failed", task=name, kind=kind)
        await sleep(backoff_s(in_a_row, backoff_max_s, jitter=random.random()))
        if finished():
            return
