"""REST records -> the shape of the WebSocket push of the same class.

A consumer reads one shape of ``data`` per event class, whatever the source. Bybit's REST
answers differ from its pushes in a few fields:

- the record has no ``category`` (the answer names it once): added;
- positions call the entry price ``avgPrice`` (``entryPrice`` in the push), and REST has
  been seen spelling ``mmrSysUpdateTime``: both renamed;
- REST-only fields (``basePrice`` on orders, ``execFeeV2`` on executions) are removed;
- push-only fields that REST cannot tell are present with ``null`` (``WS_ONLY``), so every
  key a consumer reads exists; ``source`` says the record came from REST.

Pure: records in, new records out (the input is not changed).
"""
from __future__ import annotations

WS_ONLY = {
    "execution": ("execPnl", "isLeverage", "marketUnit"),
    "order": ("brokerOrderPrice", "closedPnl", "feeCurrency", "rpiMatchedQty", "rpiTakerAccess",
              "slippageTolerance", "slippageToleranceType"),
    "position": (),
    "wallet": (),
}
REST_ONLY = {"execution": ("execFeeV2",), "order": ("basePrice",), "position": (), "wallet": ()}
RENAMED = {"position": {"avgPrice": "entryPrice", "mmrSysUpdateTime": "mmrSysUpdatedTime"}}


def base_topic(topic: str) -> str:
    """``order.linear`` -> ``order``; ``execution.fast.spot`` -> ``execution``."""
    return topic.split(".", 1)[0]


def ws_shape(topic: str, record: dict, category: str | None) -> dict:
    """One REST record of ``topic`` in the shape of its WebSocket push."""
    base = base_topic(topic)
    out: dict = {}
    if base != "wallet" and category is not None:
        out["category"] = category
    renamed = RENAMED.get(base, {})
    drop = REST_ONLY.get(base, ())
    for key, value in record.items():
        if key in drop:
            continue
        key = renamed.get(key, key)
        if key in out and key != "category":
            continue        # both spellings present: keep the push's name's value
        out[key] = value
    if base == "position" and "entryPrice" in record:
        out["entryPrice"] = record["entryPrice"]
    for key in WS_ONLY.get(base, ()):
        out.setdefault(key, None)
    return out
