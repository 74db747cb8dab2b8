"""Bitrix24: the gateway's calls as Bitrix24 "external calls" (REST,
``telephony.externalcall.*``), and the OnExternalCallStart event it sends us.

A call is registered when the first agent's phone rings (Bitrix24 shows its
card to his user and may create a lead), shown to each further agent who rings
and hidden when his phone stops, finished with its status and talk time, and
its recording attached as MP3. Bitrix24's CALL_ID is kept per *our* call id
(``Outbox.set_link``): Bitrix24 may hand one CALL_ID to overlapping calls
between the same numbers, and a call placed from Bitrix24 (OnExternalCallStart)
comes with its CALL_ID and is never registered. The link's data says which
Bitrix24 users see a card, who registered the call and whether it is finished.

Either an incoming-webhook URL (``.../rest/<user>/<code>/``: a secret, so
messages name its host only) or an OAuth application (``portal_url``, tokens
refreshed at ``oauth_url`` and kept in ``crm_tokens``: Bitrix24 rotates the
refresh token on every refresh, so the stored pair wins over the config's).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import aiohttp

from crm_bridge.outbox import Entry
from crm_bridge.sinks import DeliveryError, SinkContext, check_response
from gateway.record import from_iso
from gateway.toml_table import Table
from recordings.transcode import TranscodeError, transcode

log = logging.getLogger(__name__)

KIND = "bitrix24"
OAUTH_URL = "https://oauth.bitrix.info/oauth/token/"
EVENTS = frozenset({"call.ringing", "call.ring_stopped", "call.answered", "call.finished", "recording.ready"})
CARD_EVENTS = frozenset({"call.ring_stopped", "call.answered"})  # only about cards: not taken without them

# STATUS_CODE of telephony.externalcall.finish (SPEC 5.1) by our outcome, and
# for outbound calls that did not connect, by why.
_STATUS = {"answered": "200", "missed": "304", "abandoned": "304", "busy": "486"}
_FAILED_STATUS = {"busy": "486", "congestion": "503", "unavailable": "480"}
_FAILED_OTHERWISE = "603-S"  # cancelled: nobody answered, or the call never connected

# Bitrix24 error codes: heals by waiting (the rate limit, an administrator
# fixing the application's access), or by a fresh access token.
_TEMPORARY_ERRORS = {"QUERY_LIMIT_EXCEEDED", "OVERLOAD_LIMIT", "INTERNAL_SERVER_ERROR", "invalid_token",
                     "NO_AUTH_FOUND", "INVALID_CREDENTIALS", "insufficient_scope", "ACCESS_DENIED"}
_EXPIRED = "expired_token"
_REFRESH_EARLY = 60.0  # seconds before its expiry an access token is renewed


@dataclass(frozen=True)
class Bitrix24Config:
    name: str
    default_user_id: int  # finishes calls no mapped agent took: missed calls land with him
    webhook_url: str | None = field(default=None, repr=False)  # https://x.bitrix24.ru/rest/1/<code>/
    portal_url: str | None = None  # OAuth: https://x.bitrix24.ru
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    oauth_url: str = OAUTH_URL
    application_token: str | None = field(default=None, repr=False)  # checks the events Bitrix24 sends us
    users: Mapping[str, int] = field(default_factory=dict)  # login -> Bitrix24 user id
    crm_create: bool = True  # unknown callers become leads
    show_cards: bool = True
    lines: Mapping[str, str] = field(default_factory=dict)  # E.164 -> LINE_NUMBER
    live_seconds: float = 60.0  # a ring older than this shows no card any more

    @property
    def host(self) -> str:
        return urlsplit(self.webhook_url or self.portal_url or "").netloc

    def line_number(self, dialled: str | None) -> str | None:
        if not dialled:
            return None
        return self.lines.get(dialled) or re.sub(r"\D", "", dialled) or None


def parse(t: Table, name: str, environ: Mapping[str, str], base: Path) -> Bitrix24Config:
    webhook_url = t.secret("webhook_url", environ, "the incoming webhook's URL (https://<portal>/rest/<user>/<code>/)",
                           base)
    portal_url = t.get("portal_url", str, None, 'the portal\'s URL, like "https://example.bitrix24.ru"')
    client_id = t.get("client_id", str, None, "the OAuth application's client_id")
    oauth_url = t.get("oauth_url", str, OAUTH_URL, "the URL that refreshes OAuth tokens")
    if webhook_url is not None:
        if not re.fullmatch(r"https?://[^/\s]+/rest/\S+", webhook_url):
            raise t.fail("webhook_url_env", "a URL like https://example.bitrix24.ru/rest/1/<code>/",
                         urlsplit(webhook_url).netloc or "(no host)")
        if portal_url is not None or client_id is not None:
            raise t.fail("portal_url", "nothing: webhook_url_env is set (one way in: a webhook or OAuth)", portal_url)
        secret = refresh = None
    else:
        if not isinstance(portal_url, str) or not re.fullmatch(r"https?://[^/\s]+/?", portal_url):
            raise t.fail("portal_url", 'the portal\'s URL, like "https://example.bitrix24.ru" '
                         "(or webhook_url_env for an incoming webhook)", portal_url)
        if not client_id:
            raise t.fail("client_id", "the OAuth application's client_id", client_id)
        secret = t.required_secret("client_secret", environ, "the OAuth application's client_secret", base)
        refresh = t.required_secret("refresh_token", environ, "an OAuth refresh token of the application", base)
        portal_url = portal_url.rstrip("/")
    if not oauth_url.startswith(("https://", "http://")):
        raise t.fail("oauth_url", "a URL", oauth_url)
    users = t.get("users", dict, {}, "a table of login = Bitrix24 user id")
    for login, user_id in users.items():
        if not _is_id(user_id):
            raise t.fail(f"users.{login}", "a Bitrix24 user id (an integer > 0)", user_id)
    default_user_id = t.get("default_user_id", int, None, "a Bitrix24 user id (an integer > 0) for missed calls")
    if not _is_id(default_user_id):
        raise t.fail("default_user_id", "a Bitrix24 user id (an integer > 0) for missed calls", default_user_id)
    lines = t.get("lines", dict, {}, 'a table of "+E.164 number" = "LINE_NUMBER"')
    for number, line in lines.items():
        if not re.fullmatch(r"\+\d{6,15}", number) or not isinstance(line, str) or not line:
            raise t.fail(f"lines.{number}", 'a "+E.164" number = a LINE_NUMBER string', line)
    live = t.get("live_seconds", (int, float), 60, "seconds > 0 a ringing call may be late to show a card")
    if live <= 0:
        raise t.fail("live_seconds", "seconds > 0 a ringing call may be late to show a card", live)
    return Bitrix24Config(
        name=name, default_user_id=default_user_id, webhook_url=_slash(webhook_url), portal_url=portal_url,
        client_id=client_id, client_secret=secret, refresh_token=refresh, oauth_url=oauth_url,
        application_token=t.secret("application_token", environ, "the application_token Bitrix24 sends", base),
        users=dict(users), crm_create=t.get("crm_create", bool, True, "true or false"),
        show_cards=t.get("show_cards", bool, True, "true or false"), lines=dict(lines), live_seconds=float(live))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _slash(url: str | None) -> str | None:
    return url if url is None or url.endswith("/") else url + "/"


# -- the sink ---------------------------------------------------------------------


class Bitrix24Sink:
    kind = KIND

    def __init__(self, config: Bitrix24Config, ctx: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.ctx = ctx
        self.events = EVENTS if config.show_cards else EVENTS - CARD_EVENTS
        self.logins = {user_id: login for login, user_id in config.users.items()}  # for OnExternalCallStart
        self._session: aiohttp.ClientSession | None = None
        self._token: tuple[str, str, float] | None = None  # OAuth: access, refresh, expires at
        self._refreshing = asyncio.Lock()

    async def deliver(self, entry: Entry) -> None:
        data = entry.data
        if entry.event == "call.finished":
            await self._finished(data, retried=entry.attempts > 0)
        elif entry.event == "recording.ready":
            await self._recording(data["call_id"])
        elif entry.event == "call.ringing":
            await self._ringing(data)
        elif entry.event == "call.ring_stopped":
            await self._ring_stopped(data)
        elif entry.event == "call.answered":
            await self._answered(data)

    # -- cards ------------------------------------------------------------------------

    async def _ringing(self, data: dict[str, Any]) -> None:
        if not data.get("customer") or data["direction"] not in ("inbound", "outbound"):
            return  # an internal call, or a withheld number: nothing for the CRM
        user = self.config.users.get(data.get("agent") or "")
        link = await self.ctx.outbox.link(self.name, data["call_id"])
        if link is None:
            show = self.config.show_cards and self._fresh(data["at"])
            params = self._register_params(data, user, extension=data["extension"], show=show)
            await self._register(data["call_id"], params, shown=[user] if show and user else [], user=user)
        elif user is not None and self._fresh(data["at"]):
            await self._show(data["call_id"], link, user)

    async def _answered(self, data: dict[str, Any]) -> None:
        # The others' cards are hidden by their own ring_stopped (answered
        # elsewhere). An agent who talks without having rung (a transfer, a
        # pickup) gets the card now.
        user = self.config.users.get(data.get("agent") or "")
        link = await self.ctx.outbox.link(self.name, data["call_id"])
        if link is not None and user is not None and self._fresh(data["at"]):
            await self._show(data["call_id"], link, user)

    async def _ring_stopped(self, data: dict[str, Any]) -> None:
        user = self.config.users.get(data.get("agent") or "")
        link = await self.ctx.outbox.link(self.name, data["call_id"])
        if link is None or user is None:
            return
        remote, kept = link
        if user in kept.get("shown", []) and not kept.get("finished"):
            await self._call("telephony.externalcall.hide", {"CALL_ID": remote, "USER_ID": [user]})
            kept["shown"] = [u for u in kept["shown"] if u != user]
            await self.ctx.outbox.set_link(self.name, data["call_id"], remote, kept)

    async def _show(self, call_id: str, link: tuple[str, dict[str, Any]], user: int) -> None:
        remote, kept = link
        if not self.config.show_cards or user in kept.get("shown", []) or kept.get("finished"):
            return
        await self._call("telephony.externalcall.show", {"CALL_ID": remote, "USER_ID": [user]})
        kept["shown"] = [*kept.get("shown", []), user]
        await self.ctx.outbox.set_link(self.name, call_id, remote, kept)

    def _fresh(self, at: str) -> bool:
        return self.ctx.clock() - (from_iso(at) or 0.0) <= self.config.live_seconds

    # -- registering and finishing -----------------------------------------------------------

    def _register_params(self, data: dict[str, Any], user: int | None, *, extension: str | None,
                         show: bool) -> dict[str, Any]:
        inbound = data["direction"] == "inbound"
        params: dict[str, Any] = {"USER_ID": user} if user is not None else (
            {"USER_PHONE_INNER": extension} if extension else {"USER_ID": self.config.default_user_id})
        started = datetime.fromisoformat(data["started_at"]).astimezone(ZoneInfo(self.ctx.zone_of(data.get("shop"))))
        params.update({"PHONE_NUMBER": data["customer"], "TYPE": 2 if inbound else 1,
                       "CALL_START_DATE": started.isoformat(timespec="seconds"),
                       "CRM_CREATE": int(inbound and self.config.crm_create), "SHOW": int(show)})
        line = self.config.line_number(data.get("dialled")) if inbound else None
        if line:
            params["LINE_NUMBER"] = line
        return params

    async def _register(self, call_id: str, params: dict[str, Any], *, shown: list[int],
                        user: int | None) -> tuple[str, dict[str, Any]]:
        # Bitrix24 answers the same CALL_ID to a repeat with identical
        # parameters (30 minutes): a retry after a lost answer is one call.
        result = await self._call("telephony.externalcall.register", params)
        remote = result.get("CALL_ID") if isinstance(result, dict) else None
        if not isinstance(remote, str) or not remote:
            raise DeliveryError(f"telephony.externalcall.register on {self.config.host}: no CALL_ID in the answer")
        kept: dict[str, Any] = {"shown": shown, "user_id": user}
        await self.ctx.outbox.set_link(self.name, call_id, remote, kept)
        return remote, kept

    async def _finished(self, data: dict[str, Any], *, retried: bool) -> None:
        if not data.get("customer") or data["direction"] not in ("inbound", "outbound"):
            return
        call_id = data["call_id"]
        outbound = data["direction"] == "outbound"
        agents: dict[str, str] = data.get("agents") or {}
        owner = self.config.users.get(data.get("owner_agent") or "")  # the last who talked
        caller = self.config.users.get(agents.get(data.get("caller") or "", "")) if outbound else None
        link = await self.ctx.outbox.link(self.name, call_id)
        if link is None:  # no ring reached us: an outbound call, a restart, a webhook PBX
            user = caller if outbound else owner
            extension = data.get("caller") if outbound else data.get("answered_by")
            link = await self._register(call_id, self._register_params(data, user, extension=extension, show=False),
                                        shown=[], user=user)
        remote, kept = link
        if kept.get("finished"):
            return
        # Who holds the call in Bitrix24: who answered; for an outbound call
        # its caller (or the user who clicked); else the missed calls' owner.
        user = ((caller or kept.get("user_id")) if outbound else owner) or self.config.default_user_id
        for other in kept.get("shown", []):
            if other != user:
                await self._call("telephony.externalcall.hide", {"CALL_ID": remote, "USER_ID": [other]})
        missed = data["outcome"] in ("missed", "abandoned") and not outbound
        params = {"CALL_ID": remote, "USER_ID": user, "DURATION": int(round(data.get("talk_seconds") or 0)),
                  "STATUS_CODE": _status_code(data), "ADD_TO_CHAT": int(missed)}
        try:
            await self._call("telephony.externalcall.finish", params)
        except DeliveryError:
            # An earlier attempt may have finished it and lost the answer:
            # Bitrix24 then refuses a second finish.
            if not (retried and await self._is_finished(remote)):
                raise
            log.info("crm %s: call %s was finished in Bitrix24 by an earlier attempt", self.name, call_id)
        await self.ctx.outbox.set_link(self.name, call_id, remote, {**kept, "shown": [], "finished": True})

    async def _is_finished(self, remote: str) -> bool:
        """Whether Bitrix24 has the call's statistics row (written by finish)."""
        found = await self._call("voximplant.statistic.get", {"FILTER": {"CALL_ID": remote}})
        return bool(found)

    # -- recordings ------------------------------------------------------------------------

    async def _recording(self, call_id: str) -> None:
        link = await self.ctx.outbox.link(self.name, call_id)
        if link is None:
            return  # the call is not in Bitrix24 (internal, or a withheld number)
        remote, kept = link
        if not kept.get("finished"):
            raise DeliveryError(f"call {call_id} is not finished in Bitrix24 (its finish failed): "
                                "retry this after the finish", permanent=True)
        kept_file = await self.ctx.recording_file(call_id)
        if kept_file is None:
            raise DeliveryError(f"no recording file of call {call_id}", permanent=True)
        try:
            mp3 = await asyncio.to_thread(_mp3, kept_file.path, kept_file.content_type)
        except (OSError, TranscodeError) as exc:
            raise DeliveryError(f"recording of call {call_id} not converted to MP3: {exc}", permanent=True) from exc
        name = re.sub(r"[^A-Za-z0-9._-]", "_", call_id) + ".mp3"
        await self._call("telephony.externalCall.attachRecord",
                         {"CALL_ID": remote, "FILENAME": name, "FILE_CONTENT": base64.b64encode(mp3).decode()})

    # -- REST ------------------------------------------------------------------------------

    async def _call(self, method: str, params: dict[str, Any]) -> Any:
        """One REST method; its ``result``. An expired OAuth token is renewed once."""
        if self.config.webhook_url is not None:
            return await self._post(f"{self.config.webhook_url}{method}.json", method, params)
        token = await self._access_token()
        try:
            return await self._post(f"{self.config.portal_url}/rest/{method}.json", method, {**params, "auth": token})
        except _Expired:
            token = await self._access_token(renew=token)
            return await self._post(f"{self.config.portal_url}/rest/{method}.json", method, {**params, "auth": token})

    async def _post(self, url: str, method: str, params: dict[str, Any]) -> Any:
        what = f"{method} on {self.config.host}"
        async with self._http().post(url, json=params, allow_redirects=False) as response:
            try:
                body = await response.json(content_type=None)
            except ValueError:
                body = None
            if isinstance(body, dict) and "error" in body:
                error = str(body["error"])
                if error == _EXPIRED and self.config.webhook_url is None:
                    raise _Expired(f"{what}: the access token expired again after a refresh")
                if error in _TEMPORARY_ERRORS or 200 <= response.status < 300:
                    description = str(body.get("error_description") or "")[:200]
                    raise DeliveryError(f"{what}: HTTP {response.status} {error} {description}".rstrip())
            await check_response(response, what)  # other errors by their status: a 400 is for good
            if not isinstance(body, dict) or "result" not in body:
                raise DeliveryError(f"{what}: HTTP {response.status} without a result")
            return body["result"]

    async def _access_token(self, *, renew: str | None = None) -> str:
        """The OAuth access token: the stored one while it lasts, else a fresh
        pair (stored before use: the old refresh token stops working)."""
        async with self._refreshing:
            if self._token is None:
                rows = await self.ctx.outbox.store.read(
                    "SELECT access_token, refresh_token, expires_at FROM crm_tokens WHERE sink = ?", (self.name,))
                stored = (str(rows[0][0]), str(rows[0][1]), float(rows[0][2])) if rows else None
                self._token = stored or ("", self.config.refresh_token or "", 0.0)
            access, refresh, expires_at = self._token
            if access and access != renew and expires_at - _REFRESH_EARLY > self.ctx.clock():
                return access
            query = {"grant_type": "refresh_token", "client_id": self.config.client_id or "",
                     "client_secret": self.config.client_secret or "", "refresh_token": refresh}
            what = f"OAuth refresh at {urlsplit(self.config.oauth_url).netloc}"
            async with self._http().get(self.config.oauth_url, params=query, allow_redirects=False) as response:
                await check_response(response, what)
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
            if not isinstance(body, dict) or not body.get("access_token") or not body.get("refresh_token"):
                raise DeliveryError(f"{what}: no tokens in the answer")
            expires = self.ctx.clock() + float(body.get("expires_in") or 3600)
            self._token = (str(body["access_token"]), str(body["refresh_token"]), expires)
            await self.ctx.outbox.store.write((
                "INSERT INTO crm_tokens (sink, access_token, refresh_token, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sink) DO UPDATE SET access_token = excluded.access_token, "
                "refresh_token = excluded.refresh_token, expires_at = excluded.expires_at",
                (self.name, *self._token)))
            return self._token[0]

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Expired(DeliveryError):
    """Bitrix24 answered expired_token: renew the access token and try again
    (a second one in a row is a temporary failure)."""


def _status_code(data: dict[str, Any]) -> str:
    if data["outcome"] == "failed":
        return _FAILED_STATUS.get(data.get("reason") or "", _FAILED_OTHERWISE)
    return _STATUS.get(data["outcome"], _FAILED_OTHERWISE)


def _mp3(path: Path, content_type: str) -> bytes:
    """The recording as MP3 (Bitrix24 takes MP3 or WAV; ours are Opus by default)."""
    source = path.read_bytes()
    if content_type == "audio/mpeg":
        return source
    return transcode(source, fmt="mp3", bitrate="32k").data


def build(config: Bitrix24Config, ctx: SinkContext) -> Bitrix24Sink:
    return Bitrix24Sink(config, ctx)


# -- OnExternalCallStart ------------------------------------------------------------------


class BitrixEventError(Exception):
    """An event we do not take: ``bad_token`` (not from the portal) or ``bad_request``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class CallStart:
    """A Bitrix24 user clicked a number: call it for him."""

    bitrix_call_id: str
    user_id: int
    phone: str
    line_number: str | None
    crm_entity_type: str | None
    crm_entity_id: int | None


def parse_call_start(body: bytes, config: Bitrix24Config) -> CallStart | None:
    """The OnExternalCallStart event in ``body`` (form-urlencoded, PHP-style
    keys like ``data[USER_ID]``); None for another event. The application
    token is checked first, in constant time."""
    try:
        fields = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise BitrixEventError("bad_request", "the body is not form-urlencoded UTF-8") from None
    token = fields.get("auth[application_token]", "").encode()
    expected = (config.application_token or "").encode()
    if not expected or not hmac.compare_digest(token, expected):
        raise BitrixEventError("bad_token", "auth[application_token] is not this portal's application token")
    if fields.get("event", "").upper() != "ONEXTERNALCALLSTART":
        return None
    user_id = fields.get("data[USER_ID]", "")
    phone = fields.get("data[PHONE_NUMBER_INTERNATIONAL]") or fields.get("data[PHONE_NUMBER]", "")
    call_id = fields.get("data[CALL_ID]", "")
    if not user_id.isdigit() or not phone or not call_id:
        raise BitrixEventError("bad_request", "data[USER_ID], data[PHONE_NUMBER] and data[CALL_ID] are required")
    entity_id = fields.get("data[CRM_ENTITY_ID]", "")
    return CallStart(bitrix_call_id=call_id, user_id=int(user_id), phone=phone,
                     line_number=fields.get("data[LINE_NUMBER]") or None,
                     crm_entity_type=fields.get("data[CRM_ENTITY_TYPE]") or None,
                     crm_entity_id=int(entity_id) if entity_id.isdigit() else None)
