#!/usr/bin/env bash
# Idempotent setup for `make run` and `make test` on a fresh Debian machine:
# Python venv and pinned requirements; PostgreSQL and RabbitMQ installed from
# Debian's packages when missing and started when stopped; database, role and
# migrations. Safe to run again at any time; each step checks before it acts.
#
# Usage: scripts/bootstrap.sh [DBNAME ...]   (default: wsgw)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
DB_USER=${DB_USER:-wsgw}
DB_PASS=${DB_PASS:-wsgw}
DBS=("$@"); [ ${#DBS[@]} -gt 0 ] || DBS=(wsgw)

log() { printf '[bootstrap] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

APT_UPDATED=0
apt_install() {
  if [ $APT_UPDATED = 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python -------------------------------------------------------------------
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  log "installing python3-venv"; apt_install python3-venv python3-pip
fi
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"; "$PY" -m venv "$VENV"
fi
# The pinned requirements and the project itself, editable with its dev and bench extras: every
# process, test and bench script then imports common, ingest, ... and tests.support by name.
# Redone when the lock or pyproject.toml changes (or the install went missing).
STAMP="$VENV/.requirements.sha"
WANT=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! (cd / && "$VENV/bin/python" -c 'import common, tests.support') 2>/dev/null; then
  log "installing requirements and the project (editable)"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt -e ".[dev,bench]"
  echo "$WANT" > "$STAMP"
fi

# `make unit` needs only Python: PYTHON_ONLY=1 stops here, whatever the services are doing.
if [ "${PYTHON_ONLY:-0}" = 1 ]; then log "python ready"; exit 0; fi

# --- PostgreSQL ---------------------------------------------------------------
pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing postgresql"; apt_install postgresql
fi
if ! pg_ready; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [ -z "$ver" ]; then log "no PostgreSQL cluster found"; exit 1; fi
  log "starting PostgreSQL $ver"
  as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || as_root pg_ctlcluster "$ver" main start
  for _ in $(seq 1 60); do pg_ready && break; sleep 0.5; done
  pg_ready || { log "PostgreSQL did not become ready"; exit 1; }
fi
psql_admin() { as_root runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" != 1 ]; then
  log "creating role $DB_USER"; psql_admin -c "CREATE ROLE $DB_USER LOGIN CREATEDB PASSWORD '$DB_PASS'"
fi
psql_admin -c "ALTER ROLE $DB_USER CREATEDB" >/dev/null   # tests create throwaway databases
for db in "${DBS[@]}"; do
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$db'")" != 1 ]; then
    log "creating database $db"; psql_admin -c "CREATE DATABASE \"$db\" OWNER $DB_USER"
  fi
  log "applying migrations to $db"
  "$VENV/bin/yoyo" apply --batch --no-config-file \
    --database "postgresql://$DB_USER:$DB_PASS@127.0.0.1:5432/$db" sql >/dev/null
done

# --- RabbitMQ -----------------------------------------------------------------
rmq_ready() { timeout 20 rabbitmqctl -q await_startup >/dev/null 2>&1; }
if ! command -v rabbitmqctl >/dev/null 2>&1; then
  log "installing rabbitmq-server"; apt_install rabbitmq-server
fi
if ! rmq_ready; then
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached || true
  for _ in $(seq 1 90); do rmq_ready && break; sleep 1; done
  rmq_ready || { log "RabbitMQ did not start"; exit 1; }
fi
for vhost in ${RMQ_VHOSTS:-/}; do
  if ! rabbitmqctl -q list_vhosts | grep -qx -- "$vhost"; then
    log "creating RabbitMQ vhost $vhost"; as_root rabbitmqctl -q add_vhost "$vhost"
  fi
  as_root rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
done
log "ready"
