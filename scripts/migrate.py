"""Apply every pending migration, or revert only the last applied one.

    python scripts/migrate.py up   [--database URL]
    python scripts/migrate.py down [--database URL]

`yoyo rollback --batch` without a revision reverts *every* applied migration;
`make migrate-down` must revert only the last, so this uses yoyo's Python API.
The database defaults to DATABASE_URL, then the wsgw database of `make run`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from yoyo import get_backend, read_migrations

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
DEFAULT_URL = "postgresql://wsgw:wsgw@127.0.0.1:5432/wsgw"


def up(url: str) -> list[str]:
    backend = get_backend(url)
    migrations = read_migrations(str(SQL_DIR))
    with backend.lock():
        todo = backend.to_apply(migrations)
        backend.apply_migrations(todo)
    return [m.id for m in todo]


def down(url: str) -> list[str]:
    """Revert the most recently applied migration (none when nothing is applied)."""
    backend = get_backend(url)
    migrations = read_migrations(str(SQL_DIR))
    with backend.lock():
        applied = backend.to_rollback(migrations)   # newest first
        last = list(applied)[:1]
        backend.rollback_migrations(last)
    return [m.id for m in last]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("direction", choices=("up", "down"))
    parser.add_argument("--database", default=os.environ.get("DATABASE_URL") or DEFAULT_URL)
    args = parser.parse_args(argv)
    done = up(args.database) if args.direction == "up" else down(args.database)
    verb = "applied" if args.direction == "up" else "reverted"
    print(f"{verb}: {', '.join(done) if done else 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
