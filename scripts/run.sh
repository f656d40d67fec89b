#!/usr/bin/env bash
# Start supervisord in the foreground with the gateway's programs.
# Reads settings the same way the processes do (environment, then .env) and
# refuses to start on a bad setting, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."
export GW_HOME=$(pwd)
export GW_PYTHON=${GW_PYTHON:-$GW_HOME/.venv/bin/python}
export GW_RUN_DIR=${GW_RUN_DIR:-$GW_HOME/run}
export GW_LOG_DIR=${GW_LOG_DIR:-$GW_HOME/logs}
bybit_env=$("$GW_PYTHON" -c 'from common.config import load_settings; print(load_settings().bybit_env)')
export GW_SIM_AUTOSTART=$([ "$bybit_env" = sim ] && echo true || echo false)
export GW_LOG_MAXBYTES=${GW_LOG_MAXBYTES:-50MB} GW_LOG_BACKUPS=${GW_LOG_BACKUPS:-5}
export PROMETHEUS_MULTIPROC_DIR=$GW_RUN_DIR/metrics
mkdir -p "$GW_RUN_DIR" "$GW_LOG_DIR" "$GW_RUN_DIR/status"
# Metrics files of a previous run describe dead processes: start clean.
rm -rf "$PROMETHEUS_MULTIPROC_DIR"; mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
[ "$bybit_env" = sim ] && "$GW_PYTHON" scripts/demo_seed.py
echo "ws-gateway: BYBIT_ENV=$bybit_env, logs in $GW_LOG_DIR, API on ${API_BIND:-127.0.0.1:4400}"
exec "$GW_HOME/.venv/bin/supervisord" -n -c "$GW_HOME/supervisord.conf"
