"""wsgw_ingest_frames_total is added in bulk from the per-topic frame count, not per frame."""
from __future__ import annotations

from common.topics import Topic
from ingest import manager


class _Metric:
    def __init__(self):
        self.value = 0

    def inc(self, n=1):
        self.value += n


def test_frame_metric_gets_exactly_the_frames_counted_since_the_last_flush():
    st = manager.TopicState(Topic("publicTrade", "linear", "publicTrade.BTCUSDT", "linear", "BTCUSDT"), "")
    st.metric = _Metric()
    st.frames += 3
    manager._count(st)
    manager._count(st)           # nothing new: nothing added
    st.frames += 2
    manager._count(st)
    assert st.metric.value == 5 == st.counted
