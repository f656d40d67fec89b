"""Queue retention as RabbitMQ policies, never as queue x-arguments.

x-arguments are frozen at declaration: changing RETENTION_* later would make
every redeclare fail with 406 PRECONDITION_FAILED. A policy can be changed at
any time and RabbitMQ re-applies it to the queues live.

Two policies (the highest priority applies to a queue):

- ``ws-gateway-retention`` (pattern ``^ws-gateway\\.``, priority 10): every queue,
  ``message-ttl`` = RETENTION_TTL_MS, ``max-length`` = RETENTION_MAX_LENGTH,
  ``overflow`` drop-head (a market consumer that falls behind gets the newest data).
- ``ws-gateway-retention-account`` (the account queues, priority 20): the
  same TTL, ``max-length`` = RETENTION_ACCOUNT_MAX_LENGTH (by default the same
  bound as every other queue; it may only be raised), also drop-head. Always
  set, so lowering the setting again replaces an earlier, larger bound. Why not
  reject-publish: the queues are fed from one topic exchange, and a nack for one
  full queue makes the publisher re-send the event to every other bound queue
  too, so a single dead consumer would stall and duplicate account delivery for
  all the healthy ones. Account state of record is PostgreSQL (the persister is
  fed directly by ingest) and REST reconciliation, and the publisher warns as an
  account queue fills (see publisher/README.md).

Who sets them: the management HTTP API when RABBITMQ_MANAGEMENT_URL is set,
else ``rabbitmqctl set_policy -p <vhost>`` when that command works locally.
``apply`` reports failure instead of raising; the service alerts and retries.
"""
from __future__ import annotations

import asyncio
import shutil
from urllib.parse import quote, unquote, urlsplit

import orjson

from common import classify
from common.logs import get_logger

log = get_logger("publisher.retention")

POLICY = "ws-gateway-retention"
PATTERN = r"^ws-gateway\."
ACCOUNT_POLICY = "ws-gateway-retention-account"
# Built from the class list, so a new account class gets the account bound too.
ACCOUNT_PATTERN = r"^ws-gateway\.(" + "|".join(sorted(classify.ACCOUNT_CLASSES)) + ")$"   # names are [a-z_]


def policies(ttl_ms: int, max_length: int, account_max_length: int) -> list[dict]:
    """The policies to apply, in management-API shape (pure)."""
    def definition(length: int) -> dict:
        return {"message-ttl": ttl_ms, "max-length": length, "overflow": "drop-head"}

    return [
        {"name": POLICY, "pattern": PATTERN, "apply-to": "queues", "priority": 10,
         "definition": definition(max_length)},
        {"name": ACCOUNT_POLICY, "pattern": ACCOUNT_PATTERN, "apply-to": "queues", "priority": 20,
         "definition": definition(account_max_length)},
    ]


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


async def _via_management(mgmt_url: str, amqp_url: str, vhost: str, items: list[dict]) -> None:
    import httpx

    parts = urlsplit(mgmt_url)
    creds = parts if parts.username else urlsplit(amqp_url)
    auth = (unquote(creds.username or "guest"), unquote(creds.password or "guest"))
    base = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "") + parts.path.rstrip("/")
    async with httpx.AsyncClient(auth=auth, timeout=10.0) as client:
        for p in items:
            body = {k: p[k] for k in ("pattern", "definition", "priority", "apply-to")}
            r = await client.put(f"{base}/api/policies/{quote(vhost, safe='')}/{p['name']}", json=body)
            if r.status_code not in (200, 201, 204):
                raise RuntimeError(f"management API answered {r.status_code}: {r.text[:200]}")


async def _via_rabbitmqctl(cmd: str, vhost: str, items: list[dict]) -> None:
    for p in items:
        proc = await asyncio.create_subprocess_exec(
            cmd, "-q", "set_policy", "-p", vhost, "--priority", str(p["priority"]), "--apply-to", p["apply-to"],
            p["name"], p["pattern"], orjson.dumps(p["definition"]).decode(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("rabbitmqctl set_policy timed out") from None
        except asyncio.CancelledError:   # publisher stopping: leave no rabbitmqctl behind
            proc.kill()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl exited {proc.returncode}: {(err or out).decode(errors='replace')[:300]}")


async def apply(amqp_url: str, mgmt_url: str, ttl_ms: int, max_length: int,
                account_max_length: int) -> tuple[str, str]:
    """Apply the retention policies: (how, error); how is "management", "rabbitmqctl",
    or "none" with the reason in ``error`` (the queues then keep every message)."""
    vhost = vhost_of(amqp_url)
    items = policies(ttl_ms, max_length, account_max_length)
    try:
        if mgmt_url:
            await _via_management(mgmt_url, amqp_url, vhost, items)
            how = "management"
        elif cmd := shutil.which("rabbitmqctl"):
            await _via_rabbitmqctl(cmd, vhost, items)
            how = "rabbitmqctl"
        else:
            error = "neither RABBITMQ_MANAGEMENT_URL nor rabbitmqctl is available"
            log.warning("retention not enforced: set RABBITMQ_MANAGEMENT_URL or install rabbitmqctl",
                        policy=POLICY, vhost=vhost)
            return "none", error
    except Exception as exc:  # retention is best effort: publishing goes on without it
        log.warning("retention not enforced: could not set policy", policy=POLICY, vhost=vhost, error=str(exc))
        return "none", str(exc) or type(exc).__name__
    log.info("retention policy applied", how=how, vhost=vhost, ttl_ms=ttl_ms, max_length=max_length,
             account_max_length=account_max_length)
    return how, ""
