"""Whole-category subscriptions: a row with symbol "*" (``tickers.*`` on linear) held as one topic
per symbol Bybit lists as trading in the category.

The table keeps the one row; ingest expands it. Each category's list comes from
``GET /v5/market/instruments-info`` (paged by cursor; spot in one page) and is fetched again
every ``category_refresh_s``, so listings are followed and delisted symbols let go. The
expansion joins the explicit topics in the desired set that ``Manager.converge`` applies, so
placement over connections, Bybit's limits and leases work for them as for any topic, and a
topic both an explicit row and an expansion want is held once and let go only when neither does.

What ingest writes back to the row (only the owner of the row's own shard writes it): ``status``
pending until the list is fetched and every topic of it has Bybit's answer, then active (topics
Bybit refused are counted and named in ``refused_topics``, not failing the whole); failed when
the list cannot be fetched and none was ever fetched (retried with back-off); ``symbol_count``.
A refresh that fails after a good fetch keeps the symbols of the last good one and says so in
``last_error``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import psycopg2

from common.logs import RateLimited, get_logger
from common.substatus import ACTIVE, FAILED, PENDING
from common.topics import PLAIN_SYMBOL_RE, WILDCARD, Topic, TopicError, build_topic
from ingest.rest import RestClient, RestError

log = get_logger(__name__)
INSTRUMENTS = "/v5/market/instruments-info"
PAGE_LIMIT = 1000                 # Bybit's maximum page; linear lists more than the default 500
MAX_PAGES = 50
RETRY_MIN_S = 2.0                 # a failed fetch is retried after this, doubling up to the refresh interval
CHECK_EVERY_S = 1.0               # how often row statuses are recomputed (and written when they changed)

ROWS_QUERY = """
SELECT id::text, channel, endpoint, category, symbol, depth, interval, topic, status, coalesce(trace_id, ''),
       last_error, symbol_count, refused_topics
FROM subscriptions WHERE symbol = '*' AND status IN ('pending', 'active', 'failed')
"""
WRITE_ROW = """
UPDATE subscriptions SET status = %s, last_error = %s, symbol_count = %s, refused_topics = %s,
       status_at = now(), updated_at = now()
WHERE id = %s AND status <> 'removed'
"""


# -- pure -----------------------------------------------------------------------------------------
def listed_symbols(records: list) -> list[str]:
    """The symbols of an instruments-info list that can be subscribed: status Trading and a plain
    symbol shape (anything else is skipped, never a reason to drop the whole list). Sorted, unique."""
    out = set()
    for rec in records:
        if not isinstance(rec, dict):
            continue
        sym, status = rec.get("symbol"), rec.get("status", "Trading")
        if status == "Trading" and isinstance(sym, str) and PLAIN_SYMBOL_RE.fullmatch(sym):
            out.add(sym)
    return sorted(out)


def expand(topic: Topic, symbols) -> tuple[dict[str, Topic], list[str]]:
    """({key: concrete topic} for a whole-category ``topic`` over ``symbols``, [symbols it refuses])."""
    topics, bad = {}, []
    for sym in symbols:
        try:
            t = topic.for_symbol(sym)
        except TopicError:
            bad.append(sym)
            continue
        topics[t.key] = t
    return topics, bad


def diff(old, new) -> tuple[list[str], list[str]]:
    """(listed now and not before, listed before and not now), each sorted."""
    old, new = set(old), set(new)
    return sorted(new - old), sorted(old - new)


def row_state(keys, states: dict[str, tuple[str, str | None]], listed: bool, fetch_error: str | None,
              owned=lambda key: True) -> tuple[str, list[str]]:
    """(status, refused topic names) of a whole-category row from the manager's state of its topics
    (``states``: key -> (status, error)). Topics of units another instance owns are not judged here."""
    if not listed:
        return (FAILED if fetch_error else PENDING), []
    refused, waiting = [], False
    for key in keys:
        if not owned(key):
            continue
        st = states.get(key)
        if st is None or st[0] == PENDING:
            waiting = True
        elif st[0] == FAILED:
            refused.append(key.split(":", 1)[1])
    return (PENDING if waiting else ACTIVE), sorted(refused)


def next_retry_s(failures: int, refresh_s: float) -> float:
    return min(refresh_s, RETRY_MIN_S * 2 ** max(0, failures - 1))


# -- state ------------------------------------------------------------------------------------------
@dataclass
class WholeRow:
    id: str
    topic: Topic
    trace_id: str
    stored: tuple            # (status, last_error, symbol_count, refused_topics) as read from the table
    written: tuple | None = None


@dataclass
class Listing:
    symbols: tuple[str, ...] | None = None     # None: never fetched
    fetched_at: float | None = None            # epoch seconds of the last good fetch
    due: float = 0.0                           # monotonic time of the next fetch
    failures: int = 0
    error: str | None = None                   # the last fetch's error (None after a good one)
    listed: list[str] = field(default_factory=list)      # the last refresh's changes, for status
    delisted: list[str] = field(default_factory=list)


def load_rows(database_url: str) -> list[tuple]:
    conn = psycopg2.connect(database_url, connect_timeout=5, application_name="ws-gateway-ingest-universe")
    try:
        with conn.cursor() as cur:
            cur.execute(ROWS_QUERY)
            return cur.fetchall()
    finally:
        conn.close()


class Universe:
    """Every whole-category row ingest knows, the category lists they need, their expansions."""

    def __init__(self, settings, mgr, request_sync, owns_row=lambda key: True, client: RestClient | None = None,
                 clock=time.monotonic):
        self.settings, self.mgr, self.request_sync, self.owns_row = settings, mgr, request_sync, owns_row
        self.refresh_s = settings.category_refresh_s
        self.client = client or RestClient(settings.rest_url, "", "", max_attempts=3, backoff_cap_s=2.0)
        self.clock = clock
        self.rows: dict[str, WholeRow] = {}
        self.lists: dict[str, Listing] = {}
        self._expanded: dict[str, dict[str, Topic]] = {}     # row key -> its concrete topics
        self._held: set[str] = set()                         # union of the expansions
        self._wake = asyncio.Event()
        self._warn = RateLimited(log, 30.0)

    # -- rows (from sync_loop) ----------------------------------------------------------------------
    @staticmethod
    def split(desired: dict) -> tuple[dict, dict]:
        """(whole-category entries, the rest) of a desired set as desired.load_desired reads it."""
        whole = {k: v for k, v in desired.items() if v[0].whole_category}
        return whole, {k: v for k, v in desired.items() if not v[0].whole_category}

    def set_rows(self, raw_rows: list[tuple]) -> list[tuple[str, str]]:
        """Take the table's whole-category rows (``ROWS_QUERY``); returns [(id, why)] of rows not valid."""
        rows, invalid = {}, []
        for sid, channel, endpoint, category, symbol, depth, interval, name, status, trace, error, count, refused \
                in raw_rows:
            try:
                topic = build_topic(channel, category, symbol, depth, interval)
            except TopicError as exc:
                invalid.append((sid, str(exc)))
                continue
            if topic.key != f"{endpoint}:{name}" or not topic.whole_category:
                invalid.append((sid, f"stored topic {endpoint}:{name} does not match its fields ({topic.key})"))
                continue
            old = self.rows.get(topic.key)
            row = WholeRow(sid, topic, trace, (status, error, count, list(refused) if refused is not None else None))
            if old is not None and old.id == sid:
                row.written = old.written
            rows[topic.key] = row
            if topic.category not in self.lists:
                self.lists[topic.category] = Listing()
                self._wake.set()
        for key in set(self.rows) - set(rows):
            log.info("whole_category_released", subscription=key, id=self.rows[key].id)
        for key in set(rows) - set(self.rows):
            log.info("whole_category_requested", subscription=key, id=rows[key].id,
                     trace_id=rows[key].trace_id or None)
        self.rows = rows
        for cat in [c for c in self.lists if not any(r.topic.category == c for r in rows.values())]:
            del self.lists[cat]          # nobody needs it: not fetched any more
        self._rebuild()
        return invalid

    def _rebuild(self) -> None:
        self._expanded = {}
        for key, row in self.rows.items():
            lst = self.lists.get(row.topic.category)
            if lst is not None and lst.symbols is not None:
                self._expanded[key] = expand(row.topic, lst.symbols)[0]
        self._held = {k for topics in self._expanded.values() for k in topics}

    def desired(self, base: dict) -> dict:
        """``base`` (explicit topics: key -> (topic, trace_id, stored status)) plus every expansion;
        an explicit row's entry wins for a topic both want (its status is stored in its row)."""
        out = dict(base)
        topics = self.mgr.topics
        for key, expansion in self._expanded.items():
            trace = self.rows[key].trace_id
            for k, t in expansion.items():
                if k not in out:
                    st = topics.get(k)
                    out[k] = (t, trace, st.status if st is not None else PENDING)
        return out

    def holds(self, key: str) -> bool:
        """Whether an expansion wants the topic ``key`` (an explicit row's removal must leave it)."""
        return key in self._held

    # -- the loop: fetch lists, write row statuses ----------------------------------------------------------
    async def run(self) -> None:
        while True:
            now = self.clock()
            for cat, lst in list(self.lists.items()):
                if now >= lst.due:
                    await self._fetch(cat, lst)
            await asyncio.to_thread(self._write_rows, self._row_states())
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), CHECK_EVERY_S)
            except asyncio.TimeoutError:
                pass

    async def _fetch(self, category: str, lst: Listing) -> None:
        try:
            symbols = tuple(await fetch_symbols(self.client, category))
        except (RestError, ValueError) as exc:
            lst.failures += 1
            lst.error = str(exc)[:300]
            lst.due = self.clock() + next_retry_s(lst.failures, self.refresh_s)
            self._warn("warning", "instrument_list_failed", category=category, error=lst.error,
                       failures=lst.failures, holding=len(lst.symbols) if lst.symbols is not None else None,
                       retry_in_s=round(lst.due - self.clock(), 1))
            return
        old = lst.symbols or ()
        lst.listed, lst.delisted = diff(old, symbols)
        first = lst.symbols is None
        lst.symbols, lst.fetched_at, lst.failures, lst.error = symbols, time.time(), 0, None
        lst.due = self.clock() + self.refresh_s
        if first or lst.listed or lst.delisted:
            log.info("instrument_list", category=category, symbols=len(symbols), listed=lst.listed[:20],
                     delisted=lst.delisted[:20], first=first)
            self._rebuild()
            self.request_sync()          # converge: subscribe the new, unsubscribe the delisted

    def _row_states(self) -> list[tuple[WholeRow, tuple]]:
        """[(row, (status, last_error, symbol_count, refused_topics))] to write: rows whose state changed."""
        states = {k: (st.status, st.error) for k, st in self.mgr.topics.items()}
        owned = (lambda k: self.mgr.lease_for(self._held_topic(k)) is not None)
        out = []
        for key, row in self.rows.items():
            if not self.owns_row(key):
                continue
            lst = self.lists.get(row.topic.category) or Listing()
            listed = lst.symbols is not None
            status, refused = row_state(self._expanded.get(key, {}), states, listed, lst.error, owned)
            if status == PENDING and listed and (row.written or row.stored)[0] == ACTIVE:
                status = ACTIVE          # a new listing being subscribed does not make the whole pending again
            error = lst.error if not listed else None
            if listed and lst.error:
                error = (f"instrument list refresh failed ({lst.error}); holding the {len(lst.symbols)} symbols "
                         f"listed at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(lst.fetched_at))}")
            count = len(self._expanded.get(key, {})) if listed else None
            want = (status, error, count, refused if listed else None)
            if want != (row.written or row.stored):
                out.append((row, want))
        return out

    def _held_topic(self, key: str) -> Topic:
        for expansion in self._expanded.values():
            t = expansion.get(key)
            if t is not None:
                return t
        raise KeyError(key)

    def _write_rows(self, changes: list[tuple[WholeRow, tuple]]) -> None:
        if not changes:
            return
        try:
            conn = psycopg2.connect(self.settings.database_url, connect_timeout=5,
                                    application_name="ws-gateway-ingest-universe")
        except psycopg2.Error as exc:
            self._warn("warning", "whole_category_status_unwritten", error=str(exc).strip()[:200])
            return
        try:
            with conn, conn.cursor() as cur:
                for row, (status, error, count, refused) in changes:
                    cur.execute(WRITE_ROW, (status, error, count, refused, row.id))
                    row.written = (status, error, count, refused)
                    log.info("whole_category_status", subscription=row.topic.key, id=row.id, status=status,
                             symbols=count, refused=len(refused or []), error=error, trace_id=row.trace_id or None)
        except psycopg2.Error as exc:
            self._warn("warning", "whole_category_status_unwritten", error=str(exc).strip()[:200])
        finally:
            conn.close()

    # -- reporting -------------------------------------------------------------------------------------
    def status(self) -> dict:
        lists = {cat: {"symbols": None if l.symbols is None else len(l.symbols), "fetched_at": l.fetched_at,
                       "error": l.error, "failures": l.failures, "listed": l.listed[:50], "delisted": l.delisted[:50]}
                 for cat, l in self.lists.items()}
        rows = {}
        for key, row in self.rows.items():
            state = row.written or row.stored
            rows[key] = {"id": row.id, "status": state[0], "symbol_count": state[2], "refused": state[3],
                         "error": state[1], "topics": len(self._expanded.get(key, {}))}
        return {"refresh_s": self.refresh_s, "lists": lists, "subscriptions": rows}

    def topic_entries(self, topics: dict) -> dict:
        """Status-file entries for the whole-category rows, their last event the newest of their topics'
        (so GET /api/v1/status judges a row on its busiest symbol, not on nothing)."""
        out = {}
        for key, expansion in self._expanded.items():
            last = max((topics[k]["last_event_ms"] or 0 for k in expansion if k in topics), default=0)
            state = self.rows[key].written or self.rows[key].stored
            out[key] = {"status": state[0], "error": state[1], "last_event_ms": last or None,
                        "symbols": len(expansion), "conn": None, "frames": None}
        return out

    async def close(self) -> None:
        await self.client.close()


async def fetch_symbols(client: RestClient, category: str, limit: int = PAGE_LIMIT) -> list[str]:
    """Every symbol listed as trading in ``category``: spot in one answer, the others page by cursor.
    Raises RestError (after the client's retries) or ValueError on an answer of the wrong shape."""
    records: list = []
    cursor = ""
    for _ in range(MAX_PAGES):
        params = {"category": category} if category == "spot" else \
            {"category": category, "limit": limit, "cursor": cursor or None}
        reply = await client.get(INSTRUMENTS, params, signed=False)
        page = reply.result.get("list")
        if not isinstance(page, list):
            raise ValueError(f"instruments-info {category}: result.list is {type(page).__name__}, not a list")
        records.extend(page)
        cursor = reply.result.get("nextPageCursor") or ""
        if not isinstance(cursor, str):
            raise ValueError(f"instruments-info {category}: nextPageCursor is {cursor!r}")
        if category == "spot" or not cursor or not page:
            return listed_symbols(records)
    raise ValueError(f"instruments-info {category}: more than {MAX_PAGES} pages")


class HeldByUniverse:
    """The manager as the control socket sees it: an explicit row's removal leaves a topic an
    expansion still wants, and a whole-category row's add or remove is a cue to converge (its
    topics come from the list, not from the message)."""

    def __init__(self, mgr, universe: Universe, request_sync):
        self._mgr, self._universe, self._sync = mgr, universe, request_sync

    def __getattr__(self, name):
        return getattr(self._mgr, name)

    def add(self, topic: Topic, trace_id: str = "") -> str | None:
        if topic.whole_category:
            self._sync(trace_id)
            return None
        return self._mgr.add(topic, trace_id)

    def remove(self, key: str, trace_id: str = "") -> bool:
        endpoint, _, name = key.partition(":")
        if name.endswith("." + WILDCARD):
            self._sync(trace_id)
            return True
        if self._universe.holds(key):
            log.info("topic_kept", topic=key, reason="a whole-category subscription holds it", trace_id=trace_id or None)
            return False
        return self._mgr.remove(key, trace_id)
