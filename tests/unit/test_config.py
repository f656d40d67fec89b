import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import ConfigError, load_settings, unknown_settings

ROOT = Path(__file__).resolve().parents[2]

BASE = {"BYBIT_ENV": "sim"}


def test_defaults_point_at_mainnet():
    s = load_settings({})
    assert s.bybit_env == "mainnet"
    assert s.ws_public_base == "wss://stream.bybit.com/v5/public"
    assert s.ws_private_url == "wss://stream.bybit.com/v5/private"
    assert not s.has_private


def test_sim_env_points_at_the_simulator():
    s = load_settings({"BYBIT_ENV": "sim", "SIM_PORT": "9001"})
    assert s.ws_public_base == "ws://127.0.0.1:9001/v5/public"
    assert s.rest_url == "http://127.0.0.1:9001"


def test_demo_takes_public_data_from_mainnet():
    s = load_settings({"BYBIT_ENV": "demo"})
    assert s.ws_public_base.startswith("wss://stream.bybit.com/")
    assert s.ws_private_url == "wss://stream-demo.bybit.com/v5/private"


def test_url_overrides_win():
    s = load_settings({"BYBIT_ENV": "testnet", "BYBIT_WS_PUBLIC_URL": "ws://127.0.0.1:1/v5/public/"})
    assert s.ws_public_base == "ws://127.0.0.1:1/v5/public"


@pytest.mark.parametrize("env, setting", [
    ({"BYBIT_ENV": "prod"}, "BYBIT_ENV"),
    ({"SIM_PORT": "eighty"}, "SIM_PORT"),
    ({"SIM_PORT": "70000"}, "SIM_PORT"),
    ({"GW_PING_INTERVAL_S": "-1"}, "GW_PING_INTERVAL_S"),
    ({"GW_PING_INTERVAL_S": "20", "GW_DEAD_AFTER_S": "10"}, "GW_DEAD_AFTER_S"),
    ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
    ({"RABBITMQ_URL": "amqp://"}, "RABBITMQ_URL"),
    ({"BYBIT_API_KEY": "k"}, "BYBIT_API_KEY"),
    ({"BYBIT_MAX_ACTIVE_TIME": "5s"}, "BYBIT_MAX_ACTIVE_TIME"),
    ({"BYBIT_MAX_ACTIVE_TIME": "11m"}, "BYBIT_MAX_ACTIVE_TIME"),
    ({"GW_LOG_LEVEL": "loud"}, "GW_LOG_LEVEL"),
    ({"API_BIND": "no port"}, "API_BIND"),
    ({"GW_BACKOFF_MAX_S": "60"}, "GW_BACKOFF_MAX_S"),
    ({"PUBLISHER_BACKOFF_MAX_S": "0"}, "PUBLISHER_BACKOFF_MAX_S"),
    ({"PUBLISHER_BACKOFF_MAX_S": "31"}, "PUBLISHER_BACKOFF_MAX_S"),
])
def test_bad_settings_are_named(env, setting):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value).startswith(setting)


def test_secrets_never_in_repr_or_describe():
    s = load_settings({"BYBIT_API_KEY": "KEY123", "BYBIT_API_SECRET": "SECRET456", "API_KEY": "APIKEY789",
                       "DATABASE_URL": "postgresql://u:dbpass@h/db"})
    text = repr(s) + str(s.describe())
    for secret in ("KEY123", "SECRET456", "APIKEY789", "dbpass"):
        assert secret not in text
    assert s.describe()["database_url"] == "postgresql://u:***@h/db"


def test_the_table_names_each_setting_of_a_bad_value_and_its_bounds():
    # a plain setting read by walking the table keeps the parser's message
    with pytest.raises(ConfigError, match=r"^PERSISTER_BATCH_MS: 0 is outside \[1, 60000\]$"):
        load_settings({"PERSISTER_BATCH_MS": "0"})
    with pytest.raises(ConfigError, match=r"^GW_SHARD_CAPACITY: 5 is outside \[0, 4\]$"):
        load_settings({"GW_SHARDS": "4", "GW_SHARD_CAPACITY": "5"})
    with pytest.raises(ConfigError, match=r"^GW_LEASE_RENEW_S: 11.0 is outside \[0.2, 10.0\]$"):
        load_settings({"GW_LEASE_TTL_S": "30", "GW_LEASE_RENEW_S": "11"})
    with pytest.raises(ConfigError, match=r"^GW_INSTANCE_ID: '-x' must be 1-64 letters"):
        load_settings({"GW_INSTANCE_ID": "-x"})


def test_derived_defaults_follow_the_settings_they_come_from():
    s = load_settings({"GW_SHARDS": "4", "GW_LEASE_TTL_S": "3", "RETENTION_MAX_LENGTH": "7"})
    assert (s.shard_capacity, s.lease_renew_s, s.retention_account_max_length) == (4, 1.0, 7)
    with pytest.raises(ConfigError, match="^RETENTION_ACCOUNT_MAX_LENGTH: 5 is below RETENTION_MAX_LENGTH"):
        load_settings({"RETENTION_MAX_LENGTH": "10", "RETENTION_ACCOUNT_MAX_LENGTH": "5"})
    with pytest.raises(ConfigError, match="^GW_RECORD_MAX_MB: 0.25 is below GW_RECORD_ROTATE_MB"):
        load_settings({"GW_RECORD_ROTATE_MB": "0.5", "GW_RECORD_MAX_MB": "0.25"})
    s = load_settings({"PUBLISHER_FAST_PATH": "OFF", "GW_EXCHANGE_STATUS": "false", "GW_LOG_LEVEL": "debug"})
    assert (s.publisher_fast_path, s.exchange_status, s.log_level) == (False, False, "DEBUG")


def test_unknown_variables_with_a_gateway_prefix_are_found_with_the_closest_setting():
    env = {"PUBLISHER_BUFER": "5", "GW_FROBNICATE": "1", "PUBLISHER_BUFFER": "5", "HOME": "/root",
           "GW_HOME": "/app", "SIM_SEED": "1", "RABBITMQ_USER": "gw", "gw_run_dir": "x", "API_KY": "k"}
    assert unknown_settings(env) == [("API_KY", "API_KEY"), ("GW_FROBNICATE", None),
                                     ("PUBLISHER_BUFER", "PUBLISHER_BUFFER")]
    assert unknown_settings({"DATABASE_URL": "x", "PATH": "/bin"}) == []


def test_unknown_variables_are_warned_once_per_process_by_name_never_by_value():
    """A real process: the settings loaded, logging set up, the warning asked for twice."""
    code = ("from common.config import settings_or_exit\n"
            "from common.logs import setup_logging\n"
            "s = settings_or_exit('probe')\n"
            "setup_logging('probe', s.log_level)\n"
            "print(s.warn_unknown_env(), s.warn_unknown_env(), flush=True)\n")
    env = {"PATH": os.environ["PATH"], "GW_ENV_FILE": "", "PUBLISHER_BUFER": "value-one-7f3a",
           "BYBIT_API_SECRT": "value-two-9c1e"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    warnings = [line for line in lines if line.get("event") == "unknown_settings"]
    assert len(warnings) == 1, done.stdout
    assert warnings[0]["level"] == "warning" and warnings[0]["process"] == "probe"
    assert warnings[0]["names"] == ["BYBIT_API_SECRT", "PUBLISHER_BUFER"]
    assert warnings[0]["did_you_mean"] == {"BYBIT_API_SECRT": "BYBIT_API_SECRET", "PUBLISHER_BUFER": "PUBLISHER_BUFFER"}
    assert "value-one" not in done.stdout + done.stderr and "value-two" not in done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "['BYBIT_API_SECRT', 'PUBLISHER_BUFER'] []"


def _first_line_with(proc: subprocess.Popen, stream, event: str, deadline_s: float) -> dict | None:
    """The first JSON line of ``stream`` whose event is ``event`` (None if the process ends or
    the deadline passes first); the lines are read by a thread so the wait has a deadline."""
    import queue
    import threading
    import time

    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream] + [lines.put(None)], daemon=True).start()
    deadline = time.monotonic() + deadline_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith("{") and (doc := json.loads(line)).get("event") == event:
            return doc
    return None


@pytest.mark.integration
@pytest.mark.parametrize("argv, on_stderr", [
    (["-m", "ingest"], False),
    (["-m", "publisher"], False),
    (["-m", "persister"], False),
    (["-m", "ops"], True),
    (["-c", "from common.logs import setup_logging; setup_logging('api')\n"
           "from api import create_app; create_app()"], False),
])
def test_each_process_warns_about_unknown_variables_at_start(argv, on_stderr, tmp_path):
    """The processes themselves, pointed at nothing (port 1), so they only get as far as starting."""
    env = {"PATH": os.environ["PATH"], "GW_ENV_FILE": "", "GW_RUN_DIR": str(tmp_path),
           "DATABASE_URL": "postgresql://wsgw@127.0.0.1:1/wsgw", "RABBITMQ_URL": "amqp://g:g@127.0.0.1:1/%2F",
           "PUBLISHER_BUFER": "value-three-5d2b", "GW_INSTANCE_ID": "unknown-settings-probe"}
    (tmp_path / "status").mkdir()
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = _first_line_with(proc, proc.stderr if on_stderr else proc.stdout, "unknown_settings", 60)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert line is not None and line["names"] == ["PUBLISHER_BUFER"], line
    assert line["did_you_mean"] == {"PUBLISHER_BUFER": "PUBLISHER_BUFFER"}
    assert "value-three" not in json.dumps(line)
