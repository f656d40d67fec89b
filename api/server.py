"""``python -m api``: check the settings, then exec gunicorn (no shell wrapper, so
supervisord's signals reach gunicorn's master directly)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from common.config import settings_or_exit
from common.logs import get_logger, setup_logging

CONF = Path(__file__).resolve().parent / "gunicorn_conf.py"


def main() -> int:
    settings = settings_or_exit("api")
    setup_logging("api", settings.log_level)
    log = get_logger("api.server")
    # Multiprocess metrics need the directory before any worker imports prometheus_client.
    metrics_dir = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or settings.run_dir / "metrics")
    metrics_dir.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    log.info("api_starting", bind=settings.api_bind, settings=settings.describe())
    argv = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "api:create_app()"]
    os.execv(sys.executable, argv)
    return 1  # not reached
