"""The gateway's HTTP server: pages, JSON API, the agents' websocket, metrics.

One aiohttp application; its state is typed (``web.AppKey``), nothing global.
Users log in with a password and get a session cookie (HttpOnly, SameSite);
every API route names the roles it admits (401 without a session, 403 with the
wrong role). The websocket takes a short-lived signed token in its first frame,
never in the URL, and refuses browser origins not in the allow-list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crm_bridge.store import CallSummary, Store, StoreError
from dashboards.rollups import Rollups
from gateway.auth import Signer, TokenError, verify_password
from gateway.click_to_call import MAX_REQUEST_ID, ClickToCall, ClickToCallError
from gateway.config import ConfigError, HttpConfig
from gateway.hub import CLOSE_AUTH, CLOSE_BAD_FRAME, Hub
from gateway.metrics import Metrics
from gateway.record import iso
from gateway.presence import STATUSES, Presence
from gateway.users import Directory, Role, User

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SESSION_COOKIE = "cti_session"
WS_TOKEN_TTL = 300.0
AUTH_FRAME_TIMEOUT = 10.0
MAX_CLIENT_FRAME = 4096
MAX_NOTE = 2000
WS_ROLES = (Role.AGENT, Role.MANAGER, Role.ADMIN)

HTTP = web.AppKey("http", HttpConfig)
STORE = web.AppKey("store", Store)
HUB = web.AppKey("hub", Hub)
SIGNER = web.AppKey("signer", Signer)
DIRECTORY = web.AppKey("directory", Directory)
METRICS = web.AppKey("metrics", Metrics)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
RELOAD: web.AppKey[Callable[[], str]] = web.AppKey("reload")
PRESENCE = web.AppKey("presence", Presence)
CLICK_TO_CALL = web.AppKey("click_to_call", ClickToCall)
ROLLUPS = web.AppKey("rollups", Rollups)  # optional: a call's result changes its roll-ups
USER: web.RequestKey[User | None] = web.RequestKey("user")  # the logged-in user, or None

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    *,
    http: HttpConfig,
    store: Store,
    hub: Hub,
    signer: Signer,
    directory: Directory,
    metrics: Metrics,
    clock: Callable[[], float] = time.time,
    reload: Callable[[], str] | None = None,
    presence: Presence | None = None,
    click_to_call: ClickToCall | None = None,
) -> web.Application:
    app = web.Application(middlewares=[_session_middleware], client_max_size=256 * 1024)
    app[HTTP], app[STORE], app[HUB], app[SIGNER] = http, store, hub, signer
    app[DIRECTORY], app[METRICS], app[CLOCK] = directory, metrics, clock
    app[RELOAD] = reload or (lambda: "nothing to reload: no config file")
    if presence is not None:
        app[PRESENCE] = presence
        app.router.add_get("/api/me/status", my_status)
        app.router.add_put("/api/me/status", set_my_status)
    if click_to_call is not None:
        app[CLICK_TO_CALL] = click_to_call
        app.router.add_post("/api/calls", place_call)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/embed.js", _page("embed.js"))
    app.router.add_static("/static/", STATIC, follow_symlinks=False, append_version=False)
    app.on_response_prepare.append(_no_cache_static)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/token", ws_token)
    app.router.add_get("/api/agents", agents)
    app.router.add_get("/api/calls/recent", recent_calls)
    app.router.add_post("/api/calls/{call_id}/result", set_result)
    app.router.add_post("/api/admin/reload", reload_config)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/metrics", metrics_page)
    app.on_shutdown.append(_close_hub)
    return app


async def _no_cache_static(request: web.Request, response: web.StreamResponse) -> None:
    """Pages and their scripts revalidate, so an upgrade never mixes old and new files."""
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()


# -- sessions and roles ----------------------------------------------------------


@web.middleware
async def _session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[USER] = None
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        try:
            claims = request.app[SIGNER].check(cookie, "session")
        except TokenError:
            pass
        else:
            request[USER] = request.app[DIRECTORY].by_login(claims.subject)
    return await handler(request)


def _require(request: web.Request, roles: Iterable[Role]) -> User:
    user = request[USER]
    if user is None:
        raise _json_error(web.HTTPUnauthorized, "login_required", "log in first")
    if user.role not in set(roles):
        raise _json_error(web.HTTPForbidden, "forbidden", f"not allowed for role {user.role.value}")
    return user


def _json_error(kind: type[web.HTTPException], code: str, message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": code, "message": message}), content_type="application/json")


def store_unavailable(what: str, exc: Exception) -> web.HTTPException:
    """The 503 of a route whose store read or write failed, logged as "<what>: <error>"."""
    log.error("%s: %s", what, exc)
    return _json_error(web.HTTPServiceUnavailable, "store_unavailable", "the store is not answering, try again")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        # Also a CSRF guard: a cross-site form cannot send application/json.
        raise _json_error(web.HTTPUnsupportedMediaType, "json_required", "send application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _json_error(web.HTTPBadRequest, "bad_json", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _json_error(web.HTTPBadRequest, "bad_json", "expected a JSON object")
    return body


def _page(name: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return handler


# -- login -------------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    body = await _json_body(request)
    name, password = body.get("login"), body.get("password")
    if not isinstance(name, str) or not isinstance(password, str):
        raise _json_error(web.HTTPBadRequest, "bad_request", "login and password are required")
    user = request.app[DIRECTORY].by_login(name)
    # The hash is checked off the loop (it is slow on purpose); an unknown user
    # costs the same, so response time does not tell who exists.
    stored = user.password_hash if user else _DUMMY_HASH
    ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, password, stored)
    if user is None or not ok:
        log.info("failed login for %r from %s", name[:64], request.remote)
        raise _json_error(web.HTTPUnauthorized, "bad_credentials", "wrong login or password")
    http = request.app[HTTP]
    cookie, _ = request.app[SIGNER].issue("session", user.login, http.session_hours * 3600)
    response = web.json_response({"user": user.public()})
    response.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="Strict", secure=http.cookie_secure,
                        max_age=int(http.session_hours * 3600), path="/")
    log.info("user %s logged in", user.login)
    return response


_DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


async def logout(request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        try:
            request.app[SIGNER].revoke(request.app[SIGNER].check(cookie, "session"))
        except TokenError:
            pass
    response = web.json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.StreamResponse:
    user = _require(request, Role)
    http = request.app[HTTP]
    return web.json_response({"user": user.public(), "call_results": list(http.call_results)})


async def ws_token(request: web.Request) -> web.StreamResponse:
    # Agents get their pops over it; managers and administrators their notices.
    user = _require(request, WS_ROLES)
    token, claims = request.app[SIGNER].issue("ws", user.login, WS_TOKEN_TTL)
    return web.json_response({"token": token, "expires_at": iso(claims.expires_at)},
                             headers={"Cache-Control": "no-store"})


# -- API ---------------------------------------------------------------------------


async def agents(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.MANAGER, Role.ADMIN])
    directory, online = request.app[DIRECTORY], request.app[HUB].online()
    people = [u for u in directory if u.role is Role.AGENT]
    if user.role is Role.MANAGER:
        people = [u for u in people if u.team in user.leads]
    return web.json_response({"agents": [
        {"login": u.login, "name": u.name, "team": u.team, "extensions": list(u.extensions),
         "connected": u.login in online, "connections": online.get(u.login, 0)}
        for u in sorted(people, key=lambda u: u.login)
    ]})


def _summary(call: CallSummary) -> dict[str, Any]:
    return {"call_id": call.call_id, "started_at": iso(call.started_at), "direction": call.direction,
            "caller": call.caller, "dialled": call.dialled, "outcome": call.outcome,
            "answered_by": call.answered_by, "talk_seconds": round(call.talk_seconds, 1),
            "result": call.result, "note": call.note}


async def recent_calls(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.AGENT])
    calls = await request.app[STORE].calls_of_agent(user.extensions, limit=20) if user.extensions else []
    return web.json_response({"calls": [_summary(c) for c in calls]})


async def set_result(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.AGENT])
    call_id = request.match_info["call_id"]
    body = await _json_body(request)
    result, note = body.get("result"), body.get("note")
    http = request.app[HTTP]
    if result not in http.call_results:
        raise _json_error(web.HTTPBadRequest, "bad_result", f"result must be one of {', '.join(http.call_results)}")
    if note is not None and (not isinstance(note, str) or len(note) > MAX_NOTE):
        raise _json_error(web.HTTPBadRequest, "bad_note", f"note must be text of at most {MAX_NOTE} characters")
    hub, store = request.app[HUB], request.app[STORE]
    # An agent sets results only on calls that rang his phones: live ones from the
    # hub, finished ones from the store.
    mine = any(p.call_id == call_id for p in hub.live_pops(user.login)) or hub.had_pop(call_id, user.login)
    if not mine:
        calls = await store.calls_of_agent(user.extensions, limit=200) if user.extensions else []
        mine = any(c.call_id == call_id for c in calls)
    if not mine:
        raise _json_error(web.HTTPNotFound, "no_such_call", "no call of yours with this id")
    try:
        rollups = request.app.get(ROLLUPS)
        await store.set_result(call_id, str(result), note or None, user.login, request.app[CLOCK](),
                               also=rollups.refresh(call_id) if rollups is not None else ())
    except StoreError as exc:
        log.error("result of call %s not saved: %s", call_id, exc)
        raise _json_error(web.HTTPServiceUnavailable, "store_unavailable", "could not save, try again") from None
    return web.json_response({"call_id": call_id, "result": result, "note": note or None})


async def my_status(request: web.Request) -> web.StreamResponse:
    user = _require(request, [Role.AGENT])
    return web.json_response(request.app[PRESENCE].state(user.login).public())


async def set_my_status(request: web.Request) -> web.StreamResponse:
    """The agent's pause / do-not-disturb; ``{"wrap_up": "end"}`` ends his wrap-up early."""
    user = _require(request, [Role.AGENT])
    body = await _json_body(request)
    presence = request.app[PRESENCE]
    status = body.get("status")
    if status is not None:
        if status not in STATUSES:
            raise _json_error(web.HTTPBadRequest, "bad_status", f"status must be one of {', '.join(STATUSES)}")
        presence.set_status(user.login, str(status))
    if body.get("wrap_up") == "end":
        presence.end_wrap_up(user.login)
    return web.json_response(presence.state(user.login).public())


# What each click-to-call failure answers (gateway.click_to_call.ClickToCallError codes).
_CALL_ERROR_STATUS: dict[str, type[web.HTTPException]] = {
    "bad_number": web.HTTPBadRequest,
    "bad_shop": web.HTTPBadRequest,
    "bad_request_id": web.HTTPBadRequest,
    "no_extension": web.HTTPBadRequest,
    "originate_failed": web.HTTPBadGateway,  # the PBX refused: its message
    "pbx_unavailable": web.HTTPServiceUnavailable,  # not connected: nothing was sent
    "store_unavailable": web.HTTPServiceUnavailable,  # nothing was sent
    "originate_uncertain": web.HTTPGatewayTimeout,  # sent, not confirmed: it may still ring
}


async def place_call(request: web.Request) -> web.StreamResponse:
    """Click-to-call: ``{"number", "shop"?, "request_id"}``; 201 for a new
    request, 200 (same body) for a repeated request id, which never dials again."""
    user = _require(request, [Role.AGENT])
    body = await _json_body(request)
    number, shop, request_id = body.get("number"), body.get("shop"), body.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise _json_error(web.HTTPBadRequest, "bad_request_id",
                          f"request_id is required: a string of at most {MAX_REQUEST_ID} characters")
    if not isinstance(number, str):
        raise _json_error(web.HTTPBadRequest, "bad_number", "number is required: the customer's phone number")
    if shop is not None and not isinstance(shop, str):
        raise _json_error(web.HTTPBadRequest, "bad_shop", "shop must be a shop id from the number plan")
    try:
        placed = await request.app[CLICK_TO_CALL].call(user, number, shop_id=shop, request_id=request_id)
    except ClickToCallError as exc:
        raise _json_error(_CALL_ERROR_STATUS.get(exc.code, web.HTTPBadGateway), exc.code, exc.message) from None
    return web.json_response(placed.public(), status=200 if placed.repeated else 201)


async def reload_config(request: web.Request) -> web.StreamResponse:
    """Admin: re-read the number plan (as SIGHUP does); calls in progress keep theirs."""
    _require(request, [Role.ADMIN])
    try:
        message = request.app[RELOAD]()
    except ConfigError as exc:
        raise _json_error(web.HTTPUnprocessableEntity, "bad_config", str(exc)) from None
    return web.json_response({"ok": True, "message": message})


async def metrics_page(request: web.Request) -> web.StreamResponse:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- the agents' websocket ---------------------------------------------------------


def _origin_allowed(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser
    own = f"{request.scheme}://{request.host}"
    return origin == own or origin in request.app[HTTP].allowed_origins


async def websocket(request: web.Request) -> web.StreamResponse:
    if not _origin_allowed(request):
        log.warning("websocket refused: origin %r not allowed", request.headers.get("Origin", "")[:100])
        raise web.HTTPForbidden(text="origin not allowed")
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_CLIENT_FRAME, compress=False)
    await ws.prepare(request)
    user = await _authenticate(request, ws)
    if user is None:
        return ws
    hub = request.app[HUB]
    conn = hub.attach(user, ws)
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                continue
            frame = _parse_frame(message.data)
            if frame is None:
                hub.send_to(conn, {"type": "error", "code": "bad_frame", "message": "expected a JSON object"})
            elif frame.get("type") == "ping":
                hub.send_to(conn, {"type": "pong"})
            elif frame.get("type") == "ack":
                pass
            else:
                hub.send_to(conn, {"type": "error", "code": "unknown_type",
                                   "message": f"unknown frame type {str(frame.get('type'))[:40]!r}"})
            # Let the sender run between client frames: a burst of pings must not
            # fill this tab's queue before its answers can go out.
            await asyncio.sleep(0)
    finally:
        await hub.detach(conn)
    return ws


async def _authenticate(request: web.Request, ws: web.WebSocketResponse) -> User | None:
    async def refuse(code: int, error: str, message: str) -> None:
        await ws.send_str(json.dumps({"type": "error", "code": error, "message": message}))
        await ws.close(code=code, message=message.encode()[:120])

    try:
        message = await ws.receive(timeout=AUTH_FRAME_TIMEOUT)
    except asyncio.TimeoutError:
        await refuse(CLOSE_AUTH, "auth_failed", "no auth frame")
        return None
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None  # gone, or closed by aiohttp: a frame of 4 KiB or more (1009), text not UTF-8 (1007)
    frame = _parse_frame(message.data) if message.type is WSMsgType.TEXT else None
    if frame is None or frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
        await refuse(CLOSE_BAD_FRAME, "bad_frame", 'the first frame must be {"type": "auth", "token": "..."}')
        return None
    try:
        claims = request.app[SIGNER].check(frame["token"], "ws")
    except TokenError as exc:
        log.info("websocket auth failed from %s: %s", request.remote, exc)
        await refuse(CLOSE_AUTH, "auth_failed", str(exc))
        return None
    user = request.app[DIRECTORY].by_login(claims.subject)
    if user is None or user.role not in WS_ROLES:
        await refuse(CLOSE_AUTH, "auth_failed", "no such user, or a role that gets no pops or notices")
        return None
    return user


def _parse_frame(data: Any) -> dict[str, Any] | None:
    try:
        frame = json.loads(data)
    except (ValueError, TypeError, RecursionError):  # not JSON, or nested too deep for the parser
        return None
    return frame if isinstance(frame, dict) else None
