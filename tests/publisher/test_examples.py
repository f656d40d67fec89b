"""The consumer examples, run briefly against the real broker."""
from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import pytest

from tests.publisher.conftest import ROOT, account_env, market_env
from tests.support import wait_for


def _run(args: list[str], url: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args, "--url", url], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(60)
def test_consume_shared_queue(publisher, broker, amqp_url):
    pub = publisher()
    for i in range(1, 31):
        pub.push(account_env(i))
    wait_for(lambda: broker.count("ws-gateway.order_status") == 30, timeout=10, message="30 queued")
    p = _run(["examples/consume_shared.py", "--event-class", "order_status", "--prefetch", "10",
              "--max-messages", "30"], amqp_url)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [line["stream_seq"] for line in lines] == list(range(1, 31))
    assert broker.count("ws-gateway.order_status") == 0

    # Ctrl-C while idle: a clean exit.
    p = _run(["examples/consume_shared.py", "--event-class", "order_status"], amqp_url)
    try:
        wait_for(lambda: broker.ch.queue_declare("ws-gateway.order_status", passive=True).method.consumer_count == 1,
                 timeout=10, message="consumer attached")
        p.send_signal(signal.SIGINT)
        _out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:       # never leave it consuming this session's queue for later tests
            p.kill()
            p.wait()
    assert p.returncode == 0 and '"consumed": 0' in err


@pytest.mark.timeout(60)
def test_consume_own_queue_with_a_pattern(publisher, broker, amqp_url):
    pub = publisher()
    p = _run(["examples/consume_own_queue.py", "--pattern", "trades.linear.#", "--max-messages", "40",
              "--idle-timeout", "20"], amqp_url)
    try:
        line = p.stderr.readline()                     # printed once the queue is bound
        assert orjson.loads(line)["patterns"] == ["trades.linear.#"]
        for i in range(1, 41):
            pub.push(market_env(i))
            pub.push(market_env(i, "kline"))           # not matched by the pattern
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 40 and {line["routing_key"] for line in lines} == {"trades.linear.BTCUSDT"}
