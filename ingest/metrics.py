"""ingest's Prometheus metrics (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set)."""
from prometheus_client import Counter, Gauge

FRAMES = Counter("wsgw_ingest_frames_total", "Bybit data frames received", ["endpoint", "event_class"])
DROPPED = Counter("wsgw_ingest_dropped_total", "Frames dropped at the hand-off (downstream full)",
                  ["downstream", "event_class"])
BAD_FRAMES = Counter("wsgw_ingest_bad_frames_total", "Frames that could not be parsed or classified", ["endpoint"])
RECONNECTS = Counter("wsgw_ingest_reconnects_total", "Connections lost and reopened", ["endpoint"])
CONNECTS = Counter("wsgw_ingest_connects_total", "New WebSocket connections opened", ["endpoint"])
AUTH_FAILURES = Counter("wsgw_ingest_auth_failures_total", "Private stream authentication failures")
RESYNCS = Counter("wsgw_ingest_book_resyncs_total", "Order-book topics resubscribed after a gap", ["endpoint"])
SUB_FAILURES = Counter("wsgw_ingest_subscribe_failures_total", "Topics Bybit refused", ["endpoint"])
CONNECTED = Gauge("wsgw_ingest_connections_up", "Open and ready Bybit connections", ["endpoint"],
                  multiprocess_mode="livesum")
BUFFERED = Gauge("wsgw_ingest_handoff_buffered", "Frames waiting in ingest for a downstream", ["downstream"],
                 multiprocess_mode="livesum")
TASK_FAILURES = Counter("wsgw_ingest_task_failures_total",
                        "Long-lived ingest tasks that ended unexpectedly and were restarted, by kind", ["kind"])
ROTATION_DUPLICATES = Counter("wsgw_ingest_rotation_duplicates_total",
                              "Private pushes delivered by both sockets of a rotating connection, forwarded once")
REST_BANS = Counter("wsgw_ingest_rest_bans_total",
                    "HTTP 403 answers from Bybit's REST API (an IP ban): every REST call paused for GW_REST_BAN_S")
RECONCILIATIONS = Counter("wsgw_ingest_reconciliations_total", "REST reconciliations of the account, by result",
                          ["result"])

# Zero series for the rare events dashboards and alerts watch (a counter that was never
# incremented would be absent from /metrics, and rate() over it "no data", not 0).
from common.classify import MARKET_CLASSES as _MARKET  # noqa: E402

# what ingest supervises (ingest.supervise): connections, their sockets' reader and
# heartbeat, and the app's loops
TASK_KINDS = ("connection", "session", "sync", "report", "control", "reconcile", "downstreams")

for _cls in sorted(_MARKET):
    for _downstream in ("publisher", "persister"):
        DROPPED.labels(_downstream, _cls)
for _endpoint in ("spot", "linear", "inverse", "option", "private"):
    BAD_FRAMES.labels(_endpoint)
    SUB_FAILURES.labels(_endpoint)
for _kind in TASK_KINDS:
    TASK_FAILURES.labels(_kind)
for _result in ("done", "failed"):
    RECONCILIATIONS.labels(_result)
