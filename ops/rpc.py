"""supervisord's XML-RPC interface over its unix socket, with a timeout.

supervisor's own transport connects without one: a supervisord that does not answer would
hang the eventlistener (and the container's health command) for good.
"""
from __future__ import annotations

import os
import socket
import xmlrpc.client
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from common.addresses import status_file
from ops import liveness

RPC_ERRORS = (OSError, xmlrpc.client.Error, liveness.LivenessError)


def server_url(run_dir: Path) -> str:
    """supervisord sets SUPERVISOR_SERVER_URL for its children; others derive it from the
    run directory (supervisord.conf: ``file=%(ENV_GW_RUN_DIR)s/supervisor.sock``)."""
    return os.environ.get("SUPERVISOR_SERVER_URL") or f"unix://{run_dir}/supervisor.sock"


class _UnixConnection(UnixStreamHTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socketfile)


class _Transport(SupervisorTransport):
    def __init__(self, serverurl: str, timeout_s: float):
        super().__init__(None, None, serverurl)
        if serverurl.startswith("unix://"):
            def get_connection():
                conn = _UnixConnection("localhost", timeout=timeout_s)
                conn.socketfile = serverurl[len("unix://"):]
                return conn
            self._get_connection = get_connection


class Supervisor:
    def __init__(self, serverurl: str, timeout_s: float = 5.0):
        self.url = serverurl
        self._transport = _Transport(serverurl, timeout_s)
        self._proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", self._transport)

    def _call(self, method: str, *args):
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except Exception:
            self._transport.close()      # a half-read answer must not poison the next call
            raise

    def programs(self) -> dict[str, liveness.Program]:
        """Every process supervisord runs (eventlisteners included), with its configuration."""
        return liveness.programs_from_rpc(self._call("getAllProcessInfo"), self._call("getAllConfigInfo"))

    def signal(self, program: liveness.Program, signame: str) -> None:
        self._call("signalProcess", program.rpc_name, signame)

    def close(self) -> None:
        self._transport.close()


def read_beats(run_dir: Path, programs=liveness.STATUS_PROGRAMS) -> dict[str, liveness.Beat]:
    """The status files that exist, as Beats (a missing or unreadable file is skipped)."""
    beats = {}
    for name in programs:
        path = status_file(run_dir, name)
        try:
            mtime = path.stat().st_mtime
            raw = path.read_bytes()
        except OSError:
            continue
        beats[name] = liveness.parse_beat(raw, mtime)
    return beats
