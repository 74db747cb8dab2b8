"""HTTP routes for legal holds and personal data, for administrators only.

| route | answer |
|---|---|
| ``POST /api/calls/{call_id}/legal-hold`` | ``{"hold": true|false, "reason"?: text}`` -> the call's hold |
| ``GET /api/admin/personal-data/{phone}`` | everything held about the number, ``application/zip`` |
| ``DELETE /api/admin/personal-data/{phone}`` | erase it; the report as JSON |
| ``GET /api/admin/privacy-log?limit=&before=`` | exports, erasures, purges and holds, newest first |

``{phone}`` is any spelling of the number (``+79161110001``, ``89161110001``),
read in the app's region. Each of these is written to ``privacy_log`` with the
administrator's login (``recordings.privacy``). Needs ``app[PRIVACY]``; the
session middleware and ``gateway.web``'s keys come from ``gateway.web.build_app``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from crm_bridge.contacts import e164
from crm_bridge.store import Store, StoreError
from gateway.numberplan import PlanBook
from gateway.record import iso
from gateway.users import Role
from gateway.web import _json_body, _json_error, _require, store_unavailable

from . import privacy
from .privacy import MAX_REASON
from .retention import DAY

log = logging.getLogger(__name__)

ADMIN = (Role.ADMIN,)


@dataclass(frozen=True)
class PrivacyDesk:
    """What the routes need: the store, the plans (retention per shop), the
    recordings directory, the region numbers are read in, a clock."""

    store: Store
    plans: PlanBook
    directory: Path
    region: str = "RU"
    clock: Callable[[], float] = field(default=time.time)


PRIVACY = web.AppKey("privacy", PrivacyDesk)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/calls/{call_id}/legal-hold", legal_hold)
    app.router.add_get("/api/admin/privacy-log", get_privacy_log)
    app.router.add_get("/api/admin/personal-data/{phone}", export_personal_data)
    app.router.add_delete("/api/admin/personal-data/{phone}", erase_personal_data)


def _number(request: web.Request) -> str:
    raw = request.match_info["phone"]
    number = e164(raw, request.app[PRIVACY].region)
    if number is None:
        raise _json_error(web.HTTPBadRequest, "bad_phone", f"not a phone number: {raw[:40]!r}")
    return number


async def legal_hold(request: web.Request) -> web.StreamResponse:
    user = _require(request, ADMIN)
    desk = request.app[PRIVACY]
    body = await _json_body(request)
    hold, reason = body.get("hold"), body.get("reason")
    if not isinstance(hold, bool):
        raise _json_error(web.HTTPBadRequest, "bad_field", "hold: must be true or false")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise _json_error(web.HTTPBadRequest, "bad_field", f"reason: text of at most {MAX_REASON} characters")
    call_id = request.match_info["call_id"]
    try:
        rows = await desk.store.read(
            "SELECT c.started_at, c.shop, r.status FROM calls AS c LEFT JOIN recordings AS r "
            "ON r.call_id = c.call_id WHERE c.call_id = ?", (call_id,))
        if not rows:
            raise _json_error(web.HTTPNotFound, "no_such_call", "no stored call with this id")
        now = desk.clock()
        if hold:
            held: privacy.Hold | None = await privacy.set_hold(desk.store, call_id, by=user.login, reason=reason,
                                                              now=now)
        else:
            await privacy.clear_hold(desk.store, call_id, by=user.login, now=now)
            held = None
    except StoreError as exc:
        raise store_unavailable("privacy: legal hold", exc) from None
    started_at, shop_id, status = rows[0]
    plan = desk.plans.current
    shop = plan.shops.get(shop_id or plan.default_shop or "")
    days = shop.recordings_days if shop is not None else 0
    log.info("legal hold on call %s %s by %s", call_id, "set" if hold else "cleared", user.login)
    return web.json_response({
        "call_id": call_id,
        "legal_hold": held.to_json() if held is not None else None,
        "recording": status,  # None: the call has no recording
        # When retention would purge it, were it not held (None: kept forever).
        "retention_ends": iso(started_at + days * DAY) if days > 0 else None,
    })


async def export_personal_data(request: web.Request) -> web.StreamResponse:
    user = _require(request, ADMIN)
    desk = request.app[PRIVACY]
    number = _number(request)
    try:
        data = await privacy.export(desk.store, desk.directory, number, by=user.login, now=desk.clock())
    except StoreError as exc:
        raise store_unavailable("privacy: export", exc) from None
    return web.Response(body=data, headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="personal-data-{number.lstrip("+")}.zip"',
        "Cache-Control": "no-store",
    })


async def erase_personal_data(request: web.Request) -> web.StreamResponse:
    user = _require(request, ADMIN)
    desk = request.app[PRIVACY]
    number = _number(request)
    try:
        report = await privacy.erase(desk.store, desk.directory, number, user.login, desk.clock())
    except StoreError as exc:
        raise store_unavailable("privacy: erase", exc) from None
    return web.json_response({"report": report.to_json()})


async def get_privacy_log(request: web.Request) -> web.StreamResponse:
    _require(request, ADMIN)
    try:
        limit = int(request.query.get("limit", "100"))
        before = int(request.query["before"]) if "before" in request.query else None
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "bad_query", "limit and before are whole numbers") from None
    try:
        entries = await privacy.privacy_log(request.app[PRIVACY].store, limit=limit, before=before)
    except StoreError as exc:
        raise store_unavailable("privacy: privacy log", exc) from None
    return web.json_response({"entries": entries})
