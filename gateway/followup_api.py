"""HTTP routes for the follow-up of calls: missed-call tasks, KPI, VIP plan.

| route | roles |
|---|---|
| ``GET /api/callbacks?status=open&mine=1`` | agent (his own), manager (his teams' and supervised shops'), admin (all) |
| ``POST /api/callbacks/{task_id}/close`` | whoever may see the task; ``{"reason", "note"?}`` |
| ``POST /api/interactions`` | agent (for himself), manager (his teams), admin; ``{"kind", "request_id", "at"?, "call_id"?, "note"?, "login"?}`` |
| ``GET /api/kpi?from=YYYY-MM-DD&to=YYYY-MM-DD`` | agent (his own), manager (his teams), admin |
| ``GET /api/vip-plan`` | agent (his contacts), manager (his teams'), admin |

Errors answer ``{"error": code, "message": ...}`` with 400, 403, 404 or 503.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from aiohttp import web

from crm_bridge.callback_tasks import CLOSE_REASONS, TaskError
from crm_bridge.interactions import MAX_NOTE
from crm_bridge.store import StoreError
from gateway.followup import Followup
from gateway.kpi import AUTOMATIC, MAX_REPORT_DAYS, local_day
from gateway.users import Role
from gateway.web import CLOCK, DIRECTORY, _json_body, _json_error, _require, store_unavailable

log = logging.getLogger(__name__)

FOLLOWUP = web.AppKey("followup", Followup)
STATUSES = ("open", "reached", "closed", "all")
MAX_REQUEST_ID = 100
_PEOPLE = (Role.AGENT, Role.MANAGER, Role.ADMIN)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/callbacks", list_callbacks)
    app.router.add_post("/api/callbacks/{task_id}/close", close_callback)
    app.router.add_post("/api/interactions", record_interaction)
    app.router.add_get("/api/kpi", kpi)
    app.router.add_get("/api/vip-plan", vip_plan)


async def list_callbacks(request: web.Request) -> web.StreamResponse:
    user = _require(request, _PEOPLE)
    status = request.query.get("status", "open")
    if status not in STATUSES:
        raise _json_error(web.HTTPBadRequest, "bad_status", f"status must be one of {', '.join(STATUSES)}")
    followup = request.app[FOLLOWUP]
    try:
        tasks = await followup.visible_tasks(user, status=status, mine=request.query.get("mine") == "1")
    except StoreError as exc:
        raise store_unavailable("listing callback tasks", exc) from None
    now = request.app[CLOCK]()
    return web.json_response({"tasks": [followup.task_json(t, now) for t in tasks],
                              "close_reasons": list(CLOSE_REASONS)})


async def close_callback(request: web.Request) -> web.StreamResponse:
    user = _require(request, _PEOPLE)
    try:
        task_id = int(request.match_info["task_id"])
    except ValueError:
        raise _json_error(web.HTTPNotFound, "no_such_task", "no such task") from None
    body = await _json_body(request)
    reason, note = body.get("reason"), body.get("note")
    if not isinstance(reason, str) or (note is not None and not isinstance(note, str)):
        raise _json_error(web.HTTPBadRequest, "bad_reason",
                          f"reason is required, one of {', '.join(CLOSE_REASONS)}; note is text")
    followup = request.app[FOLLOWUP]
    try:
        task = await followup.tasks.get(task_id)
        if task is None or not followup.may_see_task(user, task):
            raise _json_error(web.HTTPNotFound, "no_such_task", "no such task of yours")
        closed = await followup.tasks.close(task_id, reason=reason, note=(note or "").strip() or None, by=user.login,
                                            now=request.app[CLOCK]())
    except TaskError as exc:
        kind = web.HTTPConflict if exc.code == "not_open" else web.HTTPBadRequest
        raise _json_error(kind, exc.code, str(exc)) from None
    except StoreError as exc:
        raise store_unavailable("closing a callback task", exc) from None
    log.info("callback task %d closed by %s: %s", task_id, user.login, reason)
    return web.json_response(followup.task_json(closed, request.app[CLOCK]()))


def _when(value: Any, now: float) -> float:
    if value is None:
        return now
    if not isinstance(value, str):
        raise _json_error(web.HTTPBadRequest, "bad_at", "at must be an ISO 8601 time with its offset")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "bad_at", "at must be an ISO 8601 time with its offset") from None
    if moment.tzinfo is None:
        raise _json_error(web.HTTPBadRequest, "bad_at", "at needs its UTC offset, e.g. 2026-11-27T15:00:00+03:00")
    at = moment.timestamp()
    if at > now + 300:
        raise _json_error(web.HTTPBadRequest, "bad_at", "at is in the future")
    return at


async def record_interaction(request: web.Request) -> web.StreamResponse:
    """201 with the interaction; 200 with the same one for a repeated request id."""
    user = _require(request, _PEOPLE)
    body = await _json_body(request)
    followup = request.app[FOLLOWUP]
    kind, request_id = body.get("kind"), body.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise _json_error(web.HTTPBadRequest, "bad_request_id",
                          f"request_id is required: a string of at most {MAX_REQUEST_ID} characters")
    manual = [k for k in followup.kpi.points if k not in AUTOMATIC]
    if not isinstance(kind, str) or kind not in manual:
        raise _json_error(web.HTTPBadRequest, "bad_kind", f"kind must be one of {', '.join(manual)} "
                          "(calls are counted by themselves)")
    login = body.get("login", user.login)
    people = followup.people_of(user)
    target = request.app[DIRECTORY].by_login(login) if isinstance(login, str) else None
    if target is None or target.role is not Role.AGENT:
        raise _json_error(web.HTTPBadRequest, "bad_login", "login must be an agent's login")
    if people is not None and target.login not in people:
        raise _json_error(web.HTTPForbidden, "forbidden", "you may record interactions only for your team")
    note, call_id = body.get("note"), body.get("call_id")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise _json_error(web.HTTPBadRequest, "bad_note", f"note must be text of at most {MAX_NOTE} characters")
    if call_id is not None and (not isinstance(call_id, str) or len(call_id) > 200):
        raise _json_error(web.HTTPBadRequest, "bad_call_id", "call_id must be a call id")
    now = request.app[CLOCK]()
    at = _when(body.get("at"), now)
    points = followup.kpi.points[kind]
    try:
        interaction, new = await followup.interactions.record(
            login=target.login, kind=kind, at=at, points=points, call_id=call_id, note=note or None,
            recorded_by=user.login, request_id=request_id)
    except StoreError as exc:
        raise store_unavailable("recording an interaction", exc) from None
    return web.json_response(interaction.to_json(), status=201 if new else 200)


def _day(request: web.Request, key: str, default: date) -> date:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "bad_date", f"{key} must be a date like 2026-11-27") from None


async def kpi(request: web.Request) -> web.StreamResponse:
    """Points per agent and day; by default this month up to today (KPI time zone)."""
    user = _require(request, _PEOPLE)
    followup = request.app[FOLLOWUP]
    today = local_day(request.app[CLOCK](), followup.kpi.timezone)
    first, last = _day(request, "from", today.replace(day=1)), _day(request, "to", today)
    if last < first or (last - first) >= timedelta(days=MAX_REPORT_DAYS):
        raise _json_error(web.HTTPBadRequest, "bad_period",
                          f"to must not be before from, and the period at most {MAX_REPORT_DAYS} days")
    agents = followup.agents_of(user)
    wanted = request.query.get("login")
    if wanted is not None:
        agents = [a for a in agents if a.login == wanted]
        if not agents:
            raise _json_error(web.HTTPNotFound, "no_such_agent", "no agent with this login in your teams")
    try:
        report = await followup.kpi_report(agents, first, last)
    except StoreError as exc:
        raise store_unavailable("the KPI report", exc) from None
    return web.json_response(report)


async def vip_plan(request: web.Request) -> web.StreamResponse:
    user = _require(request, _PEOPLE)
    try:
        plan = await request.app[FOLLOWUP].vip_plan(user)
    except StoreError as exc:
        raise store_unavailable("the VIP plan", exc) from None
    return web.json_response(plan)
