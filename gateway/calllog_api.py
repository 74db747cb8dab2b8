"""The call log for managers: every call of their people, filtered, and as CSV.

| route | roles |
|---|---|
| ``GET /api/calls/log`` | manager (his teams' calls), admin (all); agents 403 |

Query: ``from``/``to`` (``YYYY-MM-DD``, local days of the KPI time zone; by
default the last 7 days up to today), ``agent`` (an agent's login), ``shop``,
``channel``, ``outcome`` (answered, missed, abandoned, busy, failed),
``number`` (the customer's number in any spelling), ``limit`` (1..500, 50)
and ``offset``; ``format=csv`` answers every matching row as a CSV download
(UTF-8 with a byte order mark for spreadsheets; ``limit``/``offset`` do not
apply), read a page at a time.

A manager's calls are those an agent of his teams rang on, answered, talked on
or placed, and those whose customer is assigned to one of his teams' people or
to himself: the calls whose recordings he may hear (recordings.api). An
agent filter narrows to the calls that agent rang on, answered, talked on or
placed. Bad input answers 400 ``{"error": code, "message": ...}``.

Each call comes with its result and note, its recording (status and length)
and its missed-call task: the task the call was an attempt of (a missed call),
or the task it closed (the call that reached the customer).

Queries use the existing indexes: the period by ``calls_by_started_at``, a
number by ``calls_customer``; the per-call joins by primary keys. The task a
call closed is looked up once per page (``callback_tasks.closed_call_id`` has
no index: one scan of the tasks table per page, never one per call). On 100k
calls over a year (measured on a 2-core machine): a week, or a number over the
year, answers in about 10 ms; a manager's whole year (his team's 24k calls
counted) in about 0.11 s; its CSV export takes 0.5 s, in pages of at most
35 ms, so other readers get their turn.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from crm_bridge.contacts import _cell, e164
from crm_bridge.store import Store, StoreError
from gateway.click_to_call import CHANNEL as CLICK_TO_CALL_CHANNEL
from gateway.followup import Followup
from gateway.followup_api import FOLLOWUP
from gateway.kpi import MAX_REPORT_DAYS, day_bounds, local_day
from gateway.record import iso
from gateway.users import Directory, Role, User
from gateway.web import CLOCK, DIRECTORY, HTTP, STORE, _json_error, _require, store_unavailable

log = logging.getLogger(__name__)

OUTCOMES = ("answered", "missed", "abandoned", "busy", "failed")
FORMATS = ("json", "csv")
DEFAULT_DAYS = 7
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_OFFSET = 10_000_000
MAX_FILTER = 100  # characters of a shop, channel, agent or number filter
EXPORT_PAGE = 1000

CSV_COLUMNS = (
    "call_id", "started_at", "local_time", "timezone", "direction", "caller", "dialled", "customer",
    "customer_name", "shop", "shop_name", "channel", "outcome", "answered_by", "answered_by_login",
    "answered_by_name", "rang", "talked", "ring_seconds", "talk_seconds", "result", "note", "recording_status",
    "recording_duration", "task_id", "task_status", "task_within_sla", "task_callback_seconds",
)

_SELECT = (
    "SELECT c.call_id, c.started_at, c.direction, c.caller, c.dialled, c.customer, c.shop, c.channel, c.outcome, "
    "c.answered_by, c.talked, c.ring_seconds, c.talk_seconds, r.result, r.note, rec.status, rec.duration, "
    "a.task_id, ct.name, c.rang "
    "FROM calls AS c "
    "LEFT JOIN call_results AS r ON r.call_id = c.call_id "
    "LEFT JOIN recordings AS rec ON rec.call_id = c.call_id "
    "LEFT JOIN callback_attempts AS a ON a.call_id = c.call_id "
    "LEFT JOIN contact_phones AS p ON p.phone = c.customer "
    "LEFT JOIN contacts AS ct ON ct.contact_id = p.contact_id"
)
_TASK_COLUMNS = "task_id, status, within_sla, callback_seconds, closed_call_id"


def add_routes(app: web.Application) -> None:
    """Needs ``gateway.web``'s STORE, DIRECTORY, HTTP, CLOCK and ``gateway.followup_api.FOLLOWUP``."""
    app.router.add_get("/api/calls/log", call_log)


# -- the filter, and the SQL it makes ---------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """Whose calls a reader sees: calls of these extensions, or of customers
    assigned to these logins. An administrator has no scope (everything)."""

    extensions: tuple[str, ...]
    logins: tuple[str, ...]


@dataclass(frozen=True)
class LogFilter:
    first: date
    last: date
    start: float  # epoch seconds: the start of ``first`` in the KPI time zone
    end: float  # ...and the end of ``last``
    agent: User | None = None
    shop: str | None = None
    channel: str | None = None
    outcome: str | None = None
    customer: str | None = None  # E.164


def _marks(values: Sequence[str]) -> str:
    return ", ".join("?" for _ in values)


def _of_extensions(extensions: Sequence[str]) -> tuple[str, list[Any]]:
    """Calls these extensions rang on, answered, talked on or placed: the
    record's own fields, as recordings.api decides who may listen (so a call
    stored without legs counts too). The cheap column tests come first."""
    e = _marks(extensions)
    sql = (f"(c.answered_by IN ({e}) OR (c.direction != 'inbound' AND c.caller IN ({e})) "
           f"OR EXISTS (SELECT 1 FROM json_each(c.rang) WHERE json_each.value IN ({e})) "
           f"OR EXISTS (SELECT 1 FROM json_each(c.talked) WHERE json_each.value IN ({e})))")
    return sql, [*extensions] * 4


def where(f: LogFilter, scope: Scope | None) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of the filtered, scoped log."""
    clauses = ["c.started_at >= ? AND c.started_at < ?"]
    params: list[Any] = [f.start, f.end]
    if f.customer is not None:
        clauses.append("c.customer = ?")
        params.append(f.customer)
    for column, value in (("shop", f.shop), ("channel", f.channel), ("outcome", f.outcome)):
        if value is not None:
            clauses.append(f"c.{column} = ?")
            params.append(value)
    if f.agent is not None:
        sql, more = _of_extensions(f.agent.extensions)
        clauses.append(sql)
        params += more
    if scope is not None:
        sql, more = _of_extensions(scope.extensions)
        managed = (f"SELECT p2.phone FROM contacts AS ct2 JOIN contact_phones AS p2 ON p2.contact_id = ct2.contact_id "
                   f"WHERE ct2.manager IN ({_marks(scope.logins)})")
        clauses.append(f"({sql} OR c.customer IN ({managed}))")
        params += [*more, *scope.logins]
    return " AND ".join(clauses), params


def scope_of(user: User, directory: Directory) -> Scope | None:
    if user.role is Role.ADMIN:
        return None
    team = directory.team_members(user.leads)
    return Scope(extensions=tuple(e for u in team for e in u.extensions),
                 logins=(user.login, *(u.login for u in team)))


# -- reading the query string --------------------------------------------------------------------


def _bad(code: str, message: str) -> web.HTTPException:
    return _json_error(web.HTTPBadRequest, code, message)


def _day(request: web.Request, key: str) -> date | None:
    raw = request.query.get(key, "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise _bad("bad_date", f"{key} must be a date like 2026-11-27") from None


def _text(request: web.Request, key: str) -> str | None:
    raw = request.query.get(key, "").strip()
    if not raw:
        return None
    if len(raw) > MAX_FILTER:
        raise _bad(f"bad_{key}", f"{key} is at most {MAX_FILTER} characters")
    return raw


def _whole(request: web.Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise _bad(f"bad_{key}", f"{key} must be a whole number from {low} to {high}")
    return value


def parse_filter(request: web.Request, user: User, zone: str, now: float) -> LogFilter:
    first, last = _day(request, "from"), _day(request, "to")
    if last is None:
        last = max(first, local_day(now, zone)) if first is not None else local_day(now, zone)
    if first is None:
        first = last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first or (last - first) >= timedelta(days=MAX_REPORT_DAYS):
        raise _bad("bad_period", f"to must not be before from, and the period at most {MAX_REPORT_DAYS} days")
    start, end = day_bounds(first, last, zone)

    agent = None
    login = _text(request, "agent")
    if login is not None:
        directory = request.app[DIRECTORY]
        agent = directory.by_login(login)
        scope = scope_of(user, directory)
        # One answer for "no such agent" and "not yours": a manager learns nothing of other teams.
        if agent is None or agent.role is not Role.AGENT or (
                scope is not None and agent.login not in scope.logins):
            raise _bad("bad_agent", "agent must be the login of an agent in your teams")

    outcome = _text(request, "outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise _bad("bad_outcome", f"outcome must be one of {', '.join(OUTCOMES)}")

    customer = None
    number = _text(request, "number")
    if number is not None:
        customer = e164(number, request.app[HTTP].default_region)
        if customer is None:
            raise _bad("bad_number", "number must be a customer's phone number, e.g. +79161110001 or 89161110001")

    return LogFilter(first=first, last=last, start=start, end=end, agent=agent, shop=_text(request, "shop"),
                     channel=_text(request, "channel"), outcome=outcome, customer=customer)


# -- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    task_id: int
    status: str
    within_sla: bool | None
    callback_seconds: float | None
    this_call: str  # "attempt": the call was one of the task's missed calls; "reach": it closed the task

    def to_json(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "within_sla": self.within_sla,
                "callback_seconds": None if self.callback_seconds is None else round(self.callback_seconds, 1),
                "this_call": self.this_call}


async def _tasks_of(store: Store, rows: Sequence[Sequence[Any]]) -> dict[str, Task]:
    """call id -> its task, for one page of rows (two reads for the page)."""
    attempts = {str(row[0]): int(row[17]) for row in rows if row[17] is not None}
    found: dict[str, Task] = {}
    if attempts:
        ids = sorted(set(attempts.values()))
        by_id = {int(t[0]): t for t in await store.read(
            f"SELECT {_TASK_COLUMNS} FROM callback_tasks WHERE task_id IN ({_marks([str(i) for i in ids])})",
            tuple(ids))}
        for call_id, task_id in attempts.items():
            if (t := by_id.get(task_id)) is not None:
                found[call_id] = Task(task_id, str(t[1]), None if t[2] is None else bool(t[2]), t[3], "attempt")
    # Only answered calls reach a customer; a missed call's task is its attempt's.
    answered = [str(row[0]) for row in rows if row[8] == "answered" and str(row[0]) not in found]
    if answered:
        for t in await store.read(
                f"SELECT {_TASK_COLUMNS} FROM callback_tasks WHERE closed_call_id IN ({_marks(answered)})",
                tuple(answered)):
            found[str(t[4])] = Task(int(t[0]), str(t[1]), None if t[2] is None else bool(t[2]), t[3], "reach")
    return found


class Rows:
    """Turns the query's rows into the API's and the CSV's shape."""

    def __init__(self, followup: Followup, directory: Directory) -> None:
        self.directory = directory
        self.kpi_zone = followup.kpi.timezone
        self.shops = followup.plans.current.shops

    def shop_name(self, shop: str | None) -> str | None:
        known = self.shops.get(shop) if shop else None
        return known.name if known else shop

    def zone(self, shop: str | None) -> str:
        known = self.shops.get(shop) if shop else None
        return known.timezone if known else self.kpi_zone

    def logins(self, extensions: Iterable[str]) -> str:
        """Agents' logins (an extension nobody has stays as it is), joined with ';'."""
        return ";".join(u.login if (u := self.directory.by_extension(e)) else e for e in extensions)

    def to_json(self, row: Sequence[Any], task: Task | None) -> dict[str, Any]:
        (call_id, started_at, direction, caller, dialled, customer, shop, channel, outcome, answered_by, talked,
         ring_seconds, talk_seconds, result, note, rec_status, rec_duration, _, customer_name, rang) = row
        agent = self.directory.by_extension(answered_by) if answered_by else None
        return {
            "call_id": call_id, "started_at": iso(started_at), "direction": direction, "caller": caller,
            "dialled": dialled, "customer": customer, "customer_name": customer_name,
            "shop": shop, "shop_name": self.shop_name(shop), "timezone": self.zone(shop), "channel": channel,
            "outcome": outcome, "answered_by": answered_by,
            "answered_by_login": agent.login if agent else None, "answered_by_name": agent.name if agent else None,
            "rang": _extensions(rang), "talked": _extensions(talked),
            "ring_seconds": round(ring_seconds, 1), "talk_seconds": round(talk_seconds, 1),
            "result": result, "note": note,
            "recording": None if rec_status is None else {
                "status": rec_status, "duration": None if rec_duration is None else round(rec_duration, 1)},
            "task": task.to_json() if task else None,
        }

    def to_csv(self, row: Sequence[Any], task: Task | None) -> list[Any]:
        j = self.to_json(row, task)
        zone = j["timezone"]
        local = datetime.fromtimestamp(row[1], ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
        recording, t = j["recording"] or {}, j["task"] or {}
        return [
            _cell(j["call_id"]), j["started_at"], local, zone, j["direction"], _cell(j["caller"]),
            _cell(j["dialled"]), _cell(j["customer"]), _cell(j["customer_name"]), _cell(j["shop"]),
            _cell(j["shop_name"]), _cell(j["channel"]), j["outcome"], _cell(j["answered_by"]),
            _cell(j["answered_by_login"]), _cell(j["answered_by_name"]), _cell(self.logins(j["rang"])),
            _cell(self.logins(j["talked"])),
            j["ring_seconds"], j["talk_seconds"], _cell(j["result"]), _cell(j["note"]),
            recording.get("status") or "", _number(recording.get("duration")), t.get("task_id") or "",
            t.get("status") or "", _flag(t.get("within_sla")), _number(t.get("callback_seconds")),
        ]


def _extensions(raw: Any) -> list[str]:
    try:
        value = json.loads(raw) if isinstance(raw, str) else []
    except ValueError:
        return []
    return [str(e) for e in value] if isinstance(value, list) else []


def _number(value: Any) -> Any:
    return "" if value is None else value


def _flag(value: Any) -> str:
    return "" if value is None else str(int(bool(value)))


# -- the route ------------------------------------------------------------------------------------


async def call_log(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.MANAGER, Role.ADMIN])
    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise _bad("bad_format", f"format must be one of {', '.join(FORMATS)}")
    followup, directory = request.app[FOLLOWUP], request.app[DIRECTORY]
    f = parse_filter(request, user, followup.kpi.timezone, request.app[CLOCK]())
    limit = _whole(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _whole(request, "offset", 0, 0, MAX_OFFSET)
    clause, params = where(f, scope_of(user, directory))
    rows = Rows(followup, directory)
    store = request.app[STORE]
    if fmt == "csv":
        return await _export(request, store, rows, f, clause, params)
    try:
        total = (await store.read(f"SELECT COUNT(*) FROM calls AS c WHERE {clause}", tuple(params)))[0][0]
        page = await store.read(f"{_SELECT} WHERE {clause} ORDER BY c.started_at DESC, c.call_id DESC "
                                "LIMIT ? OFFSET ?", (*params, limit, offset))
        tasks = await _tasks_of(store, page)
    except StoreError as exc:
        raise store_unavailable("call log", exc) from None
    return web.json_response({
        "calls": [rows.to_json(row, tasks.get(str(row[0]))) for row in page],
        "total": int(total), "limit": limit, "offset": offset,
        "from": f.first.isoformat(), "to": f.last.isoformat(), "timezone": followup.kpi.timezone,
        "shops": [{"id": s.shop_id, "name": s.name, "timezone": s.timezone} for s in rows.shops.values()],
        "channels": _channels(followup),
    }, headers={"Cache-Control": "no-store"})


def _channels(followup: Followup) -> list[str]:
    plan = followup.plans.current
    return sorted({line.channel for line in plan.lines.values()} | {plan.default_channel, CLICK_TO_CALL_CHANNEL})


async def _export(request: web.Request, store: Store, rows: Rows, f: LogFilter, clause: str,
                  params: list[Any]) -> web.StreamResponse:
    """Every matching call, newest first, a page at a time (keyset paging on the
    period index, so other readers get their turn between pages)."""
    try:  # the first page before the headers: a store that is down still answers 503
        page = await _export_page(store, clause, params, None)
        tasks = await _tasks_of(store, page)
    except StoreError as exc:
        raise store_unavailable("call log", exc) from None
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": f'attachment; filename="calls-{f.first.isoformat()}-{f.last.isoformat()}.csv"',
        "Cache-Control": "no-store",
    })
    await response.prepare(request)
    # The byte order mark makes spreadsheets read the file as UTF-8 (Cyrillic names).
    await response.write(_lines([CSV_COLUMNS], prefix="\ufeff"))
    while True:
        await response.write(_lines(rows.to_csv(row, tasks.get(str(row[0]))) for row in page))
        if len(page) < EXPORT_PAGE:
            break
        try:
            page = await _export_page(store, clause, params, (page[-1][1], page[-1][0]))
            tasks = await _tasks_of(store, page)
        except StoreError as exc:
            # Too late for an error status: end the connection without the last chunk,
            # so the browser reports a failed download rather than a short file.
            log.error("call log export cut short: %s", exc)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


async def _export_page(store: Store, clause: str, params: list[Any],
                       after: tuple[float, str] | None) -> list[Any]:
    if after is None:
        return await store.read(f"{_SELECT} WHERE {clause} ORDER BY c.started_at DESC, c.call_id DESC LIMIT ?",
                                (*params, EXPORT_PAGE))
    return await store.read(
        f"{_SELECT} WHERE {clause} AND (c.started_at, c.call_id) < (?, ?) "
        "ORDER BY c.started_at DESC, c.call_id DESC LIMIT ?", (*params, after[0], after[1], EXPORT_PAGE))


def _lines(rows: Iterable[Sequence[Any]], prefix: str = "") -> bytes:
    out = io.StringIO()
    out.write(prefix)
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode("utf-8")
