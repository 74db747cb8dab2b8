"""HTTP routes of the dashboards: deals, spend, the channel and agent reports.

| route | roles |
|---|---|
| ``POST /api/deals`` ``{"external_id", "phone", "amount", "margin"?, "status"?, "date"}`` | admin, marketer, manager |
| ``POST /api/deals/import`` (text/csv) | admin, marketer |
| ``POST /api/costs`` ``{"channel", "shop"?, "date", "amount"}`` and ``POST /api/costs/import`` | admin, marketer |
| ``GET /api/reports/channels?from=&to=&shop=&format=csv`` | admin, marketer, manager |
| ``GET /api/reports/agents?from=&to=`` | admin, manager (his teams) |
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from crm_bridge.store import StoreError
from dashboards.deals import DealError, Deals, parse_deal
from dashboards.reports import channel_report
from gateway.followup_api import FOLLOWUP
from gateway.kpi import day_bounds, local_day
from gateway.numberplan import PlanBook
from gateway.users import Role
from gateway.web import CLOCK, STORE, _json_body, _json_error, _require, store_unavailable

MAX_DAYS = 366
MAX_CSV = 10 * 1024 * 1024
READERS = (Role.ADMIN, Role.MARKETER, Role.MANAGER)


@dataclass(frozen=True)
class Reports:
    deals: Deals
    plans: PlanBook
    zone: str
    roi_basis: str = "margin"


REPORTS = web.AppKey("reports", Reports)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/deals", post_deal)
    app.router.add_post("/api/deals/import", import_deals)
    app.router.add_post("/api/costs", post_cost)
    app.router.add_post("/api/costs/import", import_costs)
    app.router.add_get("/api/reports/channels", channels)
    app.router.add_get("/api/reports/agents", agents)


async def _answer(work: Callable[[], Awaitable[dict[str, Any]]]) -> web.StreamResponse:
    """The JSON of ``work()``; 400 naming the field for bad input, 503 when the store fails."""
    try:
        return web.json_response(await work())
    except DealError as exc:
        raise _json_error(web.HTTPBadRequest, "bad_field", str(exc)) from None
    except StoreError as exc:
        raise store_unavailable("a deal or cost", exc) from None


async def post_deal(request: web.Request) -> web.StreamResponse:
    _require(request, READERS)
    deals = request.app[REPORTS].deals
    body = await _json_body(request)
    return await _answer(lambda: deals.put(parse_deal(body, deals.region), request.app[CLOCK]()))


async def _csv_text(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_CSV:
        raise _json_error(web.HTTPRequestEntityTooLarge, "too_large", f"at most {MAX_CSV} bytes")
    data = await request.content.read(MAX_CSV + 1)
    if len(data) > MAX_CSV:
        raise _json_error(web.HTTPRequestEntityTooLarge, "too_large", f"at most {MAX_CSV} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _json_error(web.HTTPBadRequest, "bad_csv", "the file is not UTF-8") from None


async def import_deals(request: web.Request) -> web.StreamResponse:
    _require(request, (Role.ADMIN, Role.MARKETER))
    text = await _csv_text(request)
    return await _answer(lambda: request.app[REPORTS].deals.import_csv(text, request.app[CLOCK]()))


async def post_cost(request: web.Request) -> web.StreamResponse:
    _require(request, (Role.ADMIN, Role.MARKETER))
    body = await _json_body(request)
    return await _answer(lambda: request.app[REPORTS].deals.put_cost(body))


async def import_costs(request: web.Request) -> web.StreamResponse:
    _require(request, (Role.ADMIN, Role.MARKETER))
    text = await _csv_text(request)
    return await _answer(lambda: request.app[REPORTS].deals.import_costs(text))


def _period(request: web.Request, zone: str) -> tuple[date, date]:
    today = local_day(request.app[CLOCK](), zone)
    try:
        first = date.fromisoformat(request.query.get("from") or (today - timedelta(days=29)).isoformat())
        last = date.fromisoformat(request.query.get("to") or today.isoformat())
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "bad_date", "from and to are dates like 2026-11-27") from None
    if last < first or (last - first).days >= MAX_DAYS:
        raise _json_error(web.HTTPBadRequest, "bad_period", f"to not before from, at most {MAX_DAYS} days")
    return first, last


CSV_COLUMNS = ("channel", "calls", "unique_callers", "new_leads", "qualified", "answered_pct", "missed_pct",
               "abandoned_pct", "avg_wait_seconds", "callbacks_in_sla", "deals_won", "revenue", "margin", "cost",
               "cost_per_call", "cost_per_lead", "cost_per_deal", "roi", "deals_won_last_touch")


async def channels(request: web.Request) -> web.StreamResponse:
    _require(request, READERS)
    reports = request.app[REPORTS]
    first, last = _period(request, reports.zone)
    shop = request.query.get("shop") or None
    try:
        report = await channel_report(request.app[STORE], reports.plans.current, first, last, zone=reports.zone,
                                      shop=shop, roi_basis=reports.roi_basis)
    except StoreError as exc:
        raise store_unavailable("the channel report", exc) from None
    if request.query.get("format") != "csv":
        return web.json_response(report)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report["channels"]:
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    return web.Response(body=("\ufeff" + out.getvalue()).encode(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="channels-{first}-{last}.csv"'})


async def agents(request: web.Request) -> web.StreamResponse:
    """Per agent of the caller's scope: answered, missed on his phone, talk
    time, KPI points against his target, callbacks within the SLA."""
    user = _require(request, (Role.ADMIN, Role.MANAGER))
    followup = request.app[FOLLOWUP]
    reports = request.app[REPORTS]
    first, last = _period(request, reports.zone)
    start, end = day_bounds(first, last, reports.zone)
    people = followup.agents_of(user)
    store = request.app[STORE]
    try:
        kpi = {a["login"]: a for a in (await followup.kpi_report(people, first, last))["agents"]}
        out = []
        for agent in people:
            ext = list(agent.extensions) or [""]
            marks = ", ".join("?" for _ in ext)
            answered, talk = (await store.read(
                f"SELECT count(*), coalesce(sum(talk_seconds), 0) FROM calls WHERE answered_by IN ({marks}) "
                "AND started_at >= ? AND started_at < ?", (*ext, start, end)))[0]
            missed = (await store.read(
                "SELECT count(DISTINCT c.call_id) FROM call_legs AS l JOIN calls AS c ON c.call_id = l.call_id "
                f"WHERE l.extension IN ({marks}) AND c.direction = 'inbound' "
                "AND c.outcome IN ('missed', 'abandoned') AND c.started_at >= ? AND c.started_at < ?",
                (*ext, start, end)))[0][0]
            callbacks, in_sla = (await store.read(
                "SELECT count(*), coalesce(sum(within_sla), 0) FROM callback_tasks WHERE closed_by = ? "
                "AND status = 'reached' AND closed_at >= ? AND closed_at < ?", (agent.login, start, end)))[0]
            points = kpi.get(agent.login, {})
            days = (last - first).days + 1
            out.append({"login": agent.login, "name": agent.name, "team": agent.team, "answered": answered,
                        "missed_on_phone": missed, "talk_seconds": round(talk, 1), "points": points.get("total", 0.0),
                        "target": points.get("daily_target", 0.0) * days, "callbacks": callbacks,
                        "callbacks_in_sla": in_sla})
    except StoreError as exc:
        raise store_unavailable("the agent report", exc) from None
    return web.json_response({"from": first.isoformat(), "to": last.isoformat(), "agents": out})
