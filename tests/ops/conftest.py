"""Fixtures for the operations tests: the e2e harness (a real supervisord) with the settings
each module needs."""
from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import gateway_stores  # noqa: F401  (a fixture, shared)


def log_lines(log_dir: Path) -> dict[str, list[str]]:
    """Every line of every log file (rotated ones too), by file name."""
    return {p.name: p.read_text(errors="replace").splitlines() for p in sorted(log_dir.glob("*.log*"))}


def not_json_lines(log_dir: Path, skip_files=("supervisord.log",)) -> list[str]:
    """Lines of the programs' log files that are not one JSON object with a ``process``."""
    bad = []
    for name, lines in log_lines(log_dir).items():
        if name.startswith(skip_files):
            continue
        for line in lines:
            try:
                ok = isinstance(obj := json.loads(line), dict) and bool(obj.get("process")) and bool(obj.get("event"))
            except ValueError:
                ok = False
            if not ok:
                bad.append(f"{name}: {line[:300]}")
    return bad
