"""Throwaway stores on the shared services, so tests and bench runs never touch `make run`'s
data: a PostgreSQL database with every migration applied, a RabbitMQ vhost, and a private
PostgreSQL cluster on its own port that a test may stop and start."""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg2

from tests.support import ROOT, free_port

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://wsgw:wsgw@127.0.0.1:5432/postgres")
AMQP_BASE = os.environ.get("TEST_AMQP_BASE", "amqp://guest:guest@127.0.0.1:5672")


def _pg_admin(sql: str) -> None:
    conn = psycopg2.connect(PG_ADMIN_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def apply_migrations(url: str) -> None:
    from yoyo import get_backend, read_migrations

    backend = get_backend(url)
    migrations = read_migrations(str(ROOT / "sql"))
    with backend.lock():
        backend.apply_migrations(backend.to_apply(migrations))


def create_database(name: str) -> str:
    _pg_admin(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(name: str) -> None:
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_database():
    """A fresh database with every migration applied; dropped on exit."""
    name = f"wsgw_t_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        apply_migrations(url)
        yield url
    finally:
        drop_database(name)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@contextlib.contextmanager
def throwaway_vhost():
    """A fresh RabbitMQ vhost; deleted on exit."""
    vhost = f"wsgw-t-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
# initdb and pg_ctl run as the postgres user: a private cluster needs root and a server installation
CAN_RUN_CLUSTER = bool(INITDB) and os.geteuid() == 0


class Cluster:
    """A private PostgreSQL cluster (initdb + pg_ctl as postgres) on its own port, trust auth;
    stopping it leaves the shared server alone."""

    def __init__(self):
        self.bin = INITDB[-1].parent
        self.base = Path(tempfile.mkdtemp(prefix="wsgw-pg-", dir="/tmp"))
        pw = pwd.getpwnam("postgres")
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True,
                       capture_output=True, timeout=60)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.base / "pg.log"), "-w", "start")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass   # already stopped
        shutil.rmtree(self.base, ignore_errors=True)
