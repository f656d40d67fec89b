"""The API's three changes to gunicorn internals, behind one fence.

gunicorn has no setting for any of them, so each replaces something inside gunicorn:
``util.write_error`` (JSON errors for requests refused before the app), ``util.close_graceful``
(lingering closes in a thread of their own: api/closer.py) and gthread's
``DEFAULT_WORKER_DATA_TIMEOUT`` (how long a new connection's first bytes may take). ``apply``
installs them in a worker only on the gunicorn release they were written and tested against
(``TESTED``), and only when ``API_GUNICORN_PATCHES`` is on; otherwise gunicorn runs as
released, which is slower to shed bad clients but correct, and the worker logs why.
"""
from __future__ import annotations

TESTED = ("27.0.",)     # gunicorn releases these were checked against (tests/api/test_gunicorn.py)

# gthread gives every new connection a pool thread, which waits up to 5 s for its first bytes
# before handing the connection back to the poller (gunicorn's DEFAULT_WORKER_DATA_TIMEOUT, not
# a setting). Connections that open and stay silent (pre-connecting client pools, TCP probes, a
# port scan) therefore hold the 4 threads of a worker: 20 of them stalled a /health call for
# 14.8 s (measured on gunicorn 27.0.1). A request's first bytes follow its connect within a
# round trip, so 20 ms is plenty; a slower client waits on the poller, holding no thread.
# tests/api/test_gunicorn.py holds this (idle connections do not stall /health).
FIRST_BYTES_WAIT_S = 0.02


# Requests gunicorn refuses before the app sees them (request line over 4094 bytes, headers too
# large, malformed HTTP) get gunicorn's HTML page; clients of this API parse one error shape,
# so they get it here too: {"error": {"code", "message", "details"}}, with gunicorn's status,
# reason and message. gunicorn has no setting for this; its one writer of these pages is
# gunicorn.util.write_error(sock, status, reason, message), replaced in each worker.
# tests/api/test_gunicorn.py holds this (a 9 KB URL, 9 KB of headers, a garbage request line).
# Runs in a worker, where the app (api.errors with it) is already loaded; the master never
# imports the app, so HUP still loads new code.
def write_json_error(sock, status_int, reason, mesg):
    import orjson
    from gunicorn import util

    from api.errors import STATUS_CODES

    body = orjson.dumps({"error": {"code": STATUS_CODES.get(status_int, "http_error"),
                                   "message": f"{reason}: {mesg}" if mesg else reason, "details": None}})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin1") + body)


def patches_usable(enabled: bool) -> tuple[bool, str]:
    """(install the patches?, why not when not)."""
    import gunicorn
    from gunicorn import util
    from gunicorn.workers import gthread

    if not enabled:
        return False, "turned off (API_GUNICORN_PATCHES=off)"
    version = getattr(gunicorn, "__version__", "?")
    if not version.startswith(TESTED):
        return False, f"gunicorn {version} is not a release the patches were tested with ({', '.join(TESTED)}x)"
    missing = [name for name, ok in (("util.write_error", hasattr(util, "write_error")),
                                     ("util.close_graceful", hasattr(util, "close_graceful")),
                                     ("gthread.DEFAULT_WORKER_DATA_TIMEOUT",
                                      getattr(gthread, "DEFAULT_WORKER_DATA_TIMEOUT", None) is not None)) if not ok]
    if missing:
        return False, f"gunicorn {version} lacks {', '.join(missing)}"
    return True, ""


def apply(worker, enabled: bool) -> bool:
    """Install the patches in this worker (post_worker_init); False when gunicorn runs as released."""
    from gunicorn import util
    from gunicorn.workers import gthread

    from api.closer import LingeringCloser

    usable, why = patches_usable(enabled)
    if not usable:
        worker.log.warning("gunicorn runs without the API's patches (%s): refused requests get its HTML "
                           "pages and silent connections may hold worker threads for seconds", why)
        return False
    util.write_error = write_json_error
    # Lingering closes (RFC 9112 9.6) in a thread of their own, not in the main loop that
    # dispatches requests: see api/closer.py.
    util.close_graceful = LingeringCloser().close
    gthread.DEFAULT_WORKER_DATA_TIMEOUT = FIRST_BYTES_WAIT_S
    return True
