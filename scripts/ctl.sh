#!/usr/bin/env bash
# supervisorctl for the gateway started by `make run`:
#   scripts/ctl.sh status | restart ingest | tail -f ingest | tail -f ops stderr
# `stop all` and `restart all` here stop in dependency order (api, ingest, then the
# ZeroMQ binders publisher and persister, then the simulator), as supervisord's own
# shutdown does; plain `supervisorctl stop all` signals every program at once.
cd "$(dirname "$0")/.."
export GW_RUN_DIR=${GW_RUN_DIR:-$(pwd)/run}
ctl=.venv/bin/supervisorctl
[ -x "$ctl" ] || ctl=supervisorctl
ctl() { "$ctl" -c supervisord.conf "$@"; }
ordered_stop() {
  local rc=0
  for group in api ingest "publisher persister" simulator; do
    # shellcheck disable=SC2086  # a group is one or more program names
    ctl stop $group || rc=$?
  done
  return $rc
}
case "${1:-} ${2:-}" in
  "stop all") ordered_stop ;;
  "restart all") ordered_stop; ctl start all ;;
  *) ctl "$@" ;;
esac
