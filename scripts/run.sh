#!/usr/bin/env bash
# Start supervisord in the foreground with the gateway's programs (make run / make demo).
# Reads settings the same way the processes do (environment, then .env) and refuses to
# start on a bad setting, naming it. Ctrl-C (or SIGTERM) stops every program in order.
set -euo pipefail
cd "$(dirname "$0")/.."
export GW_HOME=$(pwd)
export GW_PYTHON=${GW_PYTHON:-$GW_HOME/.venv/bin/python}
# One look at the settings (load_settings exits non-zero naming a bad one). In the demo
# (BYBIT_ENV=sim) with no Bybit keys set, the gateway takes the simulator's, so the private
# stream (orders, executions, positions, wallet) runs too.
settings_sh=$("$GW_PYTHON" - <<'PY'
import os, re, shlex, sys
from common.config import ConfigError, load_settings
try:
    s = load_settings()
except ConfigError as exc:
    sys.exit(f"ws-gateway: bad setting: {exc}")
print(f"bybit_env={s.bybit_env}")
print("export GW_RUN_DIR=" + shlex.quote(str(s.run_dir)))   # GW_RUN_DIR from the environment or .env
# supervisord's own settings, from the environment or .env like the rest
env = os.environ
print("export GW_LOG_DIR=" + shlex.quote(os.path.abspath(env.get("GW_LOG_DIR") or "logs")))
for name, default, pattern in (("GW_LOG_MAXBYTES", "50MB", r"\d+(KB|MB|GB)?"), ("GW_LOG_BACKUPS", "5", r"\d+")):
    value = env.get(name) or default
    if not re.fullmatch(pattern, value):
        sys.exit(f"ws-gateway: bad setting: {name}: {value!r} does not match {pattern}")
    print(f"export {name}={value}")
if s.bybit_env == "sim" and not s.has_private:
    print("export BYBIT_API_KEY=" + shlex.quote(os.environ.get("SIM_API_KEY") or "sim-key"))
    print("export BYBIT_API_SECRET=" + shlex.quote(os.environ.get("SIM_API_SECRET") or "sim-secret"))
PY
)
eval "$settings_sh"
export GW_SIM_AUTOSTART=$([ "$bybit_env" = sim ] && echo true || echo false)
export PROMETHEUS_MULTIPROC_DIR=$GW_RUN_DIR/metrics
mkdir -p "$GW_RUN_DIR" "$GW_LOG_DIR" "$GW_RUN_DIR/status"
chmod 0700 "$GW_RUN_DIR"
# Metrics files of a previous run describe dead processes: start clean.
rm -rf "$PROMETHEUS_MULTIPROC_DIR"; mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
if [ "$bybit_env" = sim ]; then "$GW_PYTHON" scripts/demo_seed.py; fi
echo "ws-gateway: BYBIT_ENV=$bybit_env, logs in $GW_LOG_DIR, API on http://${API_BIND:-127.0.0.1:4400}"
exec "$GW_HOME/.venv/bin/supervisord" -n -c "$GW_HOME/supervisord.conf"
