"""LISTEN for subscription changes (the trigger of sql/0005) on a connection of its own.

A change made through any instance's API reaches the owner of the topic's shard within a
second this way; the periodic converge still runs, for a notification missed while this
connection was down (each reconnect asks for a converge too).
"""
from __future__ import annotations

import select
import threading

import psycopg2

from common.logs import RateLimited, get_logger

log = get_logger(__name__)
CHANNEL = "wsgw_subscriptions"
RETRY_S = 1.0


class Listener:
    """A daemon thread: ``on_notify(keys)`` is called on ``loop`` with the changed topics'
    ``endpoint:topic`` keys, or with None after each (re)connect."""

    def __init__(self, database_url: str, loop, on_notify):
        self.url, self.loop, self.on_notify = database_url, loop, on_notify
        self.connected = False
        self.notifications = 0
        self.reconnects = 0
        self._stop = threading.Event()
        self._warn = RateLimited(log, 10.0)
        self.thread = threading.Thread(target=self._run, name="listen", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conn = None
            try:
                conn = psycopg2.connect(self.url, connect_timeout=3, application_name="ws-gateway-ingest-listen",
                                        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f"LISTEN {CHANNEL}")
                self.connected = True
                self.reconnects += 1
                self.loop.call_soon_threadsafe(self.on_notify, None)
                while not self._stop.is_set():
                    if select.select([conn], [], [], 1.0)[0]:
                        conn.poll()
                        keys = [n.payload for n in conn.notifies]
                        conn.notifies.clear()
                        if keys:
                            self.notifications += len(keys)
                            self.loop.call_soon_threadsafe(self.on_notify, keys)
            except (psycopg2.Error, OSError, ValueError) as exc:
                self._warn("warning", "listen_failed", error=str(exc).strip()[:200], retry_in_s=RETRY_S)
            except RuntimeError:      # the event loop closed under us: the process is stopping
                return
            finally:
                self.connected = False
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg2.Error:
                        pass
            self._stop.wait(RETRY_S)

    def status(self) -> dict:
        return {"connected": self.connected, "notifications": self.notifications,
                "connects": self.reconnects}

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
