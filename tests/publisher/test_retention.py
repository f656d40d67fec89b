"""Queue retention against the real broker and the real publisher process: the bounds
asked for (24 h or 100,000 messages, every queue), the account setting, bad settings,
and retention that cannot be applied (an alert, then retried until it is)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from common import classify
from tests.publisher.conftest import ROOT, account_env, market_env
from tests.publisher.test_topology import metric, queue_policies, rabbitmq_item
from tests.support import wait_for
from tests.support.stores import rabbitmqctl

POLICIES = ("ws-gateway-retention", "ws-gateway-retention-account")


def policy_defs(vhost: str) -> dict[str, dict]:
    rows = orjson.loads(rabbitmqctl("list_policies", "-p", vhost, "--formatter", "json"))
    return {p["name"]: orjson.loads(p["definition"]) for p in rows if p["name"] in POLICIES}


def clear_policies(vhost: str) -> None:
    for name in POLICIES:
        try:
            rabbitmqctl("clear_policy", "-p", vhost, name)
        except subprocess.CalledProcessError:   # not set
            pass


def applied(pub) -> bool:
    return pub.status()["retention_policy"]["applied"]


@pytest.mark.timeout(120)
def test_every_queue_24h_or_100k_and_a_raised_account_bound_on_existing_queues(publisher, broker, amqp_vhost):
    clear_policies(amqp_vhost)
    pub = publisher()
    wait_for(lambda: applied(pub), timeout=60, message="retention applied")
    assert policy_defs(amqp_vhost) == {name: {"message-ttl": 86_400_000, "max-length": 100_000,
                                              "overflow": "drop-head"} for name in POLICIES}
    assert pub.stop() == 0

    # The queues exist now. New bounds must not make their redeclare fail (a policy, no
    # x-arguments): same connection from start to end, and the bounds act on the old queues.
    pub = publisher(RETENTION_MAX_LENGTH=50, RETENTION_ACCOUNT_MAX_LENGTH=120)
    wait_for(lambda: applied(pub), timeout=60, message="retention re-applied")
    defs = policy_defs(amqp_vhost)
    assert defs["ws-gateway-retention"]["max-length"] == 50
    assert defs["ws-gateway-retention-account"]["max-length"] == 120
    policies = queue_policies(amqp_vhost)
    for cls in classify.EVENT_CLASSES:
        expected = "ws-gateway-retention-account" if cls in classify.ACCOUNT_CLASSES else "ws-gateway-retention"
        assert policies[classify.queue_name(cls)] == expected, cls
    for i in range(1, 201):
        pub.push(account_env(i, "execution"))
        pub.push(market_env(i))
    wait_for(lambda: pub.total("confirmed") >= 400, timeout=30, message="all confirmed")
    wait_for(lambda: broker.count("ws-gateway.executions") == 120 and broker.count("ws-gateway.trades") == 50,
             timeout=10, message="queues at their bounds")
    kept = [b["stream_seq"] for _m, _p, b in broker.drain("ws-gateway.executions", 120)]
    assert kept == list(range(81, 201))          # drop-head: the newest stay
    st = pub.status()
    assert st["broker"]["connects"] == 1 and "channel closed" not in pub.log()
    assert st["retention_policy"]["max_length"] == 50 and st["retention_policy"]["account_max_length"] == 120
    assert pub.stop() == 0

    # Back to the defaults: the larger account bound is replaced, not left behind.
    pub = publisher()
    wait_for(lambda: applied(pub), timeout=60, message="retention re-applied")
    assert policy_defs(amqp_vhost)["ws-gateway-retention-account"]["max-length"] == 100_000
    assert pub.status()["broker"]["connects"] == 1
    assert pub.stop() == 0


@pytest.mark.parametrize("env, message", [
    ({"RETENTION_ACCOUNT_MAX_LENGTH": "lots"}, "RETENTION_ACCOUNT_MAX_LENGTH: expected an integer, got 'lots'"),
    ({"RETENTION_ACCOUNT_MAX_LENGTH": "0"}, "RETENTION_ACCOUNT_MAX_LENGTH: 0 is outside"),
    ({"RETENTION_ACCOUNT_MAX_LENGTH": "50000"}, "RETENTION_ACCOUNT_MAX_LENGTH: 50000 is below RETENTION_MAX_LENGTH"),
    ({"RETENTION_MAX_LENGTH": "500", "RETENTION_ACCOUNT_MAX_LENGTH": "400"},
     "RETENTION_ACCOUNT_MAX_LENGTH: 400 is below RETENTION_MAX_LENGTH (500)"),
])
def test_bad_retention_setting_stops_the_publisher_naming_it(short_tmp, amqp_url, env, message):
    proc = subprocess.run([sys.executable, "-m", "publisher"], cwd=ROOT, capture_output=True, timeout=60,
                          env={**os.environ, "GW_ENV_FILE": "", "RABBITMQ_URL": amqp_url, "GW_RUN_DIR": str(short_tmp),
                               **env})
    assert proc.returncode == 2
    line = orjson.loads(proc.stderr.strip().splitlines()[-1])
    assert line["event"] == "bad_setting" and line["error"].startswith(message), line
    assert not (short_tmp / "status" / "publisher.json").exists()


@pytest.mark.timeout(120)
def test_retention_that_cannot_be_applied_is_an_alert_and_is_retried(publisher, broker, amqp_vhost, short_tmp):
    """No RABBITMQ_MANAGEMENT_URL and no rabbitmqctl on the PATH: the queues run without
    retention. That is in the status file (and the API's), a gauge and one system event;
    once rabbitmqctl is installed, a retry applies the policies."""
    clear_policies(amqp_vhost)
    bindir = short_tmp / "bin"
    bindir.mkdir()
    path = [str(bindir)] + [d for d in os.environ["PATH"].split(os.pathsep)
                            if d and not (Path(d) / "rabbitmqctl").exists()]
    pub = publisher(PATH=os.pathsep.join(path), RETENTION_MAX_LENGTH=77_777)
    wait_for(lambda: pub.status()["retention_policy"]["attempts"] >= 2, timeout=30, message="a retry")
    st = pub.status()
    rp = st["retention_policy"]
    assert st["retention"] == "none" and rp["applied"] is False and "rabbitmqctl" in rp["error"]
    assert rp["next_attempt_in_s"] is not None
    wait_for(lambda: metric(short_tmp, "wsgw_publisher_retention_not_applied") == 1, timeout=5, message="gauge 1")
    api_view = rabbitmq_item(short_tmp)["retention_policy"]
    assert api_view["applied"] is False and api_view["error"] == rp["error"]
    assert policy_defs(amqp_vhost) == {}

    # An operator installs rabbitmqctl: a later attempt applies the policies.
    tool = bindir / "rabbitmqctl"
    tool.write_text("#!/bin/sh\nexec /usr/sbin/rabbitmqctl \"$@\"\n")
    tool.chmod(0o755)
    wait_for(lambda: applied(pub), timeout=60, message="retention applied on a retry")
    assert pub.status()["retention"] == "rabbitmqctl"
    assert policy_defs(amqp_vhost)["ws-gateway-retention"]["max-length"] == 77_777
    wait_for(lambda: metric(short_tmp, "wsgw_publisher_retention_not_applied") == 0, timeout=5, message="gauge 0")

    system = [(m.routing_key, b["data"]) for m, _p, b in broker.drain("ws-gateway.system", None, timeout=5)]
    not_applied = [d for k, d in system if k == "system.retention_not_applied"]
    assert len(not_applied) == 1, system          # once, not per attempt
    assert "rabbitmqctl" in not_applied[0]["error"] and not_applied[0]["max_length"] == 77_777
    assert [d["failed_attempts"] for k, d in system if k == "system.retention_applied"] == \
        [pub.status()["retention_policy"]["attempts"] - 1]
    assert "queues have no retention" in pub.log()
    assert pub.stop() == 0
