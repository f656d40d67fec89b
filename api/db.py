"""PostgreSQL access for the API: one ThreadedConnectionPool per process (created
lazily, so gunicorn workers each build their own after fork), one connection per
request on ``g``, given back in teardown."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from flask import current_app, g

from .store import PreparingConnection

_lock = threading.Lock()
_pools: dict[tuple[int, str], psycopg2.pool.ThreadedConnectionPool] = {}
# gthread: 4 threads per worker; one spare for /status checks. psycopg2's pool closes a
# returned connection once it holds ``minconn`` idle ones, so minconn is the number kept
# open (opened when the pool is first used, i.e. on a worker's first request).
MIN_CONNECTIONS = 4
MAX_CONNECTIONS = 5
CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000


def _pool(url: str) -> psycopg2.pool.ThreadedConnectionPool:
    key = (os.getpid(), url)
    pool = _pools.get(key)
    if pool is None:
        with _lock:
            pool = _pools.get(key)
            if pool is None:
                pool = psycopg2.pool.ThreadedConnectionPool(
                    MIN_CONNECTIONS, MAX_CONNECTIONS, url, connect_timeout=CONNECT_TIMEOUT_S,
                    application_name="ws-gateway-api", connection_factory=PreparingConnection,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}")
                _pools[key] = pool
    return pool


def get_db():
    """The request's connection, in autocommit: a read is one round trip (no BEGIN, no
    ROLLBACK). Writes that need several statements use ``transaction()``."""
    if "db" not in g:
        pool = _pool(current_app.config["DATABASE_URL"])
        conn = pool.getconn()
        if conn.closed:
            pool.putconn(conn, close=True)
            conn = pool.getconn()
        if not conn.autocommit:
            conn.autocommit = True
        g.db = conn
        g.db_pool = pool
    return g.db


@contextmanager
def transaction():
    """One transaction on the request's connection: committed on success, rolled back
    when the block raises (an ApiError included)."""
    conn = get_db()
    conn.autocommit = False
    try:
        yield conn
        conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        if not conn.closed:
            conn.autocommit = True


def close_db(_exc=None) -> None:
    conn = g.pop("db", None)
    pool = g.pop("db_pool", None)
    if conn is None:
        return
    broken = bool(conn.closed)
    if not broken and conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        try:
            conn.rollback()   # nothing left open between requests
            conn.autocommit = True
        except psycopg2.Error:
            broken = True
    pool.putconn(conn, close=broken)


def close_pools() -> None:
    """Close this process's pools (tests, shutdown)."""
    with _lock:
        for key in [k for k in _pools if k[0] == os.getpid()]:
            _pools.pop(key).closeall()


def init_app(app) -> None:
    app.teardown_appcontext(close_db)
