#!/bin/sh
# Container entrypoint: apply migrations, start with clean metrics, exec supervisord in the
# foreground as PID 1 (it reaps children; SIGTERM stops every program in priority order).
set -eu
cd "${GW_HOME:-/app}"
: "${GW_RUN_DIR:?}" "${GW_LOG_DIR:?}" "${PROMETHEUS_MULTIPROC_DIR:?}"
PY=${GW_PYTHON:-python}
if [ "${BYBIT_ENV:-mainnet}" = sim ]; then
  export GW_SIM_AUTOSTART=true
  # The demo's private stream: the simulator's keys unless keys were given.
  if [ -z "${BYBIT_API_KEY:-}" ] && [ -z "${BYBIT_API_SECRET:-}" ]; then
    export BYBIT_API_KEY="${SIM_API_KEY:-sim-key}" BYBIT_API_SECRET="${SIM_API_SECRET:-sim-secret}"
  fi
else
  export GW_SIM_AUTOSTART=false
fi
"$PY" scripts/migrate.py up
if [ "$GW_SIM_AUTOSTART" = true ]; then "$PY" scripts/demo_seed.py; fi
# Metrics files of a previous run describe dead processes.
rm -rf "$PROMETHEUS_MULTIPROC_DIR"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR" "$GW_RUN_DIR/status" "$GW_LOG_DIR"
chmod 0700 "$GW_RUN_DIR"
exec supervisord -n -c "${GW_HOME:-/app}/supervisord.conf"
