"""Event identity: the ``message_id`` every gateway event carries, derived from content.

An account fact has one id whatever the gateway saw it through (a WebSocket push, a REST
reconciliation, a replay from the spool, another instance), because the id is computed
from Bybit's business keys only, never from the push, the connection or the time the
gateway received it:

- executions: ``execId`` (unique per execution at Bybit).
- executions_fast (``execution.fast``, fewer fields, no fees): ``execId`` in a namespace of its
  own, so a fast record never takes the id of the full one a consumer must keep.
- order_status: the order's state: ``orderId`` with the fields that change as it moves
  (``updatedTime``, ``orderStatus``, ``cumExecQty``, ``leavesQty``, ``rejectReason``,
  ``cancelType``). The second ``Filled`` of a cancel/fill race differs in the last two.
- positions: (``category``, ``symbol``, ``positionIdx``) with ``updatedTime``, ``seq``,
  ``size`` and ``side``: the same position state pushed again (Bybit pushes one on every
  order create, amend or cancel) keeps its id.
- balances: wallet records carry no time of their own, so the version is the time Bybit
  stamped the push (``creationTime``) or the REST answer (``time``); with the content it
  gives the id. A later state equal to an earlier one (A -> B -> A) is a new fact.
- greeks: like balances (no time of their own): ``baseCoin``, the push's time and the content.

Pure: no I/O, no clock.
"""
from __future__ import annotations

import hashlib
from decimal import Decimal, InvalidOperation

import orjson

ORDER_STATE = ("orderId", "updatedTime", "orderStatus", "cumExecQty", "leavesQty", "rejectReason", "cancelType")
POSITION_STATE = ("category", "symbol", "positionIdx", "updatedTime", "seq", "size", "side")


class IdentityError(ValueError):
    """An account record without the business key its identity needs."""


def uuid8(prefix: bytes, payload: bytes = b"") -> str:
    """A deterministic UUID (RFC 9562 version 8) from BLAKE2b-128 of ``prefix`` [| ``payload``]."""
    h = hashlib.blake2b(prefix, digest_size=16)
    if payload:
        h.update(b"|")
        h.update(payload)
    d = bytearray(h.digest())
    d[6] = (d[6] & 0x0F) | 0x80      # version 8
    d[8] = (d[8] & 0x3F) | 0x80      # RFC 4122 variant
    x = d.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def derive_id(*parts: object, payload: bytes = b"") -> str:
    """The id of identifying content: one BLAKE2b hash (uuid5 would hash twice on the hot path)."""
    return uuid8("|".join(str(p) for p in parts).encode(), payload)


def digest(payload: bytes) -> str:
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def bybit_ms(value) -> int | None:
    """A time as Bybit writes it (an integer, or a string of digits) in ms; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _num(value):
    """``"0.020"`` and ``"0.02"`` are one quantity: REST and pushes format numbers differently."""
    if isinstance(value, str) and value:
        try:
            d = Decimal(value)
        except InvalidOperation:
            return value
        if d.is_finite():
            return format(d.normalize(), "f") if d else "0"
    return value


def _state(record: dict, names: tuple[str, ...], numeric: frozenset[str]) -> list:
    return [_num(record.get(k)) if k in numeric else record.get(k) for k in names]


_NUMERIC = frozenset({"cumExecQty", "leavesQty", "size"})


def _key(record: dict, name: str, cls: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise IdentityError(f"{cls}: record has no {name}")
    return value


def account_version(cls: str, record: dict, stamped_ms: int | None) -> int | None:
    """The version a consumer compares to keep the newest state (ms since the epoch).

    Executions and orders: Bybit's ``execTime`` / ``updatedTime``; positions: ``updatedTime``;
    balances: ``stamped_ms`` (the push's ``creationTime`` or the REST answer's time).
    """
    if cls in ("executions", "executions_fast"):
        return bybit_ms(record.get("execTime"))
    if cls in ("order_status", "positions"):
        return bybit_ms(record.get("updatedTime"))
    return stamped_ms


def account_event_id(cls: str, record: dict, stamped_ms: int | None = None) -> str:
    """``message_id`` of one account record of class ``cls``. Raises IdentityError."""
    if cls in ("executions", "executions_fast"):
        return derive_id(cls, _key(record, "execId", cls))
    if cls == "order_status":
        _key(record, "orderId", cls)
        return derive_id("order_status", *_state(record, ORDER_STATE, _NUMERIC))
    if cls == "positions":
        _key(record, "symbol", cls)
        return derive_id("positions", *_state(record, POSITION_STATE, _NUMERIC))
    if cls == "balances":
        if stamped_ms is None:
            raise IdentityError("balances: no version (push creationTime or REST time)")
        # Key order must not matter: REST and WS may list the same fields in another order.
        content = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        return derive_id("balances", record.get("accountType") or "", stamped_ms, digest(content))
    if cls == "greeks":
        if stamped_ms is None:
            raise IdentityError("greeks: no version (push creationTime)")
        content = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        return derive_id("greeks", _key(record, "baseCoin", cls), stamped_ms, digest(content))
    raise IdentityError(f"no account identity for class {cls!r}")
