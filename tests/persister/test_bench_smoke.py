"""The benchmark still runs (tiny sizes; the figures come from a full run)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.stores import PG_ADMIN_URL


@pytest.mark.timeout(120)
def test_bench_runs():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "persister_bench.py"), "--rows", "200", "--repeat", "1",
                          "--admin-url", PG_ADMIN_URL], check=True, capture_output=True, text=True, timeout=110)
    lines = out.stdout.splitlines()
    assert lines[0].split()[:2] == ["table", "batch"]
    assert [line.split()[0] for line in lines[1:]] == ["balances"] * 2 + ["orders"] * 2 + ["executions"] * 2 + [
        "reference"] * 2
