"""Settings, read once at process start from the environment (and `.env`).

Every setting is parsed strictly: a malformed value stops the process with a
message naming the setting. Secrets are kept out of ``repr`` so a logged
settings object never shows them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

BYBIT_ENVS = ("mainnet", "testnet", "demo", "sim")

# Public data for demo accounts comes from the mainnet public hosts (PROTOCOL.md 1.4).
_WS_PUBLIC = {
    "mainnet": "wss://stream.bybit.com/v5/public",
    "testnet": "wss://stream-testnet.bybit.com/v5/public",
    "demo": "wss://stream.bybit.com/v5/public",
}
_WS_PRIVATE = {
    "mainnet": "wss://stream.bybit.com/v5/private",
    "testnet": "wss://stream-testnet.bybit.com/v5/private",
    "demo": "wss://stream-demo.bybit.com/v5/private",
}
_REST = {
    "mainnet": "https://api.bybit.com",
    "testnet": "https://api-testnet.bybit.com",
    "demo": "https://api-demo.bybit.com",
}

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it."""


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@dataclass(frozen=True)
class Settings:
    # Bybit
    bybit_env: str
    ws_public_base: str          # category path is appended: {base}/linear
    ws_private_url: str
    rest_url: str
    bybit_api_key: str = field(default="", repr=False)
    bybit_api_secret: str = field(default="", repr=False)
    max_active_time: str = ""    # private stream ?max_active_time=, "" = Bybit's default
    recv_window_ms: int = 5000
    # Infrastructure
    database_url: str = field(default="", repr=False)
    rabbitmq_url: str = field(default="", repr=False)
    # RabbitMQ management HTTP API (optional): the publisher sets its retention policy through it.
    rabbitmq_management_url: str = field(default="", repr=False)
    run_dir: Path = ROOT / "run"
    log_level: str = "INFO"
    # API
    api_bind: str = "127.0.0.1:4400"
    gateway_api_key: str = field(default="", repr=False)
    control_timeout_ms: int = 2000
    # ingest
    ping_interval_s: float = 20.0
    dead_after_s: float = 40.0
    backoff_max_s: float = 30.0
    max_new_connections_5min: int = 400
    handoff_buffer: int = 100_000
    handoff_buffer_mb: int = 32
    # market data older than this since ingest received it is dropped before it is published
    # (ingest's hand-off and the publisher alike); account and system events never are
    market_max_age_ms_books: int = 500
    market_max_age_ms_tickers: int = 500
    market_max_age_ms_trades: int = 5_000
    market_max_age_ms_liquidations: int = 30_000
    market_max_age_ms_other: int = 5_000
    exchange_status: bool = True     # hold Bybit's system.status socket (maintenance, incidents)
    # recording of every raw frame ingest receives (ingest/recorder.py); None = off
    record_dir: Path | None = None
    record_rotate_mb: float = 64.0
    record_rotate_s: float = 3600.0
    record_max_mb: float = 4096.0
    record_queue_mb: float = 64.0
    # publisher
    retention_ttl_ms: int = 86_400_000
    retention_max_length: int = 100_000
    retention_account_max_length: int = 100_000   # account queues; at least retention_max_length
    confirm_window: int = 2000
    publisher_buffer: int = 200_000
    publisher_buffer_mb: int = 48
    publisher_backoff_max_s: float = 5.0
    publisher_fast_path: bool = True
    api_gunicorn_patches: bool = True
    # ops: a program whose status file stops moving for this long is restarted
    stall_after_s: float = 20.0
    # persister
    batch_rows: int = 1000
    batch_ms: int = 200
    # reconciliation
    reconcile_interval_s: float = 300.0
    rest_ban_s: float = 600.0    # REST calls paused after an HTTP 403 (Bybit asks for 10 minutes at least)
    # whole-category subscriptions (symbol "*"): each category's instrument list is fetched this often
    category_refresh_s: float = 120.0
    # instances: each unit of work (private stream, public shard) is leased by one live instance
    instance_id: str = "default"
    shards: int = 16             # public topics are split by a stable hash of their key into this many shards
    shard_capacity: int = 16     # shards this instance may own (default: all)
    lease_ttl_s: float = 10.0    # a lease not renewed for this long expires (database time)
    lease_renew_s: float = 2.0   # renewal (and heartbeat) interval
    # simulator
    sim_host: str = "127.0.0.1"
    sim_port: int = 8765
    sim_rate: float = 10.0       # frames per second per subscribed topic

    @property
    def has_private(self) -> bool:
        return bool(self.bybit_api_key and self.bybit_api_secret)

    def market_max_age_ns(self) -> dict[str, int]:
        """{market class: age bound in ns} (common.freshness.age_bounds)."""
        from common.freshness import age_bounds

        return age_bounds(self.market_max_age_ms_books, self.market_max_age_ms_tickers,
                          self.market_max_age_ms_trades, self.market_max_age_ms_liquidations,
                          self.market_max_age_ms_other)

    @property
    def status_dir(self) -> Path:
        return self.run_dir / "status"

    def describe(self) -> dict:
        """Settings safe to log: secrets dropped, passwords in URLs masked."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if not f.repr:
                if f.name.endswith("_url"):
                    out[f.name] = _mask_url(value)
                else:
                    out[f.name] = "<set>" if value else "<unset>"
            else:
                out[f.name] = str(value) if isinstance(value, Path) else value
        return out


class _Env:
    """Typed, strict access to one environment mapping."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def str(self, name: str, default: str | None = None, pattern: str | None = None) -> str:
        raw = self.env.get(name)
        if raw is None or raw == "":
            if default is None:
                raise ConfigError(f"{name}: required setting is missing")
            return default
        value = raw.strip()
        if pattern and not re.fullmatch(pattern, value):
            raise ConfigError(f"{name}: {value!r} does not match {pattern}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.str(name, default).lower()
        if value not in choices:
            raise ConfigError(f"{name}: must be one of {', '.join(choices)}; got {value!r}")
        return value

    def int(self, name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.str(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError(f"{name}: {value} is outside [{minimum}, {maximum if maximum is not None else 'inf'}]")
        return value

    def float(self, name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
        raw = self.str(name, str(default))
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
        if not (value >= minimum) or (maximum is not None and value > maximum):
            raise ConfigError(f"{name}: {value} is outside [{minimum}, {maximum if maximum is not None else 'inf'}]")
        return value

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.str(name, default)
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            raise ConfigError(f"{name}: expected a {'/'.join(schemes)} URL with a host, got {_mask_url(value)!r}")
        try:
            parts.port
        except ValueError:
            raise ConfigError(f"{name}: bad port in {_mask_url(value)!r}") from None
        return value.rstrip("/")


def _max_active_time(env: _Env) -> str:
    value = env.str("BYBIT_MAX_ACTIVE_TIME", "")
    if not value:
        return ""
    m = re.fullmatch(r"(\d+)([sm])", value)
    seconds = int(m.group(1)) * (60 if m.group(2) == "m" else 1) if m else -1
    if not 30 <= seconds <= 600:
        raise ConfigError(f"BYBIT_MAX_ACTIVE_TIME: expected 30s..600s or 1m..10m, got {value!r}")
    return value


def default_instance_id() -> str:
    """The host name made into an instance id ("default" when there is none): one instance per
    host needs no setting, and each replica of a scaled container gets its own."""
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip(".-_")
    return name or "default"


def _instances(e: _Env) -> dict:
    instance_id = e.str("GW_INSTANCE_ID", "") or default_instance_id()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", instance_id):
        raise ConfigError(f"GW_INSTANCE_ID: {instance_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
                          "starting with a letter or digit")
    shards = e.int("GW_SHARDS", 16, 1, 1024)
    ttl = e.float("GW_LEASE_TTL_S", 10.0, 3.0, 300.0)
    return {"instance_id": instance_id, "shards": shards,
            "shard_capacity": e.int("GW_SHARD_CAPACITY", shards, 0, shards),
            "lease_ttl_s": ttl, "lease_renew_s": e.float("GW_LEASE_RENEW_S", min(2.0, ttl / 3), 0.2, ttl / 3)}


def settings_or_exit(process: str) -> Settings:
    """load_settings() for a process's main(): a bad setting ends the process with exit code 2
    and one JSON line (the shape of every log line) naming the setting."""
    try:
        return load_settings()
    except ConfigError as exc:
        import sys

        import orjson

        print(orjson.dumps({"level": "critical", "process": process, "event": "bad_setting", "error": str(exc)}).decode(),
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from ``env`` (default: os.environ after loading .env)."""
    if env is None:
        env_file = os.environ.get("GW_ENV_FILE", str(ROOT / ".env"))
        if env_file:
            from dotenv import load_dotenv

            load_dotenv(env_file, override=False)
        env = os.environ
    e = _Env(env)
    bybit_env = e.choice("BYBIT_ENV", BYBIT_ENVS, "mainnet")
    sim_host = e.str("SIM_HOST", "127.0.0.1")
    sim_port = e.int("SIM_PORT", 8765, 1, 65535)
    if bybit_env == "sim":
        ws_public, ws_private = f"ws://{sim_host}:{sim_port}/v5/public", f"ws://{sim_host}:{sim_port}/v5/private"
        rest = f"http://{sim_host}:{sim_port}"
    else:
        ws_public, ws_private, rest = _WS_PUBLIC[bybit_env], _WS_PRIVATE[bybit_env], _REST[bybit_env]
    api_key = e.str("BYBIT_API_KEY", "")
    api_secret = e.str("BYBIT_API_SECRET", "")
    if bool(api_key) != bool(api_secret):
        raise ConfigError("BYBIT_API_KEY/BYBIT_API_SECRET: set both or neither")
    ping = e.float("GW_PING_INTERVAL_S", 20.0, 0.1, 60.0)
    dead_after = e.float("GW_DEAD_AFTER_S", 40.0, 0.2, 600.0)
    if dead_after <= ping:
        raise ConfigError(f"GW_DEAD_AFTER_S: must be longer than GW_PING_INTERVAL_S ({ping})")
    max_length = e.int("RETENTION_MAX_LENGTH", 100_000, 1)
    account_max_length = e.int("RETENTION_ACCOUNT_MAX_LENGTH", max_length, 1)
    if account_max_length < max_length:
        raise ConfigError(f"RETENTION_ACCOUNT_MAX_LENGTH: {account_max_length} is below RETENTION_MAX_LENGTH "
                          f"({max_length}); it may only raise the account queues' bound")
    record_dir = e.str("GW_RECORD_DIR", "")
    record_rotate_mb = e.float("GW_RECORD_ROTATE_MB", 64.0, 0.01, 1_000_000.0)
    record_max_mb = e.float("GW_RECORD_MAX_MB", 4096.0, 0.01)
    if record_max_mb < record_rotate_mb:
        raise ConfigError(f"GW_RECORD_MAX_MB: {record_max_mb:g} is below GW_RECORD_ROTATE_MB ({record_rotate_mb:g}); "
                          "the bound on all files must hold at least one whole file")
    return Settings(
        bybit_env=bybit_env,
        ws_public_base=e.url("BYBIT_WS_PUBLIC_URL", ws_public, ("ws", "wss")),
        ws_private_url=e.url("BYBIT_WS_PRIVATE_URL", ws_private, ("ws", "wss")),
        rest_url=e.url("BYBIT_REST_URL", rest, ("http", "https")),
        bybit_api_key=api_key,
        bybit_api_secret=api_secret,
        max_active_time=_max_active_time(e),
        recv_window_ms=e.int("BYBIT_RECV_WINDOW_MS", 5000, 100, 60000),
        database_url=e.url("DATABASE_URL", "postgresql://wsgw:wsgw@127.0.0.1:5432/wsgw", ("postgresql", "postgres")),
        rabbitmq_url=e.url("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F", ("amqp", "amqps")),
        run_dir=Path(e.str("GW_RUN_DIR", str(ROOT / "run"))).resolve(),
        log_level=e.choice("GW_LOG_LEVEL", ("debug", "info", "warning", "error"), "info").upper(),
        api_bind=e.str("API_BIND", "127.0.0.1:4400", pattern=r"[\w.\-\[\]:]+:\d{1,5}"),
        gateway_api_key=e.str("API_KEY", ""),
        control_timeout_ms=e.int("GW_CONTROL_TIMEOUT_MS", 2000, 50, 60000),
        ping_interval_s=ping,
        dead_after_s=dead_after,
        backoff_max_s=e.float("GW_BACKOFF_MAX_S", 30.0, 0.1, 30.0),
        max_new_connections_5min=e.int("GW_MAX_NEW_CONNECTIONS_5MIN", 400, 1, 500),
        handoff_buffer=e.int("GW_HANDOFF_BUFFER", 100_000, 100),
        handoff_buffer_mb=e.int("GW_HANDOFF_BUFFER_MB", 32, 1, 4096),
        market_max_age_ms_books=e.int("MARKET_MAX_AGE_MS_BOOKS", 500, 50, 60_000),
        market_max_age_ms_tickers=e.int("MARKET_MAX_AGE_MS_TICKERS", 500, 50, 60_000),
        market_max_age_ms_trades=e.int("MARKET_MAX_AGE_MS_TRADES", 5_000, 50, 600_000),
        market_max_age_ms_liquidations=e.int("MARKET_MAX_AGE_MS_LIQUIDATIONS", 30_000, 50, 600_000),
        market_max_age_ms_other=e.int("MARKET_MAX_AGE_MS_OTHER", 5_000, 50, 600_000),
        exchange_status=e.choice("GW_EXCHANGE_STATUS", ("true", "false"), "true") == "true",
        record_dir=Path(record_dir).resolve() if record_dir else None,
        record_rotate_mb=record_rotate_mb,
        record_rotate_s=e.float("GW_RECORD_ROTATE_S", 3600.0, 1.0, 7 * 86400.0),
        record_max_mb=record_max_mb,
        record_queue_mb=e.float("GW_RECORD_QUEUE_MB", 64.0, 1.0, 4096.0),
        retention_ttl_ms=e.int("RETENTION_TTL_MS", 86_400_000, 1000),
        retention_max_length=max_length,
        retention_account_max_length=account_max_length,
        confirm_window=e.int("PUBLISHER_CONFIRM_WINDOW", 2000, 1, 100_000),
        publisher_buffer=e.int("PUBLISHER_BUFFER", 200_000, 100),
        publisher_buffer_mb=e.int("PUBLISHER_BUFFER_MB", 48, 1, 4096),
        publisher_backoff_max_s=e.float("PUBLISHER_BACKOFF_MAX_S", 5.0, 0.1, 30.0),
        publisher_fast_path=e.choice("PUBLISHER_FAST_PATH", ("on", "off"), "on") == "on",
        api_gunicorn_patches=e.choice("API_GUNICORN_PATCHES", ("on", "off"), "on") == "on",
        rabbitmq_management_url=(e.url("RABBITMQ_MANAGEMENT_URL", "", ("http", "https"))
                                 if e.str("RABBITMQ_MANAGEMENT_URL", "") else ""),
        stall_after_s=e.float("GW_STALL_AFTER_S", 20.0, 2.0, 600.0),
        batch_rows=e.int("PERSISTER_BATCH_ROWS", 1000, 1, 100_000),
        batch_ms=e.int("PERSISTER_BATCH_MS", 200, 1, 60_000),
        reconcile_interval_s=e.float("GW_RECONCILE_INTERVAL_S", 300.0, 1.0),
        rest_ban_s=e.float("GW_REST_BAN_S", 600.0, 600.0),
        category_refresh_s=e.float("GW_CATEGORY_REFRESH_S", 120.0, 5.0, 3600.0),
        **_instances(e),
        sim_host=sim_host,
        sim_port=sim_port,
        sim_rate=e.float("SIM_RATE", 10.0, 0.0, 100_000.0),
    )
