#!/usr/bin/env bash
# supervisorctl for the gateway started by `make run`: scripts/ctl.sh status | restart ingest | tail -f ingest
cd "$(dirname "$0")/.."
export GW_RUN_DIR=${GW_RUN_DIR:-$(pwd)/run}
exec .venv/bin/supervisorctl -c supervisord.conf "$@"
