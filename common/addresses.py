"""ZeroMQ endpoints. The consumer of each stream binds (a stable endpoint); the
producer connects, so either side can restart without the other noticing."""
from __future__ import annotations

from pathlib import Path


def publisher_frames(run_dir: Path) -> str:
    """ingest PUSH -> publisher PULL (binds): market frames and the book snapshots ingest makes to
    heal a book (the publisher takes any envelope here; tools and benches push everything here)."""
    return f"ipc://{run_dir}/publisher.frames"


def publisher_priority(run_dir: Path) -> str:
    """ingest and ops PUSH -> the publisher's second PULL (binds): account frames, REST results and
    system events, read first and even while market intake waits, so they never queue behind
    market frames."""
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
