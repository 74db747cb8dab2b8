"""Bitrix24's events to the gateway: ``POST /crm/bitrix24/{name}/events``.

OnExternalCallStart (a user clicked a phone number in Bitrix24) starts the
gateway's click-to-call for the agent mapped to that user, from the shop of the
line chosen there, and keeps Bitrix24's CALL_ID for the call, so the sink
finishes that call under it and never registers it again.

Answers: 404 for a sink that is not a Bitrix24 one or has no
``application_token`` (nothing to check events with), 401 for a wrong token,
400 for a body that is not the event, 413 past 64 KiB. Everything else is a
200, also when the call cannot be placed (logged): Bitrix24 would only send
the same click again, and a click must never dial twice.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from connectors.webhook import WebhookRejected, read_body, rejected_response
from crm_bridge.sinks.bitrix24 import Bitrix24Sink, BitrixEventError, CallStart, parse_call_start
from gateway.click_to_call import MAX_REQUEST_ID, ClickToCall, ClickToCallError
from gateway.crm_api import BRIDGE
from gateway.web import CLICK_TO_CALL, _json_error

log = logging.getLogger(__name__)

_STATUS = {"bad_token": web.HTTPUnauthorized, "bad_request": web.HTTPBadRequest}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/crm/bitrix24/{name}/events", events)


async def events(request: web.Request) -> web.Response:
    sink = request.app[BRIDGE].sinks.get(request.match_info["name"])
    if not isinstance(sink, Bitrix24Sink) or sink.config.application_token is None:
        raise _json_error(web.HTTPNotFound, "not_found", "no Bitrix24 sink of that name takes events")
    try:
        body = await read_body(request)  # the webhooks' limit (64 KiB) and 413
    except WebhookRejected as exc:
        return rejected_response(exc)
    try:
        start = parse_call_start(body, sink.config)
    except BitrixEventError as exc:
        log.warning("bitrix24 %s: event refused (%s)", sink.name, exc.code)
        raise _json_error(_STATUS[exc.code], exc.code, exc.message) from None
    if start is None:
        return web.json_response({"ok": True, "ignored": True})
    login = sink.logins.get(start.user_id)
    if login is None:
        log.warning("bitrix24 %s: user %d clicked a number but is mapped to no agent ([[crm.bitrix24]] users)",
                    sink.name, start.user_id)
        return web.json_response({"ok": False, "error": "unknown_user"})
    return web.json_response(await _call(request.app[CLICK_TO_CALL], sink, start, login))


async def _call(click_to_call: ClickToCall, sink: Bitrix24Sink, start: CallStart, login: str) -> dict[str, object]:
    request_id = re.sub(r"[^A-Za-z0-9._:-]", "", start.bitrix_call_id)[:MAX_REQUEST_ID] or "bitrix24"
    shop = _shop_of_line(click_to_call, sink, start.line_number)
    try:
        placed = await click_to_call.call(login, start.phone, shop_id=shop, request_id=request_id)
    except ClickToCallError as exc:
        log.warning("bitrix24 %s: click-to-call for %s not placed: %s", sink.name, login, exc)
        if exc.request is not None:  # placed maybe (uncertain): its finish must not register it
            await _link(sink, exc.request.call_id, start)
        return {"ok": False, "error": exc.code}
    await _link(sink, placed.call_id, start)
    return {"ok": True, "call_id": placed.call_id}


async def _link(sink: Bitrix24Sink, call_id: str, start: CallStart) -> None:
    await sink.ctx.outbox.set_link(sink.name, call_id, start.bitrix_call_id,
                                   {"from_click": True, "user_id": start.user_id, "shown": []})


def _shop_of_line(click_to_call: ClickToCall, sink: Bitrix24Sink, line_number: str | None) -> str | None:
    """The shop of the plan line Bitrix24's LINE_NUMBER names (the config's
    ``lines``, else the number's digits); None: click-to-call chooses."""
    if not line_number:
        return None
    plan = click_to_call.plans.at(click_to_call.clock())
    for number, line in plan.lines.items():
        if sink.config.line_number(number) == line_number:
            return line.shop.shop_id
    return None
