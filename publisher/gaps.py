"""Stream gap detection over ingest's per-stream sequence numbers.

ingest numbers the frames of each (endpoint, topic) 1, 2, 3 ... within an epoch
(one ingest run). Here we watch those numbers and describe what consumers
missed, as ``stream_gap`` details for a ``system`` event:

- ``seq_jump``: within an epoch a frame's seq is not last + 1; frames
  ``missing_from .. missing_to`` never reached us (dropped by ingest's hand-off,
  lost in a dead process's socket buffers, ...).
- ``ingest_restarted``: a new epoch began; every stream open in the old one was
  blind from its last frame (``from_time``) to the first envelope of the new
  epoch (``to_time``).
- ``publisher_restarted``: the same, across a restart of this process, using the
  state saved by ``snapshot()``; the saved seq may lag by up to a second, so the
  range is an upper bound.

Pure: no I/O and no clock; times come from the envelopes.
"""
from __future__ import annotations

from publisher.events import iso_utc

MAX_RETIRED_EPOCHS = 64


class GapTracker:
    def __init__(self) -> None:
        # stream key -> [last_seq, last_recv_ns, endpoint, topic]
        self._streams: dict[str, list] = {}
        self.epoch = ""
        self._restored = False          # state came from a previous run of this process
        self._retired: list[str] = []
        self.stale = 0                  # envelopes from an epoch that has ended
        self.out_of_order = 0           # seq <= last within an epoch

    def __len__(self) -> int:
        return len(self._streams)

    def observe_epoch(self, epoch: str, recv_ns: int) -> list[dict]:
        """Call for every envelope (any kind); returns gap details when a new epoch begins."""
        if not epoch or epoch == self.epoch:
            return []
        if epoch in self._retired:
            self.stale += 1
            return []
        gaps = []
        if self.epoch:
            reason = "publisher_restarted" if self._restored else "ingest_restarted"
            for key, (last, last_ns, endpoint, topic, *_) in self._streams.items():
                gaps.append({"stream": key, "endpoint": endpoint, "topic": topic, "reason": reason,
                             "old_epoch": self.epoch, "new_epoch": epoch, "last_seq": last,
                             "from_time": iso_utc(last_ns), "to_time": iso_utc(recv_ns)})
            self._retired = (self._retired + [self.epoch])[-MAX_RETIRED_EPOCHS:]
        self._streams.clear()
        self.epoch = epoch
        self._restored = False
        return gaps

    def observe(self, endpoint: str, topic: str, epoch: str, seq: int, recv_ns: int) -> list[dict]:
        """Call for every ``frame`` envelope; returns gap details (empty when in sequence)."""
        gaps = self.observe_epoch(epoch, recv_ns)
        if epoch and epoch != self.epoch:
            return gaps   # a late envelope of an ended epoch
        key = f"{endpoint}:{topic}"
        state = self._streams.get(key)
        if state is None:
            self._streams[key] = [seq, recv_ns, endpoint, topic]
            return gaps
        last, last_ns = state[0], state[1]
        if seq <= last:
            self.out_of_order += 1
            return gaps
        if seq != last + 1:
            reason = "publisher_restarted" if len(state) > 4 else "seq_jump"
            gaps.append({"stream": key, "endpoint": endpoint, "topic": topic, "reason": reason,
                         "epoch": epoch, "missing_from": last + 1, "missing_to": seq - 1,
                         "missing": seq - 1 - last, "from_time": iso_utc(last_ns), "to_time": iso_utc(recv_ns)})
        self._streams[key] = [seq, recv_ns, endpoint, topic]
        return gaps

    def snapshot(self) -> dict:
        """State to save (JSON-able), restored by ``restore`` after a restart."""
        return {"epoch": self.epoch, "streams": {k: v[:4] for k, v in self._streams.items()}}

    def restore(self, state: dict) -> None:
        """Continue from a saved snapshot: gaps across our own restart become visible."""
        self.epoch = str(state.get("epoch") or "")
        self._streams = {}
        for key, value in (state.get("streams") or {}).items():
            last, last_ns, endpoint, topic = value
            # A fifth element marks "restored, not seen since" for the reason of the first gap.
            self._streams[key] = [int(last), int(last_ns), str(endpoint), str(topic), True]
        self._restored = bool(self._streams)
