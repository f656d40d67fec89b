"""Request and response models (pydantic v2): the REST contract, and the source of
the OpenAPI document. Unknown fields are refused everywhere."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from common.substatus import STATUSES
from common.topics import CHANNELS, ENDPOINTS, INTERVALS, PUBLIC_CATEGORIES

Channel = Literal[CHANNELS]                       # type: ignore[valid-type]
Category = Literal[PUBLIC_CATEGORIES]             # type: ignore[valid-type]
Interval = Literal[INTERVALS]                     # type: ignore[valid-type]
Endpoint = Literal[ENDPOINTS]                     # type: ignore[valid-type]
SubStatus = Literal[STATUSES]                     # type: ignore[valid-type]
IngestResult = Literal["accepted", "refused", "unreachable", "not_needed"]
Freshness = Literal["fresh", "quiet", "stale", "none"]

REQUESTER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:\-]{0,63}$"
Requester = Annotated[str, Field(pattern=REQUESTER_PATTERN, max_length=64,
                                 description="Who holds the subscription (a service name).",
                                 examples=["strategy-a"])]
# Symbols are checked in full by common.topics.build_topic; this only bounds the input.
Symbol = Annotated[str, Field(min_length=1, max_length=40, examples=["BTCUSDT"],
                              description="The instrument (an option's strike may have decimals: "
                                          "XRP-30OCT26-0.4-P-USDT); for insurance and adl_alert the pool: "
                                          "USDT or USDC on linear, inverse on inverse.")]
# Filters are compared as text; control characters (NUL above all, which PostgreSQL
# cannot store) are refused as invalid input.
FilterText = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


# Operations under /api/v1 take the X-API-Key header when a key is configured.
API_KEY_SECURITY = [{"ApiKey": []}]


_SCHEMA_CACHE: dict[type, dict] = {}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def model_json_schema(cls, *args, **kwargs):
        # flask-openapi3 asks for the query model's schema on every request (to find list
        # fields); building it costs ~3 ms, so the argument-less form is cached per class.
        if args or kwargs:
            return super().model_json_schema(*args, **kwargs)
        if cls not in _SCHEMA_CACHE:
            _SCHEMA_CACHE[cls] = super().model_json_schema()
        return _SCHEMA_CACHE[cls]


# ----- errors -------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. validation_error.")
    message: str
    details: Optional[Any] = Field(None, description="For validation errors: a list of {field, message}.")


class ErrorBody(BaseModel):
    error: ErrorDetail


# Documented on every /api/v1 operation (flask-openapi3 would otherwise describe 422 with its own model).
V1_ERRORS = {400: ErrorBody, 401: ErrorBody, 404: ErrorBody, 413: ErrorBody, 422: ErrorBody,
             500: ErrorBody, 503: ErrorBody}
OPS_ERRORS = {422: ErrorBody, 500: ErrorBody}   # 422 listed so flask-openapi3 does not add its own shape


# ----- subscriptions ------------------------------------------------------------------

class SubscriptionCreate(_Strict):
    channel: Channel
    category: Optional[Category] = Field(None, description="Required for public channels; "
                                         "optional for order/execution/execution_fast/position; "
                                         "none for wallet and greeks.")
    symbol: Optional[Symbol] = Field(None, description="The instrument; \"*\" for every symbol Bybit lists as "
                                     "trading in the category (one subscription, kept up with listings).")
    depth: Optional[Annotated[int, Field(strict=True)]] = Field(
        None, description="orderbook only: 1, 50, 200, 1000 (option: 25, 100).")
    interval: Optional[Interval] = Field(None, description="kline only.")
    requested_by: Requester = "anonymous"


class Subscription(BaseModel):
    id: UUID
    channel: str
    category: Optional[str] = None
    symbol: Optional[str] = None
    depth: Optional[int] = None
    interval: Optional[str] = None
    topic: str = Field(description="Bybit topic name, e.g. orderbook.50.BTCUSDT.")
    endpoint: Endpoint
    status: SubStatus
    last_error: Optional[str] = Field(None, description="Bybit's message when failed.")
    requesters: list[str]
    created_at: datetime
    updated_at: datetime
    last_event_at: Optional[datetime] = None
    symbol_count: Optional[int] = Field(None, description="symbol \"*\": how many listed symbols it covers "
                                        "(null until ingest fetched the list; null for one-topic subscriptions).")
    refused_topics: Optional[list[str]] = Field(None, description="symbol \"*\": its topics Bybit refused "
                                                "(the rest stay subscribed).")


class SubscriptionChange(Subscription):
    ingest: IngestResult = Field(description="What ingest said to the change: accepted; refused "
                                 "(the row is failed, see last_error); unreachable (the change waits "
                                 "in PostgreSQL and ingest applies it when it starts); not_needed (nothing "
                                 "changes at Bybit: a requester joined an active subscription, or one "
                                 "of several holders let go).")


class SubscriptionPath(_Strict):
    id: UUID


class SubscriptionQuery(_Strict):
    status: Optional[SubStatus] = Field(None, description="Default: every status except removed.")
    channel: Optional[Channel] = None
    category: Optional[Category] = None
    symbol: Optional[FilterText] = None
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)


class SubscriptionPage(BaseModel):
    items: list[Subscription]
    total: int = Field(description="Rows matching the filters.")
    limit: int
    offset: int
    next_offset: Optional[int] = Field(None, description="Pass as offset for the next page; null on the last.")


class DeleteQuery(_Strict):
    requested_by: Optional[Requester] = Field(
        None, description="The holder to release. Without it: the anonymous hold, or the only holder.")


# ----- account ------------------------------------------------------------------------

Decimal = Optional[str]


class BalanceQuery(_Strict):
    account_type: Optional[FilterText] = None
    coin: Optional[FilterText] = None


class Balance(BaseModel):
    account_type: str
    coin: str
    wallet_balance: Decimal = None
    equity: Decimal = None
    usd_value: Decimal = None
    locked: Decimal = None
    unrealised_pnl: Decimal = None
    cum_realised_pnl: Decimal = None
    borrow_amount: Decimal = None
    exchange_ts: int
    source: str
    written_at: datetime


class BalanceList(BaseModel):
    items: list[Balance]


class OrderQuery(_Strict):
    status: Optional[FilterText] = Field(None, description="Bybit orderStatus, e.g. New, Filled.")
    symbol: Optional[FilterText] = None
    category: Optional[Category] = None
    open: Optional[bool] = Field(None, description="true: orders still working; false: final.")
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000)


class Order(BaseModel):
    order_id: str
    order_link_id: Optional[str] = None
    category: str
    symbol: str
    side: Optional[str] = None
    order_type: Optional[str] = None
    order_status: str
    is_open: bool
    price: Decimal = None
    qty: Decimal = None
    avg_price: Decimal = None
    leaves_qty: Decimal = None
    cum_exec_qty: Decimal = None
    cum_exec_value: Decimal = None
    created_time: Optional[int] = None
    updated_time: int
    source: str
    written_at: datetime


class OrderPage(BaseModel):
    items: list[Order]
    total: int
    limit: int
    offset: int
    next_offset: Optional[int] = None


# ----- ops ----------------------------------------------------------------------------

class Health(BaseModel):
    status: Literal["ok"]


class ProcessStatus(BaseModel):
    process: str
    reporting: bool = Field(description="False when its status file is missing or older than 10 s.")
    age_s: Optional[float] = None
    buffered: Optional[Any] = None
    dropped: Optional[Any] = None


class ConnectionStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    state: Optional[str] = None
    since: Optional[Any] = None
    reconnects: Optional[int] = None
    last_error: Optional[str] = None


class TopicStatus(BaseModel):
    id: UUID
    endpoint: str
    topic: str
    status: SubStatus
    last_event_age_s: Optional[float] = None
    freshness: Optional[Freshness] = Field(None, description="Judged for active subscriptions by what the "
                                           "topic type should send; trades, liquidations and private "
                                           "topics may be quiet.")
    symbol_count: Optional[int] = Field(None, description="symbol \"*\": listed symbols it covers.")
    refused_topics: Optional[list[str]] = Field(None, description="symbol \"*\": its topics Bybit refused.")


class Reachability(BaseModel):
    reachable: bool
    error: Optional[str] = None


class BrokerStatus(Reachability):
    queues: dict[str, Optional[int]] = Field(default_factory=dict, description="Messages ready per queue "
                                             "(null: queue missing); cached about 2 s.")


class RestBan(BaseModel):
    banned: bool = Field(description="True while ingest makes no REST call: Bybit answered HTTP 403 (an IP "
                         "ban) and asks for at least 10 minutes without calls (GW_REST_BAN_S).")
    until: Optional[float] = Field(None, description="End of the last ban, epoch seconds.")
    bans: int = Field(description="403 answers since ingest started.")


class OwnedUnit(BaseModel):
    unit: str = Field(description="private, or shard-<i>of<N> (public topics by a stable hash of endpoint:topic).")
    epoch: int = Field(description="Lease epoch: +1 with every new owner (AMQP header owner_epoch).")
    since: datetime = Field(description="When this owner took the unit.")
    expires_in_s: float = Field(description="Seconds until the lease expires unless renewed.")


class InstanceStatus(BaseModel):
    instance_id: str
    host: str
    api_bind: Optional[str] = None
    pid: Optional[int] = None
    shards: int
    capacity: int = Field(description="Public shards it may own (GW_SHARD_CAPACITY).")
    private: bool = Field(description="It has Bybit keys: it may own the private stream.")
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: Optional[datetime] = None
    heartbeat_age_s: Optional[float] = None
    state: Literal["live", "stopped", "lost"] = Field(description="lost: no heartbeat for GW_LEASE_TTL_S.")
    owns: list[OwnedUnit]


class ExchangeNotice(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    title: Optional[str] = None
    state: Optional[str] = Field(None, description="scheduled or ongoing (completed and canceled ones are dropped).")
    begin: Optional[int] = Field(None, description="ms since the epoch.")
    end: Optional[int] = Field(None, description="ms since the epoch.")
    maintainType: Optional[int] = Field(None, description="1 planned, 2 temporary, 3 incident.")
    serviceTypes: Optional[list[int]] = Field(None, description="1 trading, 2 HTTP trading, 3 WS trading, "
                                              "4 private WS stream, 5 market data.")
    product: Optional[list[int]] = Field(None, description="1 futures, 2 spot, 3 option, 4 spread.")
    href: Optional[str] = None
    active: bool = Field(description="Ongoing now (not only scheduled).")


class ExchangeStatus(BaseModel):
    subscribed: bool = Field(description="ingest holds Bybit's system.status topic.")
    error: Optional[str] = None
    notices: list[ExchangeNotice] = Field(description="Bybit's maintenance and incident notices in force "
                                          "(not past their end), by begin time.")


class StatusReport(BaseModel):
    overall: Literal["ok", "degraded"]
    processes: list[ProcessStatus]
    connections: list[ConnectionStatus]
    subscriptions: list[TopicStatus]
    database: Reachability
    broker: BrokerStatus
    rest: Optional[RestBan] = Field(None, description="ingest's Bybit REST client (account reconciliation); "
                                    "null when ingest has none (no API key) or does not report.")
    exchange: Optional[ExchangeStatus] = Field(None, description="Bybit's system status (its maintenance and "
                                               "incident notices) as ingest hears it; null when turned off "
                                               "(GW_EXCHANGE_STATUS=false) or ingest does not report.")
    instances: list[InstanceStatus] = Field(default_factory=list, description="Every gateway instance sharing "
                                            "this database, with the units it owns and since when.")
    unowned_units: list[str] = Field(default_factory=list, description="Units no live lease covers: their "
                                     "topics are published by nobody until an instance takes them.")
