"""Interactions: what KPI points are summed from, on the call store.

Those counted from calls (``gateway.kpi.call_credits``) are written with the
call's record, keyed by (kind, call, agent), so a record handled twice counts
once. Those people record (a meeting) are keyed by the client's request id, so
a retried POST records one interaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.kpi import Credit
from gateway.record import iso

from .store import Store

Statement = tuple[str, tuple[Any, ...]]

MAX_NOTE = 500
_INSERT = (
    "INSERT INTO interactions (login, kind, at, points, call_id, note, recorded_by, dedup_key) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING"
)
_COLUMNS = "interaction_id, login, kind, at, points, call_id, note, recorded_by"


@dataclass(frozen=True, slots=True)
class Interaction:
    interaction_id: int
    login: str
    kind: str
    at: float
    points: float
    call_id: str | None
    note: str | None
    recorded_by: str | None  # None: counted from a call

    def to_json(self) -> dict[str, Any]:
        return {"interaction_id": self.interaction_id, "login": self.login, "kind": self.kind, "at": iso(self.at),
                "points": self.points, "call_id": self.call_id, "note": self.note, "recorded_by": self.recorded_by}


def credit_statements(credits: Sequence[Credit]) -> list[Statement]:
    return [(_INSERT, (c.login, c.kind, c.at, c.points, c.call_id, None, None, f"{c.kind}:{c.call_id}:{c.login}"))
            for c in credits]


class Interactions:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, *, login: str, kind: str, at: float, points: float, call_id: str | None,
                     note: str | None, recorded_by: str, request_id: str) -> tuple[Interaction, bool]:
        """Record an interaction by hand; (it, True) when new, (the one
        recorded before with this request id, False) for a repeat."""
        key = f"api:{recorded_by}:{request_id}"
        before = await self._by_key(key)
        if before is not None:
            return before, False
        await self.store.write((_INSERT, (login, kind, at, points, call_id, note, recorded_by, key)))
        stored = await self._by_key(key)
        assert stored is not None  # just written; interactions are never deleted
        return stored, True

    async def _by_key(self, key: str) -> Interaction | None:
        rows = await self.store.read(f"SELECT {_COLUMNS} FROM interactions WHERE dedup_key = ?", (key,))
        return Interaction(*rows[0]) if rows else None

    async def between(self, start: float, end: float, logins: Sequence[str] | None = None) -> list[Interaction]:
        """Interactions with ``start <= at < end`` of ``logins`` (None: everybody's), oldest first."""
        if logins is not None and not logins:
            return []
        sql = f"SELECT {_COLUMNS} FROM interactions WHERE at >= ? AND at < ?"
        params: tuple[Any, ...] = (start, end)
        if logins is not None:
            sql += f" AND login IN ({', '.join('?' for _ in logins)})"
            params += tuple(logins)
        return [Interaction(*row) for row in await self.store.read(sql + " ORDER BY at", params)]
