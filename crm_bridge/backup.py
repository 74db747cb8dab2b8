"""An online backup of the call store: a consistent copy of a live WAL
database, taken while the gateway writes (``cti-gateway backup``)."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BackupReport:
    pages: int
    steps: int
    schema_version: int
    calls: int
    problems: tuple[str, ...]  # PRAGMA integrity_check's complaints; empty when the copy is sound


def backup_store(source: Path, target: Path, *, pages: int, pause: float) -> BackupReport:
    """Copy a live WAL database with SQLite's online backup, ``pages`` at a time.

    The copy is one snapshot: a read transaction is held on the source for the
    whole copy, so the gateway's commits (into the WAL) neither block on it nor
    restart it, and the copy holds exactly what was committed when it began.
    It is written beside ``target``, switched to a rollback journal (one
    self-contained file), checked, and only then renamed over ``target``.
    """
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    steps = 0

    def paced(status: int, remaining: int, total: int) -> None:
        nonlocal steps
        steps += 1
        time.sleep(pause)

    try:
        problems, version, total, calls = _copy(source, partial, pages, paced)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if problems:
        partial.unlink()
    else:
        with partial.open("rb") as copy:
            os.fsync(copy.fileno())
        os.replace(partial, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
    return BackupReport(pages=total, steps=steps, schema_version=version, calls=calls, problems=problems)


def _copy(source: Path, partial: Path, pages: int,
          progress: Callable[[int, int, int], None]) -> tuple[tuple[str, ...], int, int, int]:
    """The copy and its check: (integrity problems, schema version, pages, calls)."""
    src = sqlite3.connect(source, isolation_level=None)
    try:
        src.execute("PRAGMA query_only = ON")
        src.execute("BEGIN")
        src.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # the snapshot starts here
        dst = sqlite3.connect(partial, isolation_level=None)
        try:
            src.backup(dst, pages=pages, progress=progress)
            src.execute("COMMIT")
            dst.execute("PRAGMA journal_mode = DELETE")
            problems = tuple(row[0] for row in dst.execute("PRAGMA integrity_check")
                             if row[0] != "ok")
            version = int(dst.execute("PRAGMA user_version").fetchone()[0])
            total = int(dst.execute("PRAGMA page_count").fetchone()[0])
            calls = int(dst.execute("SELECT count(*) FROM calls").fetchone()[0]) if not problems else 0
        finally:
            dst.close()
    finally:
        src.close()
    return problems, version, total, calls
