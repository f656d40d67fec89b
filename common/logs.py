"""JSON logging, one object per line on stdout (supervisord keeps one file per process).

structlog renders our own lines; stdlib loggers (pika, websockets, gunicorn) go through
the same processors via ProcessorFormatter, so every line of a log file has one shape:
``{"ts", "level", "process", "event", "trace_id"?, ...fields}``.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time

import orjson
import structlog

# Keys whose values never reach a log line, whatever a caller passes.
_SECRET_KEYS = re.compile(r"(secret|password|passwd|signature|api_key|apikey|x-api-key|authorization|sign)$", re.I)
# URLs with credentials: amqp://user:pass@host -> amqp://user:***@host
_URL_CREDS = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]+@", re.I)


def _redact(_, __, event_dict):
    for key in list(event_dict):
        if _SECRET_KEYS.search(key):
            event_dict[key] = "***"
        else:
            value = event_dict[key]
            if isinstance(value, str) and "@" in value:
                event_dict[key] = _URL_CREDS.sub(r"\1:***@", value)
    return event_dict


def _add_process(process: str):
    def processor(_, __, event_dict):
        event_dict.setdefault("process", process)
        return event_dict

    return processor


# Settings whose values are secrets: any line that would contain one has it masked,
# whatever key or message carries it (a library logging a whole frame, say).
SECRET_SETTINGS = ("BYBIT_API_KEY", "BYBIT_API_SECRET", "API_KEY", "SIM_API_KEY", "SIM_API_SECRET")


def _secret_values(env=None) -> tuple[str, ...]:
    env = os.environ if env is None else env
    # Short values would mask ordinary words; real keys are far longer.
    return tuple(sorted({v for k in SECRET_SETTINGS if len(v := env.get(k, "").strip()) >= 6},
                        key=len, reverse=True))


def _make_serializer(secrets: tuple[str, ...]):
    def serialize(obj, default=None):
        line = orjson.dumps(obj, default=str).decode()
        for secret in secrets:
            if secret in line:
                line = line.replace(secret, "***")
        return line

    return serialize


def setup_logging(process: str, level: str = "INFO", stream=None) -> None:
    """Configure structlog and the stdlib root logger once, in main().

    ``stream`` defaults to stdout; the supervisord eventlistener passes stderr
    (its stdout is the protocol channel). An uncaught exception becomes one JSON
    line too, so a log file never holds a bare traceback.
    """
    stream = stream or sys.stdout
    _serializer = _make_serializer(_secret_values())
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _add_process(process),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=_serializer)],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(serializer=_serializer)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Chatty libraries: their INFO is per-connection-step noise.
    for name in ("pika", "websockets"):
        logging.getLogger(name).setLevel(max(logging.WARNING, getattr(logging, level)))
    # Python's own warnings (DeprecationWarning ...) as JSON lines too, not bare text.
    logging.captureWarnings(True)
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(line_buffering=True)

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            return sys.__excepthook__(exc_type, exc, tb)
        logging.getLogger(process).critical("uncaught_exception", exc_info=(exc_type, exc, tb))

    sys.excepthook = excepthook
    threading.excepthook = lambda args: excepthook(args.exc_type, args.exc_value, args.exc_traceback)


def get_logger(name: str | None = None):
    return structlog.get_logger(name)


class RateLimited:
    """Log a repeated condition at most once per ``interval`` seconds, with a count.

    Used for per-frame problems (unparseable frame, hand-off full) so a flood of
    them becomes one line every few seconds instead of one per frame.
    """

    def __init__(self, log, interval: float = 5.0, clock=time.monotonic):
        self.log, self.interval, self.clock = log, interval, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: str, event: str, **fields) -> bool:
        now = self.clock()
        last = self._last.get(event)
        if last is not None and now - last < self.interval:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return False
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        getattr(self.log, level)(event, **fields)
        return True
