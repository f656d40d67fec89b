"""What /api/v1/status reports, as pure functions over status files and rows.

Freshness is judged by what a topic type should send: ``orderbook.1`` re-sends its
snapshot every 3 s, tickers push every 50-100 ms, klines every 1-60 s; trades,
liquidations and private topics may legitimately be quiet. Last-event times reach
PostgreSQL through ingest's activity reports (every few seconds), hence the slack.
"""
from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from common.runtime import read_status

STALE_FILE_S = 10.0          # a status file older than this: the process is not reporting
ACTIVITY_SLACK_S = 10.0      # activity reports lag the stream by a few seconds
QUIET_AFTER_S = 60.0         # for may-be-quiet topics: fresh within this, quiet after
EXPECTED_PROCESSES = ("ingest", "publisher", "persister")


def expected_gap(channel: str, endpoint: str, depth: int | None) -> float | None:
    """Longest normal gap between two events of a topic, or None if it may be quiet."""
    if endpoint == "private" or channel in ("trades", "liquidation"):
        return None
    if channel == "tickers":
        return 1.0
    if channel == "orderbook":
        return 3.0 if depth == 1 else 5.0
    if channel == "kline":
        return 60.0
    return None


def freshness(channel: str, endpoint: str, depth: int | None, age_s: float | None) -> str:
    if age_s is None:
        return "none"
    gap = expected_gap(channel, endpoint, depth)
    if gap is None:
        return "fresh" if age_s <= QUIET_AFTER_S else "quiet"
    return "fresh" if age_s <= gap + ACTIVITY_SLACK_S else "stale"


def topic_status(row: dict, now: datetime, live_last: float | None = None,
                 delivery: tuple[float | None, float] | None = None) -> dict:
    """One live subscription; ``live_last`` is ingest's own last-event time (epoch s), if known.
    ``delivery``: (last time RabbitMQ confirmed one of the topic's events or None, since when
    the publisher has been counting) for a public topic, when the publisher reports it: then
    the age is judged on that alone, since what ingest reads may never reach consumers."""
    last = row.get("last_event_at")
    if delivery is not None and row["endpoint"] != "private":
        delivered, since = delivery
        ages = [now.timestamp() - (delivered if delivered is not None else since)]
    else:
        ages = [(now - last).total_seconds()] if last is not None else []
        if live_last is not None:
            ages.append(now.timestamp() - live_last)
    age = round(max(0.0, min(ages)), 3) if ages else None
    judged = freshness(row["channel"], row["endpoint"], row.get("depth"), age) if row["status"] == "active" else None
    out = {"id": row["id"], "endpoint": row["endpoint"], "topic": row["topic"], "status": row["status"],
           "last_event_age_s": age, "freshness": judged}
    if row.get("symbol_count") is not None or row.get("refused_topics") is not None:   # a whole-category row
        out.update(symbol_count=row.get("symbol_count"), refused_topics=row.get("refused_topics") or [])
    return out


def publisher_deliveries(files: dict[str, dict]) -> tuple[dict[str, float], float] | None:
    """({"endpoint:topic": last confirmed by RabbitMQ (epoch s), None if taken in but none
    confirmed yet}, since when it counts) from the publisher's status file; None when it has
    none (not written yet, or an older publisher).
    A publisher that stopped reporting keeps its last times: they grow old, as they should."""
    data = (files.get("publisher") or {}).get("data") or {}
    delivered, since = data.get("delivered"), data.get("started_at")
    if not isinstance(delivered, dict) or not isinstance(since, (int, float)) or isinstance(since, bool):
        return None
    return ({k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
             for k, v in delivered.items()}, float(since))


def subscription_list(rows: list[dict], now: datetime, files: dict[str, dict]) -> list[dict]:
    """Every live subscription with its age and freshness: public topics judged on what reached
    RabbitMQ (the publisher's file) when it says so, else on what ingest read."""
    live = ingest_last_events(files)
    deliveries = publisher_deliveries(files)
    out = []
    for r in rows:
        key = f"{r['endpoint']}:{r['topic']}"
        # a topic the publisher has not taken in yet (just subscribed): judged on what ingest read
        delivery = None if deliveries is None or key not in deliveries[0] else (deliveries[0][key], deliveries[1])
        out.append(topic_status(r, now, live.get(key), delivery))
    return out


def read_status_files(status_dir: Path, now: float | None = None) -> dict[str, dict]:
    """{process: {"age_s", "data"}} for every ``*.json`` in ``status_dir`` (data None if unreadable)."""
    now = time.time() if now is None else now
    out: dict[str, dict] = {}
    try:
        paths = sorted(status_dir.glob("*.json"))
    except OSError:
        return out
    for path in paths:
        try:
            age = now - path.stat().st_mtime
        except OSError:                 # vanished between glob and stat
            age = None
        out[path.stem] = {"age_s": None if age is None else round(max(age, 0.0), 3), "data": read_status(path)}
    return out


def _counts(data: dict) -> tuple[object, object]:
    """(buffered, dropped) in whatever shape each process keeps them (docs/internals.md)."""
    handoff = data.get("handoff")
    if isinstance(handoff, dict):                       # ingest: per downstream
        return ({k: v.get("buffered") for k, v in handoff.items() if isinstance(v, dict)},
                {k: v.get("dropped") for k, v in handoff.items() if isinstance(v, dict)})
    buffered = data.get("buffered")
    if buffered is None and isinstance(data.get("pending"), dict):   # persister: rows waiting
        buffered = {"pending": data["pending"], "spooled": data.get("spooled")}
    dropped = data.get("dropped")
    if dropped is None and "dead_letters" in data:
        dropped = {"dead_letters": data["dead_letters"]}
    return buffered, dropped


def process_list(files: dict[str, dict]) -> list[dict]:
    names = list(EXPECTED_PROCESSES) + sorted(set(files) - set(EXPECTED_PROCESSES))
    result = []
    for name in names:
        entry = files.get(name)
        if entry is None:
            result.append({"process": name, "reporting": False})
            continue
        age = entry["age_s"]
        buffered, dropped = _counts(entry["data"] or {})
        result.append({"process": name, "reporting": entry["data"] is not None and age is not None
                       and age <= STALE_FILE_S, "age_s": age, "buffered": buffered, "dropped": dropped})
    return result


def _as_connection(process: str, name: str, conn: dict) -> dict:
    item = {"process": process, **conn, "name": name}
    if "reconnects" not in item and isinstance(conn.get("connects"), int):
        item["reconnects"] = max(conn["connects"] - 1, 0)
    if isinstance(conn.get("up"), bool) and "state" not in conn:
        item["state"] = "up" if conn["up"] else "down"
    if "last_error" not in item and "error" in conn:
        item["last_error"] = conn["error"]
    if not isinstance(item.get("reconnects"), int) or isinstance(item.get("reconnects"), bool):
        item["reconnects"] = None
    for key in ("state", "last_error"):
        if item.get(key) is not None and not isinstance(item[key], str):
            item[key] = str(item[key])
    if item.get("last_error") == "":
        item["last_error"] = None
    return item


def connection_list(files: dict[str, dict]) -> list[dict]:
    """Bybit connections as ingest reports them, plus the publisher's broker link and
    the persister's database link."""
    result = []
    for process, entry in sorted(files.items()):
        data = entry["data"] or {}
        conns = data.get("connections")
        if isinstance(conns, dict):
            conns = [{"name": k, **(v if isinstance(v, dict) else {"state": v})} for k, v in conns.items()]
        for conn in conns if isinstance(conns, list) else []:
            if isinstance(conn, dict):
                name = conn.get("name") or conn.get("id") or conn.get("endpoint") or "?"
                result.append(_as_connection(process, str(name), conn))
        if process == "publisher" and isinstance(data.get("broker"), dict):
            # retention (applied or not) and topology restorations belong to the broker link
            extra = {k: data[k] for k in ("retention_policy", "topology") if isinstance(data.get(k), dict)}
            result.append(_as_connection(process, "rabbitmq", {**data["broker"], **extra}))
        if process == "persister" and isinstance(data.get("database"), dict):
            result.append(_as_connection(process, "postgresql", data["database"]))
    return result


def ingest_last_events(files: dict[str, dict]) -> dict[str, float]:
    """{"endpoint:topic": last event (epoch s)} from ingest's own file: fresher than
    PostgreSQL, which hears about activity every few seconds."""
    topics = ((files.get("ingest") or {}).get("data") or {}).get("topics")
    out = {}
    if isinstance(topics, dict):
        for key, value in topics.items():
            ms = value.get("last_event_ms") if isinstance(value, dict) else None
            if isinstance(ms, (int, float)) and not isinstance(ms, bool):
                out[key] = ms / 1000
    return out


def rest_ban(files: dict[str, dict], now: float | None = None) -> dict | None:
    """Bybit's REST ban (HTTP 403) as ingest's REST client reports it; None when ingest reports
    no REST client (no API key, or no status file)."""
    rec = ((files.get("ingest") or {}).get("data") or {}).get("reconciliation")
    rest = rec.get("rest") if isinstance(rec, dict) else None
    if not isinstance(rest, dict):
        return None
    until, bans = rest.get("banned_until"), rest.get("bans")
    until = until if isinstance(until, (int, float)) and not isinstance(until, bool) else None
    bans = bans if isinstance(bans, int) and not isinstance(bans, bool) else 0
    now = time.time() if now is None else now
    return {"banned": until is not None and until > now, "until": until, "bans": bans}


def exchange_status(files: dict[str, dict]) -> dict | None:
    """Bybit's maintenance and incident notices in force, as ingest reports them; None when
    ingest holds no system-status socket (turned off, or no status file)."""
    ex = ((files.get("ingest") or {}).get("data") or {}).get("exchange_status")
    if not isinstance(ex, dict):
        return None
    notices = [n for n in ex.get("notices") or [] if isinstance(n, dict) and isinstance(n.get("id"), str)]
    return {"subscribed": ex.get("subscribed") is True, "error": ex.get("error"), "notices": notices}


def overall(processes: list[dict], topics: list[dict], db_ok: bool, broker_ok: bool) -> str:
    healthy = (db_ok and broker_ok and all(p["reporting"] for p in processes)
               and not any(t["freshness"] == "stale" for t in topics))
    return "ok" if healthy else "degraded"


# -- instances (several gateways sharing one database) ------------------------------------------
INSTANCES_QUERY = """
SELECT instance_id, host, api_bind, pid, shards, capacity, private, started_at, heartbeat_at, stopped_at,
       extract(epoch FROM now() - heartbeat_at)::float8 FROM gateway_instances ORDER BY instance_id
"""
LEASES_QUERY = """
SELECT unit, owner, epoch, acquired_at, extract(epoch FROM expires_at - now())::float8 FROM gateway_leases
ORDER BY unit
"""
_INSTANCE_COLUMNS = ("instance_id", "host", "api_bind", "pid", "shards", "capacity", "private", "started_at",
                     "heartbeat_at", "stopped_at", "heartbeat_age_s")


def read_instances(conn) -> tuple[list[dict], list[tuple]]:
    """(instance rows, lease rows) as ``instance_list`` takes them; one short read each."""
    with conn.cursor() as cur:
        cur.execute(INSTANCES_QUERY)
        instances = [dict(zip(_INSTANCE_COLUMNS, r)) for r in cur.fetchall()]
        cur.execute(LEASES_QUERY)
        leases = cur.fetchall()
    return instances, leases


def instance_list(instances: list[dict], leases: list[tuple], ttl_s: float) -> tuple[list[dict], list[str]]:
    """Every instance that ever registered (live, stopped, or lost: no heartbeat for ``ttl_s``)
    with the units it owns now and since when; and the units no live lease covers."""
    owned: dict[str, list[dict]] = {}
    unowned = []
    for unit, owner, epoch, since, expires_in in leases:
        if owner is None or expires_in is None or expires_in <= 0:
            unowned.append(unit)
            continue
        owned.setdefault(owner, []).append({"unit": unit, "epoch": epoch, "since": since,
                                            "expires_in_s": round(expires_in, 3)})
    out = []
    for row in instances:
        age = row["heartbeat_age_s"]
        state = "stopped" if row["stopped_at"] is not None else ("live" if age is not None and age < ttl_s else "lost")
        out.append({**{k: row[k] for k in _INSTANCE_COLUMNS if k != "heartbeat_age_s"},
                    "heartbeat_age_s": None if age is None else round(age, 3), "state": state,
                    "owns": owned.get(row["instance_id"], [])})
    return out, unowned
