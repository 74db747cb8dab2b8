"""Callback tasks on the call store: one per missed customer until he is reached.

``gateway.callbacks`` decides what a finished call means (an attempt, a reach,
nothing); this module turns that into statements that run in the same
transaction as the call's record, and answers the questions of the pages and
the SLA watch. Every write is decided inside SQLite, never from an earlier
read, and no statement can fail (a failing one would fail every call of its
batch): the partial unique index keeps one open task per phone, attempts are
keyed by call so a record handled twice counts once, and closing a task
twice does nothing the second time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.callbacks import CALLED_BACK, Attempt, Reach
from gateway.kpi import CALLBACK_IN_SLA
from gateway.record import iso

from .store import Store

Statement = tuple[str, tuple[Any, ...]]

OPEN, REACHED, CLOSED = "open", "reached", "closed"
CLOSE_REASONS = ("spam", "wrong_number", "duplicate", "solved_elsewhere", "other")
MAX_NOTE = 500

_COLUMNS = (
    "task_id", "phone", "status", "shop", "channel", "owner", "attempts", "first_attempt_at", "last_attempt_at",
    "due_at", "escalated_at", "closed_at", "closed_by", "close_reason", "close_note", "closed_call_id",
    "callback_seconds", "within_sla",
)
_SELECT = (
    f"SELECT {', '.join('t.' + c for c in _COLUMNS)}, c.name FROM callback_tasks AS t "
    "LEFT JOIN contact_phones AS p ON p.phone = t.phone LEFT JOIN contacts AS c ON c.contact_id = p.contact_id"
)
_MANAGER_OF_PHONE = (
    "(SELECT c.manager FROM contact_phones AS p JOIN contacts AS c ON c.contact_id = p.contact_id WHERE p.phone = ?1)"
)


class TaskError(ValueError):
    """A change to a task that cannot be made as asked; ``code`` says which kind."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CallbackTask:
    task_id: int
    phone: str
    status: str  # open | reached | closed
    shop: str | None
    channel: str | None
    owner: str | None
    attempts: int
    first_attempt_at: float
    last_attempt_at: float
    due_at: float
    escalated_at: float | None
    closed_at: float | None
    closed_by: str | None
    close_reason: str | None
    close_note: str | None
    closed_call_id: str | None
    callback_seconds: float | None
    within_sla: bool | None
    name: str | None  # the contact's name, if he has one

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "phone": self.phone,
            "name": self.name,
            "status": self.status,
            "shop": self.shop,
            "channel": self.channel,
            "owner": self.owner,
            "attempts": self.attempts,
            "first_attempt_at": iso(self.first_attempt_at),
            "last_attempt_at": iso(self.last_attempt_at),
            "due_at": iso(self.due_at),
            "overdue": self.status == OPEN and now >= self.due_at,
            "escalated_at": iso(self.escalated_at),
            "closed_at": iso(self.closed_at),
            "closed_by": self.closed_by,
            "close_reason": self.close_reason,
            "close_note": self.close_note,
            "closed_call_id": self.closed_call_id,
            "callback_seconds": round(self.callback_seconds, 1) if self.callback_seconds is not None else None,
            "within_sla": self.within_sla,
        }


def _task(row: sqlite3.Row | Sequence[Any]) -> CallbackTask:
    values = list(row)
    within = values[17]
    values[17] = None if within is None else bool(within)
    return CallbackTask(*values)


# -- statements that run with a call's record ---------------------------------------


def attempt_statements(attempt: Attempt, *, default_owner: str | None, due_at: float, now: float) -> list[Statement]:
    """Open a task for the caller (owner: his manager, else ``default_owner``)
    or join the one open, and count the attempt; a call that reached him
    after it, stored earlier, closes the task at once. A blacklisted caller
    gets no task."""
    return [
        (
            "INSERT INTO callback_tasks (phone, status, shop, channel, owner, first_attempt_at, last_attempt_at, "
            "due_at, created_at, updated_at) "
            f"SELECT ?1, 'open', ?2, ?3, coalesce({_MANAGER_OF_PHONE}, ?4), ?5, ?5, ?6, ?7, ?7 "
            "WHERE NOT EXISTS (SELECT 1 FROM callback_tasks WHERE phone = ?1 AND status = 'open') "
            "AND NOT EXISTS (SELECT 1 FROM callback_attempts WHERE call_id = ?8) "
            "AND NOT EXISTS (SELECT 1 FROM contact_phones AS p JOIN contacts AS c ON c.contact_id = p.contact_id "
            "WHERE p.phone = ?1 AND c.blacklisted)",
            (attempt.phone, attempt.shop, attempt.channel, default_owner, attempt.at, due_at, now, attempt.call_id),
        ),
        (
            "INSERT INTO callback_attempts (call_id, task_id, at, outcome) "
            "SELECT ?, task_id, ?, ? FROM callback_tasks WHERE phone = ? AND status = 'open' "
            "ON CONFLICT (call_id) DO NOTHING",
            (attempt.call_id, attempt.at, attempt.outcome, attempt.phone),
        ),
        (
            "UPDATE callback_tasks SET "
            "attempts = (SELECT count(*) FROM callback_attempts AS a WHERE a.task_id = callback_tasks.task_id), "
            "first_attempt_at = (SELECT min(at) FROM callback_attempts AS a WHERE a.task_id = callback_tasks.task_id), "
            "last_attempt_at = (SELECT max(at) FROM callback_attempts AS a WHERE a.task_id = callback_tasks.task_id), "
            "updated_at = ? WHERE phone = ? AND status = 'open'",
            (now, attempt.phone),
        ),
        *_close_if_reached(attempt.phone, now),
    ]


def reach_statements(reach: Reach, *, now: float, callback_points: float | None) -> list[Statement]:
    """Note that the customer was reached, and close his open task (if it
    began before this call was answered) with who, when, how long the
    callback took and whether within the SLA. ``callback_points`` go to
    whoever called back within the SLA (None: nobody gets points for it)."""
    points = callback_points if reach.reason == CALLED_BACK and reach.by is not None else None
    return [
        ("INSERT INTO callback_reaches (call_id, phone, at, by, reason, points) VALUES (?, ?, ?, ?, ?, ?) "
         "ON CONFLICT (call_id) DO NOTHING",
         (reach.call_id, reach.phone, reach.at, reach.by, reach.reason, points)),
        *_close_if_reached(reach.phone, now),
    ]


_FIRST_REACH = (
    "FROM callback_reaches AS r WHERE r.phone = callback_tasks.phone AND r.at >= callback_tasks.first_attempt_at "
    "ORDER BY r.at, r.call_id LIMIT 1"
)


def _close_if_reached(phone: str, now: float) -> list[Statement]:
    """Close the phone's open task by the first call that reached him after
    its first attempt, whichever record came in first; credit the callback."""
    return [
        (
            "UPDATE callback_tasks SET (status, closed_at, closed_by, close_reason, closed_call_id, callback_seconds, "
            "within_sla, updated_at) = (SELECT 'reached', r.at, r.by, r.reason, r.call_id, "
            f"max(0, r.at - callback_tasks.first_attempt_at), r.at <= callback_tasks.due_at, ?1 {_FIRST_REACH}) "
            f"WHERE phone = ?2 AND status = 'open' AND EXISTS (SELECT 1 {_FIRST_REACH})",
            (now, phone),
        ),
        (
            "INSERT INTO interactions (login, kind, at, points, call_id, dedup_key) "
            "SELECT r.by, ?1, r.at, r.points, r.call_id, ?1 || ':' || r.call_id || ':' || r.by "
            "FROM callback_tasks AS t JOIN callback_reaches AS r ON r.call_id = t.closed_call_id "
            "WHERE t.phone = ?2 AND t.status = 'reached' AND t.within_sla AND r.points IS NOT NULL "
            "ON CONFLICT (dedup_key) DO NOTHING",
            (CALLBACK_IN_SLA, phone),
        ),
    ]


# -- reads and changes by people ------------------------------------------------------


class CallbackTasks:
    """The tasks of one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, task_id: int) -> CallbackTask | None:
        rows = await self.store.read(f"{_SELECT} WHERE t.task_id = ?", (task_id,))
        return _task(rows[0]) if rows else None

    async def find(
        self,
        *,
        owners: Sequence[str] | None = None,
        shops: Sequence[str] = (),
        status: str = OPEN,
        since: float | None = None,
        limit: int = 500,
    ) -> list[CallbackTask]:
        """Tasks in ``status`` ("all" for any) owned by one of ``owners`` or in
        one of ``shops`` (``owners`` None: everybody's), newest attempt first;
        ``since`` keeps those whose last attempt is that recent."""
        where: list[str] = []
        params: list[Any] = []
        if status != "all":
            where.append("t.status = ?")
            params.append(status)
        if owners is not None:
            scope = []
            if owners:
                scope.append(f"t.owner IN ({', '.join('?' for _ in owners)})")
                params.extend(owners)
            if shops:
                scope.append(f"t.shop IN ({', '.join('?' for _ in shops)})")
                params.extend(shops)
            where.append(f"({' OR '.join(scope) or 'false'})")
        if since is not None:
            where.append("t.last_attempt_at >= ?")
            params.append(since)
        sql = f"{_SELECT} {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY t.last_attempt_at DESC LIMIT ?"
        return [_task(row) for row in await self.store.read(sql, (*params, limit))]

    async def open_count(self, phone: str) -> int:
        """Open tasks for this E.164 number (0 or 1): the caller card's badge."""
        rows = await self.store.read("SELECT count(*) FROM callback_tasks WHERE phone = ? AND status = 'open'",
                                     (phone,))
        return int(rows[0][0])

    async def close(self, task_id: int, *, reason: str, note: str | None, by: str, now: float) -> CallbackTask:
        """Close an open task by hand (spam, wrong number, ...). TaskError if it
        is not open or the reason is not one of CLOSE_REASONS."""
        if reason not in CLOSE_REASONS:
            raise TaskError("bad_reason", f"reason must be one of {', '.join(CLOSE_REASONS)}")
        if note is not None and len(note) > MAX_NOTE:
            raise TaskError("bad_note", f"note must be at most {MAX_NOTE} characters")
        before = await self.get(task_id)
        if before is None:
            raise TaskError("no_such_task", f"no task {task_id}")
        if before.status != OPEN:
            raise TaskError("not_open", f"task {task_id} is {before.status} already")
        await self.store.write((
            "UPDATE callback_tasks SET status = 'closed', closed_at = ?, closed_by = ?, close_reason = ?, "
            "close_note = ?, updated_at = ? WHERE task_id = ? AND status = 'open'",
            (now, by, reason, note, now, task_id),
        ))
        task = await self.get(task_id)
        assert task is not None  # tasks are never deleted
        # Reached or closed by someone else between the read and the write:
        if (task.status, task.closed_by, task.closed_at, task.close_reason) != (CLOSED, by, now, reason):
            raise TaskError("not_open", f"task {task_id} is {task.status} already")
        return task

    async def due_for_escalation(self, now: float) -> list[CallbackTask]:
        """Open tasks past their SLA deadline that were not escalated yet."""
        rows = await self.store.read(
            f"{_SELECT} WHERE t.status = 'open' AND t.due_at <= ? AND t.escalated_at IS NULL ORDER BY t.due_at",
            (now,),
        )
        return [_task(row) for row in rows]

    async def mark_escalated(self, task_ids: Sequence[int], now: float) -> None:
        if not task_ids:
            return
        marks = ", ".join("?" for _ in task_ids)
        await self.store.write((
            f"UPDATE callback_tasks SET escalated_at = ?, updated_at = ? "
            f"WHERE task_id IN ({marks}) AND escalated_at IS NULL",
            (now, now, *task_ids),
        ))
