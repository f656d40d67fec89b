"""One fault's measured outcome, and the Markdown table of many (bench/faults.py, bench/soak.py)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Result:
    fault: str
    detected_by: str = ""
    detect_s: float | None = None
    recovered_s: float | None = None
    target_s: float | None = None
    recovery_what: str = ""
    market_gaps: int = 0
    market_dropped: int = 0
    account_missing: dict = field(default_factory=dict)
    settle_s: float | None = None
    missing_examples: dict = field(default_factory=dict)
    ledger: dict = field(default_factory=dict)
    error: str = ""

    @property
    def account_ok(self) -> bool:
        return not self.error and not any(self.account_missing.values())

    @property
    def recovery_ok(self) -> bool:
        if self.error:
            return False
        return self.target_s is None or (self.recovered_s is not None and self.recovered_s <= self.target_s)

    @property
    def ok(self) -> bool:
        return self.account_ok and self.recovery_ok


def table(results: list[Result]) -> list[str]:
    """Markdown rows, one per fault."""
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    lines = ["| fault | detected by | detect s | recovered s (target) | recovery measured | market gaps / drops "
             "| account missing | ledger: fills (each once) / deliveries / repeats | settle s | ok |",
             "|---|---|---:|---:|---|---:|---|---:|---:|---|"]
    for r in results:
        target = f" (≤ {r.target_s:g})" if r.target_s is not None else ""
        missing = ", ".join(f"{k} {v}" for k, v in r.account_missing.items()) or "none"
        lg = r.ledger or {}
        ledger = (f"{lg.get('exec_ids')} / {lg.get('deliveries')} / {lg.get('duplicate_deliveries')}"
                  if lg.get("deliveries") is not None else "-")
        what = r.recovery_what + (f" — ERROR {r.error}" if r.error else "") + \
            (f" — missing e.g. {r.missing_examples}" if r.missing_examples else "")
        lines.append(f"| {r.fault} | {r.detected_by} | {f(r.detect_s)} | {f(r.recovered_s)}{target} | {what} "
                     f"| {r.market_gaps} / {r.market_dropped} | {missing} | {ledger} | {f(r.settle_s)} | "
                     f"{'PASS' if r.ok else 'FAIL'} |")
    return lines
