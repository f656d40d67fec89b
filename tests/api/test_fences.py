"""The API's gunicorn patches are fenced: off by setting, or on a gunicorn release they were
not tested with, gunicorn runs as released and the API still serves."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from api import gunicorn_patches
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_patches_only_on_the_tested_release(monkeypatch):
    import gunicorn

    assert gunicorn_patches.patches_usable(True) == (True, "")
    assert gunicorn_patches.patches_usable(False)[0] is False
    monkeypatch.setattr(gunicorn, "__version__", "99.1.0")
    usable, why = gunicorn_patches.patches_usable(True)
    assert not usable and "99.1.0" in why


@pytest.mark.timeout(60)
def test_api_serves_with_the_patches_off(pg_url, short_tmp, fake_ingest, clean_db):
    port = free_port()
    (short_tmp / "metrics").mkdir()
    env = {"PATH": os.environ.get("PATH", ""), "GW_ENV_FILE": "", "DATABASE_URL": pg_url,
           "GW_RUN_DIR": str(short_tmp), "PROMETHEUS_MULTIPROC_DIR": str(short_tmp / "metrics"),
           "API_BIND": f"127.0.0.1:{port}", "GW_CONTROL_TIMEOUT_MS": "500", "API_GUNICORN_PATCHES": "off"}
    log_path = short_tmp / "api.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/health", timeout=1).status_code == 200, timeout=20,
                 message="gunicorn to answer /health")
        assert httpx.get(f"{base}/api/v1/subscriptions", timeout=5).status_code == 200
        long_url = httpx.get(f"{base}/api/v1/subscriptions", params={"symbol": "A" * 9000}, timeout=5)
        assert long_url.status_code == 414 and "json" not in long_url.headers.get("content-type", "")
        wait_for(lambda: "without the API's patches" in log_path.read_text(), 10, message="the reason logged")
    finally:
        proc.kill()
        proc.wait(timeout=10)
