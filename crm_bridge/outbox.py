"""The outbox: what the CRM sinks still have to receive, on disk.

One row per (sink, event). An event is written in the same transaction as the
change it reports (a call's record, a task, a recording), so nothing that was
stored can miss its delivery, and a crash between the change and the send only
means the send happens after the restart: at-least-once. ``key`` is the
idempotency key (the same for every retry of the event): UNIQUE per sink, so an
event written twice (a record stored again) is one delivery.

Rows are fanned out in SQL from ``outbox_sinks`` (the sinks of the config and
the events each takes), so a writer of events never needs to know the sinks.
Deliveries of one ``stream`` (a call, a task) to one sink go in entry order:
Bitrix24 must see a call registered before it is finished.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crm_bridge.store import Store

Statement = tuple[str, tuple[Any, ...]]

PENDING, DONE, DEAD = "pending", "done", "dead"

# Every event the gateway reports (docs/crm-events.schema.json).
EVENTS = ("call.ringing", "call.ring_stopped", "call.answered", "call.finished", "recording.ready",
          "task.opened", "task.closed")


@dataclass(frozen=True, slots=True)
class Entry:
    entry_id: int
    sink: str
    event: str
    stream: str
    key: str
    data: dict[str, Any]
    state: str
    attempts: int
    created_at: float
    next_at: float
    give_up_at: float
    last_error: str | None
    done_at: float | None

    def to_json(self) -> dict[str, Any]:
        """The admin's view (the dead-letter list): no payload, it may hold phone numbers."""
        return {"entry_id": self.entry_id, "sink": self.sink, "event": self.event, "stream": self.stream,
                "state": self.state, "attempts": self.attempts, "created_at": self.created_at,
                "next_at": self.next_at, "give_up_at": self.give_up_at, "last_error": self.last_error,
                "done_at": self.done_at}


# Per sink: entries pending, dead, and when the oldest pending one was written.
# On outbox_due (sink, state, next_at): the delivered rows are not read.
OUTBOX_COUNTS = ("SELECT sink, sum(state = 'pending'), sum(state = 'dead'), "
                 "min(CASE WHEN state = 'pending' THEN created_at END) FROM outbox "
                 "WHERE state IN ('pending', 'dead') GROUP BY sink")

_COLUMNS = ("entry_id, sink, event, stream, key, payload, state, attempts, created_at, next_at, give_up_at, "
            "last_error, done_at")


def _entry(row: Sequence[Any]) -> Entry:
    values = list(row)
    values[5] = json.loads(values[5])
    return Entry(*values)


def event_statement(event: str, stream: str, key: str, data: Mapping[str, Any], now: float) -> Statement:
    """Write ``event`` for every sink that takes it. A second write of the same
    key replaces the data of a delivery still pending (a record stored again
    with more in it) and changes nothing once it was delivered."""
    return (
        "INSERT INTO outbox (sink, event, stream, key, payload, created_at, next_at, give_up_at) "
        "SELECT s.sink, ?1, ?2, ?3, ?4, ?5, ?5, ?5 + s.max_age FROM outbox_sinks AS s "
        "WHERE EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = ?1) "
        "ON CONFLICT (sink, key) DO UPDATE SET payload = excluded.payload WHERE outbox.state = 'pending'",
        (event, stream, key, json.dumps(data, ensure_ascii=False, separators=(",", ":")), now),
    )


class Outbox:
    """The outbox of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.takes: dict[str, frozenset[str]] = {}  # sink -> the events it takes (after ``register``)

    async def register(self, sinks: Mapping[str, tuple[Iterable[str], float]]) -> None:
        """The sinks of the config: name -> (events, seconds of retrying). A sink
        left out of the config gets no new entries; its old ones stay listed."""
        self.takes = {name: frozenset(events) for name, (events, _) in sinks.items()}
        statements: list[Statement] = [("DELETE FROM outbox_sinks", ())]
        statements += [("INSERT INTO outbox_sinks (sink, events, max_age) VALUES (?, ?, ?)",
                         (name, json.dumps(sorted(events)), max_age)) for name, (events, max_age) in sinks.items()]
        await self.store.write(*statements)

    def wanted(self, event: str) -> bool:
        """Does any sink take ``event``? (None does: write nothing.)"""
        return any(event in events for events in self.takes.values())

    async def due(self, sink: str, now: float, *, limit: int, busy: Iterable[str] = ()) -> list[Entry]:
        """Entries of ``sink`` to attempt now: the first pending one of each stream
        (streams in ``busy`` are being delivered already), oldest first."""
        busy = list(busy)
        skip = f"AND o.stream NOT IN ({', '.join('?' * len(busy))}) " if busy else ""
        rows = await self.store.read(
            f"SELECT {_COLUMNS} FROM outbox AS o WHERE o.sink = ? AND o.state = 'pending' AND o.next_at <= ? {skip}"
            "AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.stream = o.stream "
            "AND p.state = 'pending' AND p.entry_id < o.entry_id) ORDER BY o.next_at, o.entry_id LIMIT ?",
            (sink, now, *busy, limit))
        return [_entry(row) for row in rows]

    async def next_due_at(self, sink: str) -> float | None:
        """When the next entry can be attempted: the first pending one of each
        stream counts (a later one waits for it, whatever its own next_at)."""
        rows = await self.store.read(
            "SELECT min(o.next_at) FROM outbox AS o WHERE o.sink = ? AND o.state = 'pending' "
            "AND NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.stream = o.stream "
            "AND p.state = 'pending' AND p.entry_id < o.entry_id)", (sink,))
        return rows[0][0] if rows else None

    async def delivered(self, entry_id: int, now: float) -> None:
        await self.store.write(("UPDATE outbox SET state = 'done', attempts = attempts + 1, done_at = ?, "
                                "last_error = NULL WHERE entry_id = ?", (now, entry_id)))

    async def failed(self, entry_id: int, error: str, *, retry_at: float | None) -> None:
        """One more failed attempt: again at ``retry_at``, or dead (None)."""
        if retry_at is None:
            await self.store.write(("UPDATE outbox SET state = 'dead', attempts = attempts + 1, last_error = ? "
                                    "WHERE entry_id = ?", (error[:500], entry_id)))
        else:
            await self.store.write(("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_at = ? "
                                    "WHERE entry_id = ?", (error[:500], retry_at, entry_id)))

    async def get(self, entry_id: int) -> Entry | None:
        rows = await self.store.read(f"SELECT {_COLUMNS} FROM outbox WHERE entry_id = ?", (entry_id,))
        return _entry(rows[0]) if rows else None

    async def listed(self, state: str, *, sink: str | None = None, limit: int = 200) -> list[Entry]:
        """Entries in ``state``, newest first (the admin's dead-letter list)."""
        where, params = ("AND sink = ? ", (sink,)) if sink else ("", ())
        rows = await self.store.read(f"SELECT {_COLUMNS} FROM outbox WHERE state = ? {where}"
                                     "ORDER BY entry_id DESC LIMIT ?", (state, *params, limit))
        return [_entry(row) for row in rows]

    async def retry_now(self, entry_ids: Sequence[int], now: float) -> int:
        """Dead entries back to pending, due now, with a fresh retry window;
        the number changed (an entry that is not dead is left alone)."""
        if not entry_ids:
            return 0
        marks = ", ".join("?" * len(entry_ids))
        before = await self.store.read(f"SELECT count(*) FROM outbox WHERE state = 'dead' AND entry_id IN ({marks})",
                                       tuple(entry_ids))
        await self.store.write((
            "UPDATE outbox SET state = 'pending', next_at = ?1, "
            "give_up_at = ?1 + coalesce((SELECT max_age FROM outbox_sinks AS s WHERE s.sink = outbox.sink), "
            "give_up_at - created_at) "
            f"WHERE state = 'dead' AND entry_id IN ({', '.join('?' * len(entry_ids))})",
            (now, *entry_ids)))
        return int(before[0][0])

    async def dead_ids(self, sink: str | None = None) -> list[int]:
        where, params = ("AND sink = ?", (sink,)) if sink else ("", ())
        rows = await self.store.read(f"SELECT entry_id FROM outbox WHERE state = 'dead' {where}", params)
        return [int(row[0]) for row in rows]

    async def counts(self, now: float) -> dict[str, dict[str, float]]:
        """Per sink: pending, dead, and the age of the oldest pending entry (s)."""
        rows = await self.store.read(OUTBOX_COUNTS)
        counts = {name: {"pending": 0.0, "dead": 0.0, "oldest_seconds": 0.0} for name in self.takes}
        for sink, pending, dead, oldest in rows:
            counts[sink] = {"pending": float(pending), "dead": float(dead),
                            "oldest_seconds": max(0.0, now - oldest) if oldest is not None else 0.0}
        return counts

    # -- the other side's ids -----------------------------------------------------------

    async def link(self, sink: str, call_id: str) -> tuple[str, dict[str, Any]] | None:
        """The other side's id of ``call_id`` and the data kept with it."""
        rows = await self.store.read("SELECT remote_id, data FROM crm_links WHERE sink = ? AND call_id = ?",
                                     (sink, call_id))
        if not rows:
            return None
        return str(rows[0][0]), json.loads(rows[0][1]) if rows[0][1] else {}

    async def set_link(self, sink: str, call_id: str, remote_id: str, data: Mapping[str, Any] | None = None) -> None:
        await self.store.write(("INSERT INTO crm_links (sink, call_id, remote_id, data) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (sink, call_id) DO UPDATE SET remote_id = excluded.remote_id, "
                                "data = excluded.data",
                                (sink, call_id, remote_id, json.dumps(dict(data or {}), ensure_ascii=False))))
