"""The real loop in-process, stopped by its exit knobs instead of a signal."""
from __future__ import annotations

import pytest
import zmq

from common import addresses
from common.config import load_settings
from persister.pending import Pending
from persister.service import Persister, StopFlag
from persister.sink import PostgresSink
from persister.spool import RowSpool
from tests.persister.conftest import Pusher, frame


@pytest.mark.timeout(30)
def test_run_until_max_messages(own_pg_url, own_db, short_tmp):
    settings = load_settings({"DATABASE_URL": own_pg_url, "GW_RUN_DIR": str(short_tmp), "PERSISTER_BATCH_MS": "20"})
    settings.status_dir.mkdir(parents=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(addresses.persister_frames(short_tmp))
    pusher = Pusher(short_tmp)
    try:
        for i in range(10):
            f = frame("order")
            f["data"][0].update(orderId=f"loop-{i}")
            pusher.frame(f)
        app = Persister(settings, PostgresSink(own_pg_url), sock, Pending(RowSpool(short_tmp / "spool" / "p.jsonl")))
        app.run(StopFlag(), max_messages=10)
    finally:
        pusher.close()
        ctx.term()
    with own_db.cursor() as cur:
        cur.execute("SELECT count(*) FROM orders WHERE order_id LIKE 'loop-%%'")
        assert cur.fetchone()[0] == 10
    assert app.rows_written == {"orders": 10} and app.db_up is True
    assert addresses.status_file(short_tmp, "persister").exists()
