"""Child process for the store fault tests: another process holding the SQLite
write lock, as a backup tool or a stray ``sqlite3`` shell would.

Run from the repository root::

    python -m tests.fault_child DB_PATH SECONDS

Opens DB_PATH, takes ``BEGIN EXCLUSIVE`` (in WAL mode: the write lock; readers
go on reading), writes ``locked`` to stdout, and holds the lock until SECONDS
have passed or its stdin is closed, whichever comes first; then rolls back and
exits 0. A test that must know the lock is gone waits for the exit.
"""

from __future__ import annotations

import select
import sqlite3
import sys


def main(path: str, seconds: float) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("BEGIN EXCLUSIVE")
    sys.stdout.write("locked\n")
    sys.stdout.flush()
    select.select([sys.stdin], [], [], seconds)  # readable at EOF: the parent closed our stdin
    db.execute("ROLLBACK")
    db.close()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
