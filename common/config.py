"""Settings, read once at process start from the environment (and `.env`).

Every setting is described once, in the table below (TABLE): load_settings walks it
and then applies the rules between settings. Every setting is parsed strictly: a malformed
value stops the process with a message naming the setting. Secrets are kept out of ``repr`` so
a logged settings object never shows them. ``python -m common.config --write`` regenerates
env.example and the table of docs/configuration.md from the table.
"""
from __future__ import annotations

import os
import re
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

# Public data for demo accounts comes from the mainnet public hosts (Bybit has no demo public stream).
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


# -- the table of settings -------------------------------------------------------------------
# Every environment variable of the gateway, once: type, default, bounds, group, description,
# secret or not, and who reads it. load_settings walks it (the rules between settings follow as
# code), bybitsim.options reads the simulator's settings through it, env.example and the table
# of docs/configuration.md are generated from it, and a variable with a known prefix that is not
# in it is named in a warning at start.

# Who reads a setting.
SETTINGS = "settings"    # a field of common.config.Settings (every process)
SIM = "sim"              # a field of bybitsim.options.SimOptions (the simulator)
SCRIPTS = "scripts"      # scripts/run.sh and supervisord.conf (supervisord's own log files)
ENV_ONLY = "env"         # read from the environment only, before .env is (shown commented out)
INTERNAL = "internal"    # set by the scripts, the tests or docker compose, not by an operator: not listed
READERS = (SETTINGS, SIM, SCRIPTS, ENV_ONLY, INTERNAL)

KINDS = ("str", "int", "float", "choice", "bool", "url", "path")

# Variables with these prefixes are the gateway's: one that is not in the table is a typo or a
# leftover, named in a warning at start rather than silently ignored.
PREFIXES = ("GW_", "BYBIT_", "API_", "PUBLISHER_", "PERSISTER_", "RETENTION_", "MARKET_", "SIM_",
            "RABBITMQ_", "DATABASE_")


@dataclass(frozen=True)
class Group:
    key: str
    title: str
    note: str = ""      # shown after the title
    link: str = ""      # docs/configuration.md only: a page explaining the group


GROUPS = (
    Group("bybit", "Bybit"),
    Group("infra", "Infrastructure"),
    Group("api", "REST API"),
    Group("ingest", "ingest"),
    Group("instances", "instances", "several gateways on one PostgreSQL and one RabbitMQ",
          "operations.md#several-instances"),
    Group("publisher", "publisher"),
    Group("persister", "persister"),
    Group("supervision", "supervision (ops eventlistener)"),
    Group("simulator", "simulator (BYBIT_ENV=sim)"),
    Group("env", "environment only", "not read from .env"),
    Group("internal", "set by the scripts, the tests or docker compose"),
)


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str                       # one of KINDS
    # The default as the parser takes it; None: derived from other settings by load_settings.
    default: object
    group: str
    doc: str                        # one line; `backticks` and [links](...) are markdown
    reader: str = SETTINGS
    field: str | None = None        # the Settings / SimOptions field it fills
    minimum: float | None = 0       # int and float: bounds (None: unbounded below)
    maximum: float | None = None
    choices: tuple[str, ...] = ()   # choice; bool: (true word, false word)
    pattern: str | None = None      # str: the whole value must match
    schemes: tuple[str, ...] = ()   # url
    secret: bool = False            # never logged; empty in env.example
    # Read by explicit code after the table walk (a default or bound derived from other
    # settings, or a check of its own); the table still gives its type and static bounds.
    explicit: bool = False
    shown: str | None = None        # env.example value and the docs' default, when not the default as written

    def __post_init__(self):
        assert self.kind in KINDS and self.reader in READERS, self.name
        assert self.group in {g.key for g in GROUPS}, self.name
        assert self.kind not in ("choice", "bool") or self.choices, self.name
        assert self.kind != "url" or self.schemes, self.name
        assert self.default is not None or self.explicit, f"{self.name}: a derived default is explicit"

    @property
    def example(self) -> str:
        """The value written in env.example (empty for a secret)."""
        return "" if self.secret else self.default_text

    @property
    def default_text(self) -> str:
        """The default as an operator would write it ("" when derived or empty)."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if value is None:
            return ""
        if self.kind == "bool":
            return self.choices[0] if value else self.choices[1]
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)


S = Setting
TABLE: tuple[Setting, ...] = (
    # -- Bybit
    S("BYBIT_ENV", "choice", "mainnet", "bybit", field="bybit_env", choices=("mainnet", "testnet", "demo", "sim"),
      doc="`mainnet`, `testnet`, `demo` or `sim` (the local simulator, started by supervisord)"),
    S("BYBIT_API_KEY", "str", "", "bybit", field="bybit_api_key", secret=True,
      doc="API key for the private stream (orders, executions, positions, wallet); empty with the secret: "
          "public market data only (with `BYBIT_ENV=sim`: the simulator's `SIM_API_KEY`). Never logged"),
    S("BYBIT_API_SECRET", "str", "", "bybit", field="bybit_api_secret", secret=True,
      doc="its secret; set both or neither. Never logged"),
    S("BYBIT_WS_PUBLIC_URL", "url", None, "bybit", field="ws_public_base", schemes=("ws", "wss"), explicit=True,
      doc="override of the public base URL (`/spot`, `/linear`, ... appended); empty: from `BYBIT_ENV`"),
    S("BYBIT_WS_PRIVATE_URL", "url", None, "bybit", field="ws_private_url", schemes=("ws", "wss"), explicit=True,
      doc="override of the private stream URL; empty: from `BYBIT_ENV`"),
    S("BYBIT_REST_URL", "url", None, "bybit", field="rest_url", schemes=("http", "https"), explicit=True,
      doc="override of the REST base URL (reconciliation); empty: from `BYBIT_ENV`"),
    S("BYBIT_MAX_ACTIVE_TIME", "str", "", "bybit", field="max_active_time", explicit=True,
      doc="private stream `max_active_time` (30s..600s or 1m..10m); empty: Bybit's 10 minutes. ingest rotates "
          "the private socket before it (the new socket subscribed before the old one closes)"),
    S("BYBIT_RECV_WINDOW_MS", "int", 5000, "bybit", field="recv_window_ms", minimum=100, maximum=60000,
      doc="recv window of signed REST calls, ms (100-60000)"),
    # -- Infrastructure
    S("DATABASE_URL", "url", "postgresql://wsgw:wsgw@127.0.0.1:5432/wsgw", "infra", field="database_url",
      schemes=("postgresql", "postgres"), doc="PostgreSQL (a password in it is masked in logs)"),
    S("RABBITMQ_URL", "url", "amqp://guest:guest@127.0.0.1:5672/%2F", "infra", field="rabbitmq_url",
      schemes=("amqp", "amqps"), doc="RabbitMQ (a password in it is masked in logs)"),
    S("RABBITMQ_MANAGEMENT_URL", "url", "", "infra", field="rabbitmq_management_url", schemes=("http", "https"),
      doc="optional RabbitMQ management API (e.g. http://guest:guest@127.0.0.1:15672): the publisher sets the "
          "retention policy through it; empty: through `rabbitmqctl` when available"),
    S("GW_RUN_DIR", "path", str(ROOT / "run"), "infra", field="run_dir", shown="./run",
      doc="ZeroMQ ipc sockets, status files, spool files, metrics and the supervisorctl socket (mode 0700)"),
    S("GW_LOG_LEVEL", "choice", "info", "infra", field="log_level", choices=("debug", "info", "warning", "error"),
      doc="`debug`, `info`, `warning` or `error`"),
    S("GW_LOG_DIR", "str", "./logs", "infra", reader=SCRIPTS,
      doc="one JSON log file per program here (supervisord's, set up by `scripts/run.sh`)"),
    S("GW_LOG_MAXBYTES", "str", "50MB", "infra", reader=SCRIPTS, pattern=r"\d+(KB|MB|GB)?",
      doc="a log file is rotated at this size (bytes, or a number with KB, MB or GB)"),
    S("GW_LOG_BACKUPS", "str", "5", "infra", reader=SCRIPTS, pattern=r"\d+",
      doc="rotated log files kept per program"),
    # -- REST API
    S("API_BIND", "str", "127.0.0.1:4400", "api", field="api_bind", pattern=r"[\w.\-\[\]:]+:\d{1,5}",
      doc="where the API listens, host:port"),
    S("API_GUNICORN_PATCHES", "bool", True, "api", field="api_gunicorn_patches", choices=("on", "off"),
      doc="`off`: run gunicorn as released (HTML pages for requests it refuses, lingering closes in its main "
          "loop, 5 s first-bytes wait); `on` applies the API's three patches (JSON errors, lingering closes in a "
          "thread, a short first-bytes wait), only on the gunicorn release they were tested with "
          "(`api/gunicorn_patches.py`)"),
    S("API_KEY", "str", "", "api", field="gateway_api_key", secret=True,
      doc="when set, `/api/v1/*` requires the `X-API-Key` header with this value. Never logged"),
    S("GW_CONTROL_TIMEOUT_MS", "int", 2000, "api", field="control_timeout_ms", minimum=50, maximum=60000,
      doc="how long the API waits for ingest to acknowledge a subscription change, ms (50-60000)"),
    # -- ingest
    S("GW_PING_INTERVAL_S", "float", 20.0, "ingest", field="ping_interval_s", minimum=0.1, maximum=60.0,
      doc="JSON ping interval on every socket, s (Bybit recommends 20)"),
    S("GW_DEAD_AFTER_S", "float", 40.0, "ingest", field="dead_after_s", minimum=0.2, maximum=600.0,
      doc="no pong (or no frame at all) for this long: the link is dead, reconnect, s (longer than "
          "`GW_PING_INTERVAL_S`)"),
    S("GW_BACKOFF_MAX_S", "float", 30.0, "ingest", field="backoff_max_s", minimum=0.1, maximum=30.0,
      doc="Bybit reconnect backoff cap, s (at most 30, so a retry happens at least every 30 s)"),
    S("GW_MAX_NEW_CONNECTIONS_5MIN", "int", 400, "ingest", field="max_new_connections_5min", minimum=1,
      maximum=500, doc="new Bybit connections allowed per 5 minutes (Bybit's limit is 500)"),
    S("GW_HANDOFF_BUFFER", "int", 100_000, "ingest", field="handoff_buffer", minimum=100,
      doc="frames held for a downstream that cannot keep up, before market data is dropped"),
    S("GW_HANDOFF_BUFFER_MB", "int", 32, "ingest", field="handoff_buffer_mb", minimum=1, maximum=4096,
      doc="... and at most this many MiB of them (whichever bound comes first; keeps ingest small in a flood)"),
    S("GW_HANDOFF_LINGER_MS", "float", 0.0, "ingest", field="handoff_linger_ms", minimum=0.0, maximum=20.0,
      doc="how ingest groups frames for the publisher (up to 32 in one message: one wake-up and one write per "
          "batch down the whole chain instead of per frame). 0: the frames read in one turn of ingest's loop go "
          "together at its end (a flood is read many a turn; adds no wait). Above 0: frames within this many ms "
          "of the last hand-off wait for it to end, batching steady traffic too at up to that much latency. 0-20"),
    S("MARKET_MAX_AGE_MS_BOOKS", "int", 500, "ingest", field="market_max_age_ms_books", minimum=50, maximum=60_000,
      doc="order-book events (`orderbook`, `orderbook_rpi`) older than this (ms since ingest received them) are "
          "dropped, not published (ingest's hand-off and the publisher alike; account and system events never "
          "are); a snapshot follows, from ingest's copy of a plain order book (an RPI book is resubscribed). "
          "50-60000"),
    S("MARKET_MAX_AGE_MS_TICKERS", "int", 500, "ingest", field="market_max_age_ms_tickers", minimum=50,
      maximum=60_000, doc="the same for tickers (a dropped linear or inverse delta is still merged, so the next "
                          "ticker is complete). 50-60000"),
    S("MARKET_MAX_AGE_MS_TRADES", "int", 5_000, "ingest", field="market_max_age_ms_trades", minimum=50,
      maximum=600_000, doc="the same for trades: worth more late than never, within limits. 50-600000"),
    S("MARKET_MAX_AGE_MS_LIQUIDATIONS", "int", 30_000, "ingest", field="market_max_age_ms_liquidations",
      minimum=50, maximum=600_000,
      doc="the same for liquidations (rare, and still informative late). 50-600000"),
    S("MARKET_MAX_AGE_MS_OTHER", "int", 5_000, "ingest", field="market_max_age_ms_other", minimum=50,
      maximum=600_000, doc="the same for klines, price limits, insurance and ADL alerts. 50-600000"),
    S("GW_RECONCILE_INTERVAL_S", "float", 300.0, "ingest", field="reconcile_interval_s", minimum=1.0,
      doc="periodic REST reconciliation of the account state, s"),
    S("GW_REST_BAN_S", "float", 600.0, "ingest", field="rest_ban_s", minimum=600.0,
      doc="after HTTP 403 from Bybit's REST API (an IP ban), no REST call for this long, s (at least 600)"),
    S("GW_CATEGORY_REFRESH_S", "float", 120.0, "ingest", field="category_refresh_s", minimum=5.0, maximum=3600.0,
      doc="whole-category subscriptions (`symbol: \"*\"`): each category's instrument list is fetched again this "
          "often, so listings are subscribed and delistings let go, s (5-3600)"),
    S("GW_EXCHANGE_STATUS", "bool", True, "ingest", field="exchange_status", choices=("true", "false"),
      doc="`true`: ingest holds Bybit's system-status socket and publishes its maintenance and incident notices "
          "(`exchange_status.bybit`; active ones in `/api/v1/status`); `false`: it does not"),
    S("GW_RECORD_DIR", "path", "", "ingest", field="record_dir",
      doc="record every raw frame ingest receives (public and private, data pushes and replies, with receive "
          "time and connection) into gzip files here; empty: off. Replay with `python -m bybitsim.replay` "
          "([operations.md](operations.md#recording-and-replay))"),
    S("GW_RECORD_ROTATE_MB", "float", 64.0, "ingest", field="record_rotate_mb", minimum=0.01, maximum=1_000_000.0,
      doc="a recording file is closed and the next one started at this size, MiB compressed (decimals allowed)"),
    S("GW_RECORD_ROTATE_S", "float", 3600.0, "ingest", field="record_rotate_s", minimum=1.0, maximum=7 * 86400.0,
      doc="... or at this age, s"),
    S("GW_RECORD_MAX_MB", "float", 4096.0, "ingest", field="record_max_mb", minimum=0.01,
      doc="all recording files together at most this many MiB; the oldest are deleted first (logged, counted in "
          "ingest's status); at least `GW_RECORD_ROTATE_MB`"),
    S("GW_RECORD_QUEUE_MB", "float", 64.0, "ingest", field="record_queue_mb", minimum=1.0, maximum=4096.0,
      doc="frames waiting for the recording's writer thread, MiB; past it frames go unrecorded (counted as "
          "`dropped`) rather than slow ingest down"),
    # -- instances
    S("GW_INSTANCE_ID", "str", None, "instances", field="instance_id", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
      explicit=True,
      doc="this instance's id among the gateways sharing the database (letters, digits, `.`, `_`, `-`; at most "
          "64); empty: the host name. A second stack started with a live instance's id exits (code 2) naming it"),
    S("GW_SHARDS", "int", 16, "instances", field="shards", minimum=1, maximum=1024,
      doc="public topics are split into this many shards by a stable hash (crc32) of `endpoint:topic`; every "
          "live instance must use the same count (1-1024)"),
    S("GW_SHARD_CAPACITY", "int", None, "instances", field="shard_capacity", minimum=0, explicit=True,
      doc="shards this instance may own (0 to `GW_SHARDS`); empty: all of them"),
    S("GW_LEASE_TTL_S", "float", 10.0, "instances", field="lease_ttl_s", minimum=3.0, maximum=300.0,
      doc="a unit's lease (the private stream, each shard) expires this long after its owner's last renewal, s "
          "(3-300); the owner stops publishing the unit 1 s before, another instance takes it after"),
    S("GW_LEASE_RENEW_S", "float", None, "instances", field="lease_renew_s", minimum=0.2, explicit=True, shown="2",
      doc="leases are renewed (and the heartbeat written) this often, s (0.2 to a third of `GW_LEASE_TTL_S`; "
          "default 2, or a third of `GW_LEASE_TTL_S` when that is less)"),
    # -- publisher
    S("RETENTION_TTL_MS", "int", 86_400_000, "publisher", field="retention_ttl_ms", minimum=1000,
      doc="queue retention, applied as a policy: message age, ms (24 h)"),
    S("RETENTION_MAX_LENGTH", "int", 100_000, "publisher", field="retention_max_length", minimum=1,
      doc="queue retention: messages per queue (whichever of the two bounds comes first)"),
    S("RETENTION_ACCOUNT_MAX_LENGTH", "int", None, "publisher", field="retention_account_max_length", minimum=1,
      explicit=True,
      doc="a larger bound (messages) for the account queues only (order_status, executions, positions, "
          "balances, ...); empty: `RETENTION_MAX_LENGTH`. It can raise that bound, never lower it"),
    S("PUBLISHER_CONFIRM_WINDOW", "int", 2000, "publisher", field="confirm_window", minimum=1, maximum=100_000,
      doc="unconfirmed messages in flight to RabbitMQ"),
    S("PUBLISHER_BUFFER", "int", 200_000, "publisher", field="publisher_buffer", minimum=100,
      doc="events buffered while RabbitMQ is away (market data beyond it is dropped, account data kept)"),
    S("PUBLISHER_BUFFER_MB", "int", 48, "publisher", field="publisher_buffer_mb", minimum=1, maximum=4096,
      doc="... and at most this many MiB of events in memory (account events beyond it spill to disk)"),
    S("PUBLISHER_BACKOFF_MAX_S", "float", 5.0, "publisher", field="publisher_backoff_max_s", minimum=0.1,
      maximum=30.0,
      doc="broker reconnect backoff cap, s (0.1-30): RabbitMQ is ours and a refused connect costs nothing, so "
          "retry often; the publisher is back within this long of the broker"),
    S("PUBLISHER_FAST_PATH", "bool", True, "publisher", field="publisher_fast_path", choices=("on", "off"),
      doc="`on`: the publisher writes AMQP frames itself through pika internals (`publisher/pika_fast.py`, about "
          "twice as cheap per event), only with the pika release it was tested with, else the public API "
          "(logged, and in the status file's `broker.path`); `off`: pika's public API"),
    # -- persister
    S("PERSISTER_BATCH_ROWS", "int", 1000, "persister", field="batch_rows", minimum=1, maximum=100_000,
      doc="a batch is written every this many rows ..."),
    S("PERSISTER_BATCH_MS", "int", 200, "persister", field="batch_ms", minimum=1, maximum=60_000,
      doc="... or every this many ms"),
    # -- supervision
    S("GW_STALL_AFTER_S", "float", 20.0, "supervision", field="stall_after_s", minimum=2.0, maximum=600.0,
      doc="ingest, publisher and persister rewrite their status file every second; one whose file has not moved "
          "for this long (2-600 s; 30 s more right after a start) is stalled: the eventlistener restarts it "
          "(TERM, KILL after its stopwaitsecs; backing off if it keeps stalling), publishes "
          "`system.process_stalled`, and the container health check fails meanwhile"),
    S("GW_NICE_BEHIND_INGEST", "int", 5, "supervision", field="nice_behind_ingest", minimum=0, maximum=19,
      doc="the publisher, persister and API lower their CPU priority by this much (a nice increment, 0-19) at "
          "start, so when the machine is short of CPU ingest reads Bybit's sockets first: a socket read late makes "
          "every frame on it late, fills included. 0: all equal (more events delivered in an overload, read later; "
          "[performance.md](performance.md#read-first-ingests-cpu-priority))"),
    # -- simulator (SIM_HOST, SIM_PORT and SIM_RATE are Settings fields: the gateway's URLs come from them)
    S("SIM_HOST", "str", "127.0.0.1", "simulator", field="sim_host", doc="where the simulator listens"),
    S("SIM_PORT", "int", 8765, "simulator", field="sim_port", minimum=1, maximum=65535, doc="its port"),
    S("SIM_RATE", "float", 10.0, "simulator", field="sim_rate", minimum=0.0, maximum=100_000.0,
      doc="public frames per second per subscribed topic"),
    S("SIM_API_KEY", "str", "sim-key", "simulator", reader=SIM, field="api_key", secret=True,
      doc="the key the simulator accepts (the demo gateway uses it when `BYBIT_API_KEY` is empty); "
          "empty: `sim-key`"),
    S("SIM_API_SECRET", "str", "sim-secret", "simulator", reader=SIM, field="api_secret", secret=True,
      doc="its secret; empty: `sim-secret`"),
    S("SIM_SYMBOLS", "str", "", "simulator", reader=SIM, field="symbols",
      doc="symbols that exist (e.g. `BTCUSDT,ETHUSDT,option:BTC-31JUL26-120000-C`); empty: every well-formed one"),
    S("SIM_ACCOUNT_RATE", "float", 2.0, "simulator", reader=SIM, field="account_rate", minimum=0.0,
      doc="account events per second (orders placed, filled, cancelled)"),
    S("SIM_ACCOUNT_SYMBOLS", "str", "BTCUSDT,ETHUSDT", "simulator", reader=SIM, field="account_symbols",
      doc="the linear symbols the demo account trades, comma-separated"),
    S("SIM_SEED", "int", 0, "simulator", reader=SIM, field="seed", minimum=None,
      doc="frames are reproducible from the seed and the timestamps"),
    S("SIM_REJECT_MODE", "choice", "whole", "simulator", reader=SIM, field="reject_mode", choices=("whole", "partial"),
      doc="a subscribe mixing good and bad topics: `whole` (nothing subscribed) or `partial`"),
    S("SIM_LISTING", "choice", "open", "simulator", reader=SIM, field="listing", choices=("open", "realistic"),
      doc="`open`: instruments-info lists the `SIM_SYMBOLS` or account symbols, every topic at `SIM_RATE`; "
          "`realistic` (without `SIM_SYMBOLS`): about 800 linear and 700 spot symbols from the seed, each topic "
          "at its symbol's share of `SIM_RATE` (a few busy, most quiet); `POST /__sim/listing` lists or delists one"),
    S("SIM_CHURN_S", "float", 0.0, "simulator", reader=SIM, field="churn_s", minimum=0.0,
      doc="realistic listing: a symbol listed or delisted this often, in turn on linear and spot, s (0: never)"),
    # -- environment only
    S("GW_ENV_FILE", "str", str(ROOT / ".env"), "env", reader=ENV_ONLY, shown=".env",
      doc="which `.env` file to read; empty: none (tests and the container set it empty)"),
    # -- not for operators: known, so never reported as unknown, and not listed
    S("GW_HOME", "path", str(ROOT), "internal", reader=INTERNAL, doc="the checkout supervisord runs from"),
    S("GW_PYTHON", "str", "python", "internal", reader=INTERNAL, doc="the interpreter supervisord starts"),
    S("GW_SIM_AUTOSTART", "bool", False, "internal", reader=INTERNAL, choices=("true", "false"),
      doc="supervisord starts the simulator (BYBIT_ENV=sim)"),
    S("PROMETHEUS_MULTIPROC_DIR", "path", "", "internal", reader=INTERNAL, doc="prometheus_client's metrics files"),
    S("SUPERVISOR_SERVER_URL", "str", "", "internal", reader=INTERNAL, doc="set by supervisord for its children"),
    S("API_FUZZ_EXAMPLES", "int", 40, "internal", reader=INTERNAL, doc="tests/api/test_fuzz.py: examples per test"),
    S("API_FUZZ_RANDOM", "str", "", "internal", reader=INTERNAL, doc="tests/api/test_fuzz.py: new random cases"),
    S("RABBITMQ_USER", "str", "gw", "internal", reader=INTERNAL, doc="docker compose: the broker's user"),
    S("RABBITMQ_PASSWORD", "str", "gw", "internal", reader=INTERNAL, secret=True,
      doc="docker compose: the broker's password"),
)
del S

BY_NAME: dict[str, Setting] = {s.name: s for s in TABLE}
assert len(BY_NAME) == len(TABLE), "a setting listed twice"


def spec(name: str) -> Setting:
    return BY_NAME[name]


def of_reader(reader: str) -> tuple[Setting, ...]:
    return tuple(s for s in TABLE if s.reader == reader)


def documented() -> tuple[Setting, ...]:
    """The settings an operator sets: in env.example and the docs' table."""
    return tuple(s for s in TABLE if s.reader != INTERNAL)


def secret_names() -> tuple[str, ...]:
    return tuple(s.name for s in TABLE if s.secret and s.reader != INTERNAL)

BYBIT_ENVS = spec("BYBIT_ENV").choices
_UNSET = object()


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
    handoff_linger_ms: float = 0.0
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
    nice_behind_ingest: int = 5
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

    def warn_unknown_env(self, log=None) -> list[str]:
        """At start, after logging is set up: one warning naming the environment variables with a
        gateway prefix that are no setting (names only, never values), once per process."""
        return warn_unknown_settings(log)


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
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
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


def read(e: _Env, setting: Setting | str, *, default=_UNSET, minimum=_UNSET, maximum=_UNSET):
    """One setting of the table, typed and checked; explicit code passes the defaults and bounds
    it derives from other settings."""
    s = spec(setting) if isinstance(setting, str) else setting
    default = s.default if default is _UNSET else default
    lo = s.minimum if minimum is _UNSET else minimum
    hi = s.maximum if maximum is _UNSET else maximum
    if s.kind == "int":
        return e.int(s.name, default, lo, hi)
    if s.kind == "float":
        return e.float(s.name, default, lo, hi)
    if s.kind == "choice":
        return e.choice(s.name, s.choices, default)
    if s.kind == "bool":
        return e.choice(s.name, s.choices, s.choices[0] if default else s.choices[1]) == s.choices[0]
    if s.kind == "url":
        if default == "" and not e.str(s.name, ""):
            return ""    # optional: unset is fine, a set value must be a URL
        return e.url(s.name, default, s.schemes)
    if s.kind == "path":
        value = e.str(s.name, str(default))
        return Path(value).resolve() if value else None
    return e.str(s.name, default, s.pattern)


def read_all(reader: str, env: Mapping[str, str]) -> dict:
    """{field: value} of every setting of ``reader`` the table alone describes (no derived
    default, no check of its own)."""
    e = env if isinstance(env, _Env) else _Env(env)
    return {s.field or s.name: read(e, s) for s in of_reader(reader) if not s.explicit}


def _max_active_time(env: _Env) -> str:
    value = read(env, "BYBIT_MAX_ACTIVE_TIME")
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


def _instances(e: _Env, shards: int, ttl: float) -> dict:
    # the table's pattern, checked here with a message of its own (the host name must pass it too)
    instance_id = e.str("GW_INSTANCE_ID", "") or default_instance_id()
    if not re.fullmatch(spec("GW_INSTANCE_ID").pattern, instance_id):
        raise ConfigError(f"GW_INSTANCE_ID: {instance_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
                          "starting with a letter or digit")
    return {"instance_id": instance_id,
            "shard_capacity": read(e, "GW_SHARD_CAPACITY", default=shards, maximum=shards),
            "lease_renew_s": read(e, "GW_LEASE_RENEW_S", default=min(2.0, ttl / 3), maximum=ttl / 3)}


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
    """Build Settings from ``env`` (default: os.environ after loading .env): every plain setting
    from the table, then the derived ones and the rules between settings."""
    if env is None:
        env_file = os.environ.get("GW_ENV_FILE", spec("GW_ENV_FILE").default)
        if env_file:
            from dotenv import load_dotenv

            load_dotenv(env_file, override=False)
        env = os.environ
    e = _Env(env)
    v = read_all(SETTINGS, e)
    # URLs: from BYBIT_ENV (the simulator's from SIM_HOST/SIM_PORT) unless overridden
    if v["bybit_env"] == "sim":
        sim = f"{v['sim_host']}:{v['sim_port']}"
        ws_public, ws_private, rest = f"ws://{sim}/v5/public", f"ws://{sim}/v5/private", f"http://{sim}"
    else:
        ws_public, ws_private, rest = _WS_PUBLIC[v["bybit_env"]], _WS_PRIVATE[v["bybit_env"]], _REST[v["bybit_env"]]
    v["ws_public_base"] = read(e, "BYBIT_WS_PUBLIC_URL", default=ws_public)
    v["ws_private_url"] = read(e, "BYBIT_WS_PRIVATE_URL", default=ws_private)
    v["rest_url"] = read(e, "BYBIT_REST_URL", default=rest)
    v["max_active_time"] = _max_active_time(e)
    if bool(v["bybit_api_key"]) != bool(v["bybit_api_secret"]):
        raise ConfigError("BYBIT_API_KEY/BYBIT_API_SECRET: set both or neither")
    if v["dead_after_s"] <= v["ping_interval_s"]:
        raise ConfigError(f"GW_DEAD_AFTER_S: must be longer than GW_PING_INTERVAL_S ({v['ping_interval_s']})")
    max_length = v["retention_max_length"]
    account_max_length = read(e, "RETENTION_ACCOUNT_MAX_LENGTH", default=max_length)
    if account_max_length < max_length:
        raise ConfigError(f"RETENTION_ACCOUNT_MAX_LENGTH: {account_max_length} is below RETENTION_MAX_LENGTH "
                          f"({max_length}); it may only raise the account queues' bound")
    v["retention_account_max_length"] = account_max_length
    if v["record_max_mb"] < v["record_rotate_mb"]:
        raise ConfigError(f"GW_RECORD_MAX_MB: {v['record_max_mb']:g} is below GW_RECORD_ROTATE_MB "
                          f"({v['record_rotate_mb']:g}); the bound on all files must hold at least one whole file")
    v["log_level"] = v["log_level"].upper()
    v.update(_instances(e, v["shards"], v["lease_ttl_s"]))
    return Settings(**v)


# -- variables that are no setting -----------------------------------------------------------

def unknown_settings(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """[(name, closest setting or None)] for each variable of ``env`` with one of the gateway's
    prefixes that the table does not know: a typo (PUBLISHER_BUFER) or a setting since removed."""
    import difflib

    candidates = [s.name for s in documented()]
    out = []
    for name in sorted(env):
        if name.startswith(PREFIXES) and name not in BY_NAME:
            close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
            out.append((name, close[0] if close else None))
    return out


_warned_in: set[int] = set()    # pids: once per process, a forked child included


def warn_unknown_settings(log=None, env: Mapping[str, str] | None = None) -> list[str]:
    """Log one warning naming the unknown variables (never their values), once per process.
    Returns the names warned about (empty when none, or when already warned)."""
    if os.getpid() in _warned_in:
        return []
    _warned_in.add(os.getpid())
    found = unknown_settings(os.environ if env is None else env)
    if found:
        if log is None:
            from common.logs import get_logger

            log = get_logger("config")
        log.warning("unknown_settings", names=[name for name, _ in found],
                    did_you_mean={name: close for name, close in found if close},
                    hint="not settings of the gateway, ignored (docs/configuration.md lists them)")
    return [name for name, _ in found]


# -- env.example and docs/configuration.md ---------------------------------------------------

ENV_HEADER = """\
# ws-gateway settings. Copy to .env (read by every process via python-dotenv, and by
# scripts/run.sh and docker compose; the environment wins over .env). Every setting is
# parsed strictly: a bad value stops the process at start with a message naming it. A
# variable with a gateway prefix (GW_, BYBIT_, API_, SIM_, ...) that is not a setting is
# named in a warning at start (a typo is not silently ignored).
# Generated from common/config.py by `make settings` (like the table in
# docs/configuration.md): edit the table, not this file. Secrets are left empty here.
"""

DOCS_BEGIN = "<!-- settings table: generated from common/config.py by `make settings`; edit the table -->"
DOCS_END = "<!-- end of the settings table -->"

_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def _plain(doc: str) -> str:
    """Markdown made plain text for a comment: a link (relative to docs/) becomes the page's
    path, backticks go."""
    return _LINK.sub(lambda m: "docs/" + m.group(2).split("#")[0], doc).replace("`", "")


def _groups() -> list[tuple[Group, list[Setting]]]:
    out = []
    for group in GROUPS:
        members = [s for s in documented() if s.group == group.key]
        if members:
            out.append((group, members))
    return out


def render_env_example() -> str:
    lines = [ENV_HEADER.rstrip("\n")]
    for group, members in _groups():
        title = f"{group.title} ({group.note})" if group.note else group.title
        lines += ["", f"# --- {title} ".ljust(92, "-")]
        for s in members:
            lines += textwrap.wrap(_plain(s.doc[:1].upper() + s.doc[1:]), width=98, initial_indent="# ",
                                   subsequent_indent="# ", break_on_hyphens=False)
            lines.append(f"# {s.name}={s.example}" if s.reader == ENV_ONLY else f"{s.name}={s.example}")
    return "\n".join(lines) + "\n"


def render_docs_table() -> str:
    """The settings table of docs/configuration.md, between (and with) its markers."""
    rows = [DOCS_BEGIN, "", "| setting | default | meaning |", "|---|---|---|"]
    for group, members in _groups():
        extra = "; ".join(p for p in (group.note, f"[{group.link.split('#')[0]}]({group.link})" if group.link else "")
                          if p)
        rows.append(f"| **{group.title}**{f' ({extra})' if extra else ''} | | |")
        for s in members:
            default = f"`{s.default_text}`" if s.default_text else "(empty)"
            assert "|" not in s.doc, f"{s.name}: a '|' would split the table row"
            rows.append(f"| `{s.name}` | {default} | {s.doc} |")
    return "\n".join(rows + ["", DOCS_END])


def render_docs(page: str) -> str:
    """``page`` (docs/configuration.md) with the text between the markers regenerated."""
    begin, end = page.find(DOCS_BEGIN), page.find(DOCS_END)
    if begin < 0 or end < begin:
        raise ValueError("docs/configuration.md: the settings table markers are missing")
    return page[:begin] + render_docs_table() + page[end + len(DOCS_END):]


ENV_EXAMPLE = ROOT / "env.example"
CONFIGURATION_MD = ROOT / "docs" / "configuration.md"


def generated_files() -> dict[Path, str]:
    """{file: the text the table makes of it}."""
    return {ENV_EXAMPLE: render_env_example(),
            CONFIGURATION_MD: render_docs(CONFIGURATION_MD.read_text())}


def main(argv: list[str] | None = None) -> int:
    """``python -m common.config --write``: regenerate env.example and the table of
    docs/configuration.md; ``--check``: exit 1 naming the files that differ from the table."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m common.config", description=main.__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = [path for path, text in generated_files().items() if path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(ROOT)} differs from the settings table in common/config.py: run make settings")
        return 1 if stale else 0
    for path, text in generated_files().items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
