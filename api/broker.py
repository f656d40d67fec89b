"""RabbitMQ reachability and queue depths for /api/v1/status: passive declares on a
short-lived connection, cached per process for about two seconds so a busy status
page never hammers the broker."""
from __future__ import annotations

import threading
import time

import pika
import pika.exceptions

from common.classify import EVENT_CLASSES, queue_name

CACHE_S = 2.0
_lock = threading.Lock()
_cache: dict[str, tuple[float, dict]] = {}


def probe(url: str) -> dict:
    """{"reachable", "error", "queues": {name: messages or None}} (cached ~2 s)."""
    now = time.monotonic()
    hit = _cache.get(url)
    if hit and now - hit[0] < CACHE_S:
        return hit[1]
    with _lock:
        hit = _cache.get(url)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        result = _probe(url)
        _cache[url] = (time.monotonic(), result)
        return result


def _probe(url: str) -> dict:
    params = pika.URLParameters(url)
    params.connection_attempts, params.retry_delay = 1, 0
    params.socket_timeout, params.stack_timeout, params.blocked_connection_timeout = 1.0, 2.0, 2.0
    try:
        conn = pika.BlockingConnection(params)
    except Exception as exc:   # pika raises many AMQP/socket error types; all mean "not reachable"
        return {"reachable": False, "error": type(exc).__name__, "queues": {}}
    queues: dict[str, int | None] = {}
    try:
        channel = conn.channel()
        for cls in EVENT_CLASSES:
            name = queue_name(cls)
            try:
                queues[name] = channel.queue_declare(name, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:   # 404: not declared yet
                queues[name] = None
                channel = conn.channel()
    except pika.exceptions.AMQPError as exc:
        return {"reachable": False, "error": type(exc).__name__, "queues": queues}
    finally:
        try:
            conn.close()
        except pika.exceptions.AMQPError:
            pass
    return {"reachable": True, "error": None, "queues": queues}


def clear_cache() -> None:
    with _lock:
        _cache.clear()
