"""Client of the simulator's control API (``/__sim/...``), one method per operation.

The same methods exist on the object ``bybitsim.run_in_thread`` yields, so a test can
switch between an in-process simulator and one started under supervisord.
"""
from __future__ import annotations

import httpx

_UNSET = object()


class ControlMethods:
    """The hook methods; subclasses implement ``_call(op, payload)``."""

    def _call(self, op: str, payload: dict | None) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def state(self) -> dict:
        return self._call("state", None)

    def account(self) -> dict:
        return self._call("account", None)

    def drop(self, endpoint: str | None = None) -> dict:
        """Abort matching connections (TCP abort, no close frame); None = every endpoint."""
        return self._call("drop", {"endpoint": endpoint})

    def pong(self, endpoint: str | None = None, enabled: bool = True) -> dict:
        return self._call("pong", {"endpoint": endpoint, "enabled": enabled})

    def stall(self, endpoint: str | None = None, enabled: bool = True, current_only: bool = False) -> dict:
        """Matching connections stay open and send nothing (new ones too, unless current_only)."""
        return self._call("stall", {"endpoint": endpoint, "enabled": enabled, "current_only": current_only})

    def reject(self, topic: str, endpoint: str | None = None) -> dict:
        return self._call("reject", {"topic": topic, "endpoint": endpoint})

    def reject_mode(self, mode: str) -> dict:
        return self._call("reject_mode", {"mode": mode})

    def rate(self, rate: float | None = None, account_rate: float | None = None) -> dict:
        payload = {}
        if rate is not None:
            payload["rate"] = rate
        if account_rate is not None:
            payload["account_rate"] = account_rate
        return self._call("rate", payload)

    def book_gap(self, topic: str, endpoint: str) -> dict:
        return self._call("book_gap", {"topic": topic, "endpoint": endpoint})

    def book_reset(self, topic: str, endpoint: str) -> dict:
        return self._call("book_reset", {"topic": topic, "endpoint": endpoint})

    def auth(self, fail: bool = True) -> dict:
        return self._call("auth", {"fail": fail})

    def close_private(self, after_s: float | None) -> dict:
        return self._call("close_private", {"after_s": after_s})

    def reset(self) -> dict:
        return self._call("reset", {})

    def account_step(self, n: int = 1) -> dict:
        """Advance the account by ``n`` events at once (also while nothing is connected)."""
        return self._call("account_step", {"n": n})

    def transfer(self, amount: str, marks_at_ms: int | None = None) -> dict:
        """A transfer into the account (negative: out of it), pushed as a wallet update."""
        return self._call("transfer", {"amount": amount, **({"marks_at_ms": marks_at_ms} if marks_at_ms else {})})

    def rest_fault(self, kind: str, count: int = 1, path: str | None = None, **extra) -> dict:
        """Script REST errors for the next ``count`` calls (of ``path``): kind rate_limit
        (``reset_ms``: None = no reset header), timestamp, retcode (``ret_code``), http (``status``)."""
        return self._call("rest_fault", {"kind": kind, "count": count, "path": path, **extra})

    def status_notice(self, title: str, state: str = "ongoing", **fields) -> dict:
        """Post or update (same ``id``) a system.status notice; subscribers get it at once."""
        return self._call("status_notice", {"title": title, "state": state, **fields})

    def listing(self, category: str, action: str, symbol: str | None = None) -> dict:
        """Realistic listing (SIM_LISTING=realistic): ``action`` list or delist ``symbol`` now
        (None: a new coin's USDT pair, or a quiet symbol); the answer names it."""
        return self._call("listing", {"category": category, "action": action,
                                      **({"symbol": symbol} if symbol else {})})

    def rest_log(self) -> list[dict]:
        return self._call("rest_log", None)["calls"]


class SimControlError(RuntimeError):
    def __init__(self, status: int, body):
        super().__init__(f"control API answered {status}: {body}")
        self.status, self.body = status, body


class SimControl(ControlMethods):
    """``SimControl("http://127.0.0.1:8765")``: the control API over HTTP."""

    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def _call(self, op: str, payload: dict | None) -> dict:
        if payload is None:
            response = self._http.get(f"/__sim/{op}")
        else:
            response = self._http.post(f"/__sim/{op}", json=payload)
        body = response.json()
        if response.status_code != 200:
            raise SimControlError(response.status_code, body)
        return body

    def server_time(self) -> dict:
        return self._http.get("/v5/market/time").json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
