"""Recordings on the call store: one row per call, and the audit of listens.

A call record that names a recording (``recording_path``: a file Asterisk
wrote, or ``provider://account/id``) makes a *pending* job in the same
transaction as the record (``job_statements``), so a recording reported
before or long after its call attaches to it all the same: the job follows
the record. The collector fetches and transcodes due jobs; a job that keeps
failing ends *missing* with the reason, never silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from crm_bridge.store import Store
from gateway.record import iso

Statement = tuple[str, tuple[Any, ...]]

PENDING, READY, MISSING, PURGED, ERASED = "pending", "ready", "missing", "purged", "erased"
_COLUMNS = ("call_id, source, status, file, content_type, duration, size, peaks, attempts, next_attempt_at, error, "
            "created_at, updated_at")


@dataclass(frozen=True, slots=True)
class Recording:
    call_id: str
    source: str
    status: str
    file: str | None
    content_type: str | None
    duration: float | None
    size: int | None
    peaks: list[float] | None
    attempts: int
    next_attempt_at: float | None
    error: str | None
    created_at: float
    updated_at: float

    def public(self) -> dict[str, Any]:
        """What pages see (never the file name or the source)."""
        return {"status": self.status, "content_type": self.content_type, "duration": self.duration,
                "size": self.size, "peaks": self.peaks, "error": self.error if self.status == MISSING else None,
                "updated_at": iso(self.updated_at)}


def _recording(row: Sequence[Any]) -> Recording:
    values = list(row)
    values[7] = json.loads(values[7]) if values[7] else None
    return Recording(*values)


def job_statements(call_id: str, source: str, now: float) -> list[Statement]:
    """With a call's record: fetch its recording (again, if the source changed;
    never for a recording erased on request)."""
    return [(
        "INSERT INTO recordings (call_id, source, status, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES (?1, ?2, 'pending', 0, ?3, ?3, ?3) "
        "ON CONFLICT (call_id) DO UPDATE SET source = excluded.source, status = 'pending', attempts = 0, "
        "next_attempt_at = excluded.next_attempt_at, error = NULL, updated_at = excluded.updated_at "
        "WHERE recordings.source != excluded.source AND recordings.status NOT IN ('erased', 'purged')",
        (call_id, source, now),
    )]


class Recordings:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, call_id: str) -> Recording | None:
        rows = await self.store.read(f"SELECT {_COLUMNS} FROM recordings WHERE call_id = ?", (call_id,))
        return _recording(rows[0]) if rows else None

    async def due(self, now: float, limit: int = 20) -> list[Recording]:
        rows = await self.store.read(
            f"SELECT {_COLUMNS} FROM recordings WHERE status = 'pending' AND next_attempt_at <= ? "
            "ORDER BY next_attempt_at LIMIT ?", (now, limit))
        return [_recording(row) for row in rows]

    async def ready(self, call_id: str, source: str, *, file: str, content_type: str, duration: float, size: int,
                    peaks: Sequence[float], now: float) -> None:
        """The job is done (unless its source changed meanwhile: then it runs again)."""
        await self.store.write((
            "UPDATE recordings SET status = 'ready', file = ?, content_type = ?, duration = ?, size = ?, peaks = ?, "
            "error = NULL, next_attempt_at = NULL, updated_at = ? WHERE call_id = ? AND source = ? "
            "AND status = 'pending'",
            (file, content_type, duration, size, json.dumps([round(p, 3) for p in peaks]), now, call_id, source),
        ))

    async def failed(self, call_id: str, source: str, *, error: str, retry_at: float | None, now: float) -> None:
        """One more failed attempt: try again at ``retry_at``, or give up (None): missing."""
        status = "pending" if retry_at is not None else "missing"
        await self.store.write((
            "UPDATE recordings SET status = ?, attempts = attempts + 1, next_attempt_at = ?, error = ?, "
            "updated_at = ? WHERE call_id = ? AND source = ? AND status = 'pending'",
            (status, retry_at, error[:500], now, call_id, source),
        ))

    async def listened(self, call_id: str, login: str, *, at: float, size: int, range_: str | None,
                       remote: str | None) -> None:
        await self.store.write((
            "INSERT INTO recording_listens (call_id, login, at, bytes, range, remote) VALUES (?, ?, ?, ?, ?, ?)",
            (call_id, login, at, size, range_[:100] if range_ else None, remote),
        ))

    async def listens(self, *, since: float, limit: int = 1000) -> list[dict[str, Any]]:
        rows = await self.store.read(
            "SELECT call_id, login, at, bytes, range, remote FROM recording_listens WHERE at >= ? "
            "ORDER BY at DESC LIMIT ?", (since, limit))
        return [{"call_id": r[0], "login": r[1], "at": iso(r[2]), "bytes": r[3], "range": r[4], "remote": r[5]}
                for r in rows]
