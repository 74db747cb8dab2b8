"""Playing recordings: who may listen, short-lived links, Range streaming, the audit.

| route | who |
|---|---|
| ``GET /api/calls/{call_id}/recording/link`` | whoever may listen: a signed link for the audio element, and the recording's description (duration, waveform) |
| ``GET /api/calls/{call_id}/recording`` | the session's user, or the link's (``?t=``): the audio, with HTTP Range |
| ``GET /api/admin/listens?days=7`` | administrators: the audit of listens |
| ``GET /calls/{call_id}/recording`` | a page that plays it for whoever may listen: the link CRM records carry |

Who may listen: an administrator, any call; a manager, the calls of the
agents of his teams (they rang, answered, talked or placed the call) and of
the customers assigned to them or to himself; an agent, his own calls, only
if ``[recordings] agents_hear_own``. The file is found by the call id, never by
a name from the request. Every response that sends audio is audited: who,
when, which call, how many bytes, which range.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from crm_bridge.store import Store, StoreError
from gateway.auth import Signer, TokenError
from gateway.record import CallRecord, iso
from gateway.users import Directory, Role, User
from gateway.web import CLOCK, DIRECTORY, SIGNER, STATIC, STORE, USER, _json_error, _require
from recordings.storage import READY, Recordings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Player:
    recordings: Recordings
    directory: Path
    agents_hear_own: bool = False
    link_seconds: float = 1800.0


PLAYER = web.AppKey("player", Player)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/calls/{call_id}/recording/link", recording_link)
    app.router.add_get("/api/calls/{call_id}/recording", play)
    app.router.add_get("/api/admin/listens", listens)
    app.router.add_get("/calls/{call_id}/recording", listen_page)


async def listen_page(request: web.Request) -> web.StreamResponse:
    """The page behind a CRM record's link (static: it asks the API, which checks access)."""
    return web.FileResponse(STATIC / "listen.html", headers={"Cache-Control": "no-cache"})


def _purpose(call_id: str) -> str:
    return f"recording:{call_id}"


async def may_listen(store: Store, directory: Directory, user: User, call: CallRecord,
                     agents_hear_own: bool) -> bool:
    if user.role is Role.ADMIN:
        return True
    extensions = {*call.rang, *call.talked, *((call.answered_by,) if call.answered_by else ()),
                  *((call.caller,) if call.direction in ("outbound", "internal") and call.caller else ())}
    if user.role is Role.AGENT:
        return agents_hear_own and bool(extensions & set(user.extensions))
    if user.role is not Role.MANAGER:
        return False
    team = {u.login for u in directory.team_members(user.leads)} | {user.login}
    if any((agent := directory.by_extension(e)) is not None and agent.login in team for e in extensions):
        return True
    if call.customer is None:
        return False
    rows = await store.read(
        "SELECT c.manager FROM contact_phones AS p JOIN contacts AS c ON c.contact_id = p.contact_id "
        "WHERE p.phone = ?", (call.customer,))
    return bool(rows) and rows[0][0] in team


async def _allowed_call(request: web.Request, user: User) -> CallRecord:
    """The call, if this user may hear it; 404 for a call he may not know of."""
    store = request.app[STORE]
    call = await store.call(request.match_info["call_id"])
    player = request.app[PLAYER]
    if call is None or not await may_listen(store, request.app[DIRECTORY], user, call, player.agents_hear_own):
        if call is not None:
            log.warning("recording of call %s refused to %s", call.call_id, user.login)
            raise _json_error(web.HTTPForbidden, "forbidden", "you may not listen to this call")
        raise _json_error(web.HTTPNotFound, "no_such_call", "no such call")
    return call


async def recording_link(request: web.Request) -> web.StreamResponse:
    user = _require(request, (Role.AGENT, Role.MANAGER, Role.ADMIN))
    try:
        call = await _allowed_call(request, user)
        recording = await request.app[PLAYER].recordings.get(call.call_id)
    except StoreError as exc:
        log.error("recording link: %s", exc)
        raise _json_error(web.HTTPServiceUnavailable, "store_unavailable", "try again") from None
    if recording is None:
        raise _json_error(web.HTTPNotFound, "no_recording", "this call has no recording")
    body: dict[str, Any] = {"recording": recording.public(), "url": None, "expires_at": None}
    if recording.status == READY:
        token, claims = request.app[SIGNER].issue(_purpose(call.call_id), user.login,
                                                  request.app[PLAYER].link_seconds)
        body["url"] = f"/api/calls/{call.call_id}/recording?t={token}"
        body["expires_at"] = iso(claims.expires_at)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def play(request: web.Request) -> web.StreamResponse:
    user = request[USER]
    token = request.query.get("t")
    if token is not None:
        try:
            claims = request.app[SIGNER].check(token, _purpose(request.match_info["call_id"]))
        except TokenError as exc:
            raise _json_error(web.HTTPUnauthorized, "bad_link", f"the link is not valid: {exc}") from None
        user = request.app[DIRECTORY].by_login(claims.subject)
        if user is None:
            raise _json_error(web.HTTPUnauthorized, "bad_link", "the link's user no longer exists")
    if user is None:
        raise _json_error(web.HTTPUnauthorized, "login_required", "log in first")
    player = request.app[PLAYER]
    try:
        call = await _allowed_call(request, user)
        recording = await player.recordings.get(call.call_id)
    except StoreError as exc:
        log.error("recording: %s", exc)
        raise _json_error(web.HTTPServiceUnavailable, "store_unavailable", "try again") from None
    if recording is None or recording.status != READY or recording.file is None:
        raise _json_error(web.HTTPNotFound, "no_recording", "this call has no recording to play")
    path = player.directory / recording.file  # a name the gateway made, never one from the request
    if not path.is_file():
        log.error("recording of call %s: file %s is gone", call.call_id, recording.file)
        raise _json_error(web.HTTPNotFound, "no_recording", "the recording's file is missing")
    size = path.stat().st_size
    sent = _bytes_asked(request, size)
    if sent:  # a Range that asks for nothing gets 416 from FileResponse: nothing heard, nothing audited
        try:
            await player.recordings.listened(call.call_id, user.login, at=request.app[CLOCK](), size=sent,
                                             range_=request.headers.get("Range"), remote=request.remote)
        except StoreError as exc:
            log.error("listen of call %s by %s not audited: %s", call.call_id, user.login, exc)
    return web.FileResponse(path, headers={"Content-Type": recording.content_type or "application/octet-stream",
                                           "Cache-Control": "private, no-store"})


def _bytes_asked(request: web.Request, size: int) -> int:
    """How many bytes FileResponse will send for this request's Range (0: none, a 416)."""
    try:
        wanted = request.http_range
    except ValueError:
        return 0
    if wanted.start is None and wanted.stop is None:
        return size
    return len(range(size)[wanted])


async def listens(request: web.Request) -> web.StreamResponse:
    _require(request, (Role.ADMIN,))
    try:
        days = float(request.query.get("days", "7"))
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "bad_days", "days must be a number") from None
    since = request.app[CLOCK]() - max(0.0, days) * 86400
    return web.json_response({"listens": await request.app[PLAYER].recordings.listens(since=since)})
