"""ZeroMQ endpoints. The consumer of each stream binds (a stable endpoint); the
producer connects, so either side can restart without the other noticing."""
from __future__ import annotations

from pathlib import Path


def publisher_frames(run_dir: Path) -> str:
    """ingest PUSH -> publisher PULL (binds): market frames (and, from senders other than ingest,
    anything)."""
    return f"ipc://{run_dir}/publisher.frames"


def publisher_priority(run_dir: Path) -> str:
    """ingest PUSH -> the publisher's same PULL socket (binds it too): account frames and system
    events on a pipe of their own, which ZeroMQ reads in turn with the frames pipe, so they never
    wait behind a backlog of market frames."""
    return f"ipc://{run_dir}/publisher.priority"


def persister_frames(run_dir: Path) -> str:
    """ingest PUSH -> persister PULL (binds): account frames, subscription status, activity."""
    return f"ipc://{run_dir}/persister.frames"


def ingest_control(run_dir: Path) -> str:
    """api DEALER -> ingest ROUTER (binds): subscription changes, answered with acks."""
    return f"ipc://{run_dir}/ingest.control"


def status_file(run_dir: Path, process: str) -> Path:
    """Where each process writes its live state (JSON, replaced atomically) for /api/v1/status."""
    return run_dir / "status" / f"{process}.json"
