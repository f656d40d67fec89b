#!/bin/sh
# Container entrypoint: apply migrations, start clean metrics, exec supervisord.
set -eu
cd "${GW_HOME:-/app}"
export GW_SIM_AUTOSTART=$([ "${BYBIT_ENV:-mainnet}" = sim ] && echo true || echo false)
python scripts/migrate.py up
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR" "$GW_RUN_DIR/status" "$GW_LOG_DIR"
exec supervisord -n -c "$GW_HOME/supervisord.conf"
