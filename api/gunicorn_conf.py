"""gunicorn settings for the API (``python -m api`` execs gunicorn with this file).

gthread, 2 workers x 4 threads: a slow control call or query never blocks /health
or /metrics, and two processes are enough on 2 cores shared with ingest. No preload,
so ``supervisorctl signal HUP api`` loads new code. Timeouts sit inside supervisord's
stopwaitsecs=40. gunicorn's own log lines go through common.logs as JSON.
"""
import logging
import os
from pathlib import Path

from gunicorn import glogging

from common.config import load_settings
from common.logs import setup_logging

_settings = load_settings()
setup_logging("api", _settings.log_level)

chdir = str(Path(__file__).resolve().parent.parent)
bind = [_settings.api_bind]
# After a kill -9 of the master its workers live on until they notice (ppid check) and keep the
# port: with SO_REUSEPORT the master supervisord starts next binds at once instead of failing
# with "Connection in use" until they are gone (measured: 15-32 s back, fault suite).
reuse_port = True
worker_class = "gthread"
workers = 2
threads = 4
timeout = 30
graceful_timeout = 30
keepalive = 5
# Worker recycling is only a backstop against a leak: worker RSS measured flat (62 MB) over
# 160,000 requests (bench/api_bench.py). Each recycle costs ~0.45 s of CPU (imports and
# create_app), drops every kept-alive connection (the "client reconnects" on POST in the
# bench were a worker reaching 5,000 requests) and leaves its metric files behind.
max_requests = 1_000_000
max_requests_jitter = 100_000
preload_app = False
# The heartbeat (os.utime on an unlinked file, every pass of a worker's loop) on tmpfs, not on
# the disk PostgreSQL and the persister write to: on a journalling filesystem it can wait on
# the journal (gunicorn's FAQ, "Blocking OS calls"). Measured here: 1.5 us on /tmp (ext4),
# 0.9 us on /dev/shm.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
accesslog = None                 # the app logs one JSON line per request itself
loglevel = _settings.log_level.lower()
control_socket_disable = True    # supervisord is the control interface
proc_name = "ws-gateway-api"


class JsonLogger(glogging.Logger):
    """gunicorn's error log without its own handlers: lines reach the root (JSON) handler."""

    def setup(self, cfg):
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in list(log.handlers):
                log.removeHandler(handler)
            log.propagate = True
        self.error_log.setLevel(logging.getLogger().level)


logger_class = JsonLogger


def on_starting(server):
    """The master, once (not on a HUP reload): its workers inherit the lower priority."""
    from common.runtime import lower_priority

    server.log.info("priority nice=%s (ingest reads first)", lower_priority(_settings.nice_behind_ingest))


def child_exit(server, worker):
    """A worker's live gauges must not outlive it in /metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# A pool thread reads a request and writes its answer on a blocking socket with no timeout: a
# client that stops mid-request (crashed, network gone) held that thread for good, and 12 such
# connections left no thread to answer /health (measured: every call timed out). A kernel
# timeout on the listening socket, inherited by every accepted one, ends such a read or write
# after 5 s (EAGAIN: gunicorn logs "Socket error processing request" and closes the
# connection, lingering up to 2 s in its main loop). It never applies between requests:
# kept-alive connections wait on the poller.
# A client trickling a byte every few seconds defeats it; exposed beyond a trusted network the
# API belongs behind a buffering proxy, as gunicorn's documentation says.
SOCKET_IO_TIMEOUT_S = 5


def _set_io_timeouts(worker) -> None:
    """On the worker's listening sockets (its own: reuse_port). Set at fork, before the app
    loads: the socket listens from then on, and a connection takes the options of the
    listener as they are when its handshake completes."""
    import socket
    import struct

    timeval = struct.pack("ll", SOCKET_IO_TIMEOUT_S, 0)
    for listener in worker.sockets:
        sock = getattr(listener, "sock", listener)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def post_worker_init(worker):
    from api import gunicorn_patches

    gunicorn_patches.apply(worker, _settings.api_gunicorn_patches)


# A body the application refuses unread (413: past the API's 16 KB limit) is left on the socket.
# gunicorn drains at most 64 KB of it before reusing the connection and otherwise closes the
# connection, after an answer that said "keep-alive": the client's next request on it then
# fails ("server disconnected"). Such requests are answered with "Connection: close" instead,
# so clients open a new connection. A chunked body's length is unknown up front: same.
# tests/api/test_gunicorn.py holds this (a 2 MB body, then a request on the same client).
DRAINED_BODY_BYTES = 64 * 1024


def pre_request(worker, req):
    for name, value in req.headers:
        if (name == "CONTENT-LENGTH" and value.strip().isdigit() and int(value) > DRAINED_BODY_BYTES
                or name == "TRANSFER-ENCODING" and "chunked" in value.lower()):
            req.must_close = True
            break
    worker.log.debug("%s %s", req.method, req.path)


def post_fork(server, worker):
    """Workers die with their master. After a kill -9 of the master, orphaned workers would
    otherwise keep serving (and holding keep-alive connections) until they notice their new
    parent; the kernel tells them at once instead (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    _set_io_timeouts(worker)

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):   # not Linux: the ppid check in gunicorn still applies
        pass
