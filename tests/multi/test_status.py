"""/api/v1/status's view of the instances (pure): state by heartbeat age, owned units, unowned ones."""
from __future__ import annotations

from datetime import datetime, timezone

from api.status import instance_list

T = datetime(2026, 12, 1, tzinfo=timezone.utc)


def row(iid: str, age: float | None, stopped=None) -> dict:
    return {"instance_id": iid, "host": "h", "api_bind": "127.0.0.1:4400", "pid": 1, "shards": 16, "capacity": 16,
            "private": True, "started_at": T, "heartbeat_at": T, "stopped_at": stopped, "heartbeat_age_s": age}


def test_instances_their_state_and_what_each_owns():
    leases = [("private", "a", 3, T, 8.5), ("shard-0of16", "a", 1, T, 9.0), ("shard-1of16", "b", 2, T, 7.25),
              ("shard-2of16", "c", 4, T, -0.5),          # c stopped renewing: expired, nobody's
              ("shard-3of16", None, 5, T, None)]         # released
    out, unowned = instance_list([row("a", 1.0), row("b", 2.0), row("c", 12.0), row("d", 0.5, stopped=T)],
                                 leases, 10.0)
    by = {i["instance_id"]: i for i in out}
    assert {k: v["state"] for k, v in by.items()} == {"a": "live", "b": "live", "c": "lost", "d": "stopped"}
    assert [o["unit"] for o in by["a"]["owns"]] == ["private", "shard-0of16"]
    assert by["b"]["owns"] == [{"unit": "shard-1of16", "epoch": 2, "since": T, "expires_in_s": 7.25}]
    assert by["c"]["owns"] == [] and by["d"]["owns"] == []
    assert unowned == ["shard-2of16", "shard-3of16"]
    assert "heartbeat_age_s" in by["a"] and by["a"]["heartbeat_age_s"] == 1.0
