"""ingest's recorder: real files on disk, read back with the replay's reader."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bybitsim.replay import RecordingError, read_file, read_recording, recording_files
from common.config import ConfigError, load_settings
from ingest import recorder as recorder_mod
from ingest.recorder import Recorder
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
MB = 2 ** 20


def frame(i: int) -> bytes:
    # text with a newline and non-ASCII inside: the reader must go by length, not by lines
    return (b'{"topic":"publicTrade.BTCUSDT","ts":%d,"data":[{"i":"%d","note":"caf\xc3\xa9\\n"}]}' % (i, i)
            + (b"\n" if i % 7 == 0 else b""))


def make(tmp: Path, **kw) -> Recorder:
    args = {"rotate_bytes": 64 * MB, "rotate_s": 3600.0, "max_bytes": 256 * MB, "queue_bytes": 64 * MB}
    args.update(kw)
    return Recorder(tmp, **args)


def records_of(paths) -> list:
    return [(r.recv_ns, r.endpoint, r.conn, r.sock, r.raw) for r in read_recording(paths)]


def test_every_frame_comes_back_byte_for_byte_with_its_time_and_connection(tmp_path):
    rec = make(tmp_path)
    rec.start()
    sent = []
    for i in range(500):
        item = (1_700_000_000_000_000_000 + i * 1000, ("linear", "private")[i % 2], f"c-{i % 3}", i % 4, frame(i))
        sent.append(item)
        rec.record(*item)
    rec.close()
    assert records_of([tmp_path]) == sent
    st = rec.status()
    assert (st["records"], st["dropped"], st["files"], st["current_file"]) == (500, 0, 1, None)
    assert st["bytes"] == sum(p.stat().st_size for p in tmp_path.iterdir())
    # a closed file is a whole gzip file: any gzip tool reads it
    (path,) = recording_files([tmp_path])
    assert gzip.decompress(path.read_bytes()).count(b'"ep":"linear"') == 250


def test_files_rotate_by_size_and_each_reads_on_its_own(tmp_path):
    rec = make(tmp_path, rotate_bytes=20_000, max_bytes=100 * MB)
    rec.start()
    sent = []
    # compressed size grows with how often the writer sync-flushes, which is timing: write
    # until the third file is open instead of a count that makes three files only usually
    while rec.status()["files_created"] < 3:
        for i in range(len(sent), len(sent) + 500):     # batches, as a live feed gives the writer
            sent.append((i, "spot", "spot-1", 1, frame(i)))
            rec.record(*sent[-1])
        wait_for(lambda: rec.status()["queued"] == 0, 10, message="writer caught up")
        assert len(sent) < 200_000, "files never rotated"
    rec.close()
    files = recording_files([tmp_path])
    assert len(files) >= 3, files
    assert rec.status()["files_created"] == len(files)
    per_file = [records_of([f]) for f in files]
    assert all(per_file) and [r for part in per_file for r in part] == sent


def test_file_names_sort_as_the_files_were_made_across_second_boundaries():
    times = [1_764_806_399_999_999_999, 1_764_806_400_000_000_000, 1_764_806_400_000_000_001,
             1_764_806_400_999_999_998, 1_764_806_401_000_000_003, 1_764_892_800_123_456_789]
    names = [recorder_mod.file_name(ns, 4242) for ns in times]
    assert sorted(names) == names and len(set(names)) == len(names)
    assert names[0] == "frames-20251203T235959_999999999Z-4242.rec.gz"
    assert names[1] == "frames-20251204T000000_000000000Z-4242.rec.gz"


def test_an_idle_file_is_closed_whole_at_its_age_and_the_next_frame_opens_another(tmp_path):
    rec = make(tmp_path, rotate_s=0.5)
    rec.start()
    try:
        rec.record(1, "linear", "linear-1", 1, frame(1))
        wait_for(lambda: rec.status()["records"] == 1, 10, message="first frame written")
        first = recording_files([tmp_path])[0]
        wait_for(lambda: rec.status()["current_file"] is None, 10, message="file closed at its age")
        gzip.decompress(first.read_bytes())        # complete, trailer included
        rec.record(2, "linear", "linear-1", 1, frame(2))
        wait_for(lambda: rec.status()["records"] == 2, 10, message="second frame written")
        assert len(recording_files([tmp_path])) == 2
    finally:
        rec.close()
    assert [r[0] for r in records_of([tmp_path])] == [1, 2]


def _disk_bytes(path) -> int:
    """The files' sizes while the writer may delete one between the listing and its stat."""
    total = 0
    for p in path.iterdir():
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def test_total_size_is_bounded_oldest_files_deleted_first_and_counted(tmp_path):
    # files of an earlier run count too: the oldest of them goes first
    old = make(tmp_path, rotate_bytes=8_000, max_bytes=100 * MB)
    old.start()
    n_old = 0
    while old.status()["files_created"] < 4:     # by files made, not a count that usually makes four
        for i in range(n_old, n_old + 300):
            old.record(i, "linear", "linear-1", 1, frame(i))
        n_old += 300
        wait_for(lambda: old.status()["queued"] == 0, 10, message="writer caught up")
        assert n_old < 200_000, "files never rotated"
    old.close()
    before = recording_files([tmp_path])
    assert len(before) >= 4
    bound = sum(p.stat().st_size for p in before[2:]) + 1
    rec = make(tmp_path, rotate_bytes=8_000, max_bytes=bound)
    rec.start()
    assert recording_files([tmp_path]) == before[2:]      # the two oldest went at start
    assert rec.status()["files_deleted"] == 2
    end = n_old + 6000
    for i in range(n_old, end):
        rec.record(i, "linear", "linear-1", 1, frame(i))
        if i % 300 == 0:
            wait_for(lambda: rec.status()["queued"] == 0, 10, message="writer caught up")
            assert _disk_bytes(tmp_path) <= bound + 8_000 + 64 * 1024
    rec.close()
    st = rec.status()
    on_disk = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert on_disk <= bound and st["bytes"] == on_disk
    assert st["files_deleted"] > 2 and st["bytes_deleted"] > 0
    times = [r[0] for r in records_of([tmp_path])]
    # what is left is the newest part, whole and in order, ending with the last frame
    assert times == list(range(times[0], end)) and times[0] > n_old


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    """The writer not running stands for a disk that does not keep up: record() returns at
    once, frames past the queue's bound are dropped and counted, the rest are written later."""
    rec = make(tmp_path, queue_bytes=10 * (len(frame(0)) + recorder_mod.OVERHEAD))
    for i in range(25):
        rec.record(i, "linear", "linear-1", 1, frame(0))
    st = rec.status()
    assert (st["queued"], st["dropped"]) == (10, 15)
    rec.start()
    rec.close()
    assert [r[0] for r in records_of([tmp_path])] == list(range(10))
    assert rec.status()["dropped"] == 15 and rec.status()["records"] == 10


def test_a_write_error_is_counted_and_recording_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_mod, "RETRY_S", 0.3)
    target = tmp_path / "rec"
    rec = make(target, rotate_bytes=1, max_bytes=100 * MB)     # every batch goes to a new file
    rec.start()
    try:
        rec.record(1, "linear", "linear-1", 1, frame(1))
        wait_for(lambda: rec.status()["records"] == 1, 10, message="first frame written")
        wait_for(lambda: rec.status()["current_file"] is not None, 10, message="file open")
        moved = tmp_path / "moved"
        target.rename(moved)                                  # the directory is gone
        rec.record(2, "linear", "linear-1", 1, frame(2))
        wait_for(lambda: rec.status()["errors"] >= 1, 10, message="write error noticed")
        st = rec.status()
        assert st["dropped"] == 1 and "FileNotFoundError" in st["last_error"]
        target.mkdir()
        wait_for(lambda: rec.status()["queued"] == 0, 10)

        def written_again():     # frames before the retry time are dropped (counted); then written
            rec.record(3, "linear", "linear-1", 1, frame(3))
            return rec.status()["records"] >= 2

        wait_for(written_again, 10, interval=0.1, message="recording resumed")
    finally:
        rec.close()
    assert [r[0] for r in records_of([moved])] == [1]
    assert [r[0] for r in records_of([target])][0] == 3


KILLED_WRITER = """
import sys, time
from pathlib import Path
from ingest.recorder import Recorder
rec = Recorder(Path(sys.argv[1]), 64 << 20, 3600, 1 << 30, 64 << 20)
rec.start()
i = 0
while True:
    rec.record(i, "linear", "linear-1", 1, b'{"topic":"publicTrade.BTCUSDT","i":%d}' % i)
    i += 1
    if i % 100 == 0:
        time.sleep(0.005)
"""


def test_a_file_cut_short_by_kill_9_reads_up_to_its_last_complete_record(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], cwd=ROOT,
                            env={**os.environ}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # readable while it is being written (sync flushes), before any kill
        wait_for(lambda: recording_files([tmp_path]) and sum(1 for _ in read_recording([tmp_path])) >= 2000,
                 30, interval=0.1, message="2000 records readable from the live file")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    (path,) = recording_files([tmp_path])
    with pytest.raises(EOFError):
        gzip.decompress(path.read_bytes())          # no gzip trailer: the file was cut short
    got = [r.raw for r in read_file(path)]
    assert len(got) >= 2000
    assert got == [b'{"topic":"publicTrade.BTCUSDT","i":%d}' % i for i in range(len(got))]


def test_every_truncation_of_a_file_reads_as_a_prefix(tmp_path):
    rec = make(tmp_path)
    rec.start()
    for i in range(40):
        rec.record(i, "inverse", "inverse-1", 2, frame(i))
    rec.close()
    (path,) = recording_files([tmp_path])
    data = path.read_bytes()
    cut = tmp_path / "cut.rec.gz"
    seen = set()
    for n in range(0, len(data), 7):
        cut.write_bytes(data[:n])
        got = [r.recv_ns for r in read_file(cut)]
        assert got == list(range(len(got)))
        seen.add(len(got))
    assert 0 in seen and max(seen) >= 35


def test_what_is_not_a_recording_is_refused_naming_the_file(tmp_path):
    plain = tmp_path / "notes.rec.gz"
    plain.write_bytes(gzip.compress(b"hello\nworld\n"))
    with pytest.raises(RecordingError, match="notes.rec.gz: not a ws-gateway recording"):
        list(read_file(plain))
    raw = tmp_path / "raw.rec.gz"
    raw.write_bytes(b"not gzip at all")
    with pytest.raises(RecordingError, match="raw.rec.gz"):
        list(read_file(raw))
    with pytest.raises(RecordingError, match="no such file"):
        recording_files([tmp_path / "missing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecordingError, match="no .rec.gz files"):
        recording_files([empty])


def test_record_costs_the_read_loop_little_and_never_waits(tmp_path):
    """Measured, not bounded: how long record() takes per frame, printed for the log."""
    rec = make(tmp_path)
    rec.start()
    raw = frame(1)
    t = time.perf_counter()
    for i in range(50_000):
        rec.record(i, "linear", "linear-1", 1, raw)
    per_frame_us = (time.perf_counter() - t) / 50_000 * 1e6
    rec.close()
    print(f"record(): {per_frame_us:.2f} us per frame")
    assert rec.status()["records"] + rec.status()["dropped"] == 50_000


# -- settings --------------------------------------------------------------------------------
def test_recording_settings_default_off_and_parse():
    s = load_settings({})
    assert s.record_dir is None
    s = load_settings({"GW_RECORD_DIR": "/tmp/rec", "GW_RECORD_ROTATE_MB": "0.5", "GW_RECORD_ROTATE_S": "60",
                       "GW_RECORD_MAX_MB": "10", "GW_RECORD_QUEUE_MB": "8"})
    assert (s.record_dir, s.record_rotate_mb, s.record_rotate_s, s.record_max_mb, s.record_queue_mb) == \
        (Path("/tmp/rec"), 0.5, 60.0, 10.0, 8.0)
    rec = Recorder.from_settings(s)
    assert (rec.rotate_bytes, rec.max_bytes, rec.queue_bytes) == (MB // 2, 10 * MB, 8 * MB)


@pytest.mark.parametrize("env, setting", [
    ({"GW_RECORD_ROTATE_MB": "big"}, "GW_RECORD_ROTATE_MB"),
    ({"GW_RECORD_ROTATE_MB": "0"}, "GW_RECORD_ROTATE_MB"),
    ({"GW_RECORD_ROTATE_S": "0.1"}, "GW_RECORD_ROTATE_S"),
    ({"GW_RECORD_MAX_MB": "-1"}, "GW_RECORD_MAX_MB"),
    ({"GW_RECORD_ROTATE_MB": "100", "GW_RECORD_MAX_MB": "50"}, "GW_RECORD_MAX_MB"),
    ({"GW_RECORD_QUEUE_MB": "0"}, "GW_RECORD_QUEUE_MB"),
])
def test_bad_recording_settings_name_the_setting(env, setting):
    with pytest.raises(ConfigError, match=setting):
        load_settings(env)


def test_ingest_exits_naming_gw_record_dir_when_it_cannot_write_there(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {"GW_ENV_FILE": "", "PATH": "/usr/bin:/bin", "BYBIT_ENV": "sim", "GW_RUN_DIR": str(tmp_path / "run"),
           "GW_RECORD_DIR": str(blocker / "recordings")}
    out = subprocess.run([sys.executable, "-m", "ingest"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "GW_RECORD_DIR" in out.stdout + out.stderr
