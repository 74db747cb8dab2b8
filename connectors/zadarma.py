"""Zadarma (and Novofon, the same API) call notifications.

One URL per account, ``/webhooks/zadarma/{account}`` (``/webhooks/novofon/...``
for Novofon): ``GET ?zd_echo=X`` answers X (Zadarma checks the URL when it is
saved); ``POST`` carries one ``NOTIFY_*`` event as a form, signed in the header
``Signature`` = base64 of the *hex* HMAC-SHA1, keyed by the API secret, of two
or three of the event's fields (``SIGNED_FIELDS``). The signature covers only
those fields and has no timestamp, so an optional source-IP allow-list helps.

Zadarma says nothing about order or retries, and its events carry no time but
the call's start (``call_start``, in the account's time zone, no zone given).
So a call is rebuilt from the *facts* of all its events, not from their order:
who called which number, which extensions rang, who answered, how it ended
(disposition, talk ``duration``), the recording id. The end is when the
gateway received ``NOTIFY_END`` (the inbox keeps that time); the answer is the
end minus the talk duration.

Routing: the reply to ``NOTIFY_START`` may send the call to an extension
(``{"redirect": "101", ...}``); the routing function gets ``route_deadline``
(1 s) and after it, or on any error, the reply carries nothing and the PBX
follows its own scenario.

Recordings (``fetch_recording``): the id a call's events give
(``call_id_with_rec``) is asked of the API, ``GET /v1/pbx/record/request/``,
which answers a temporary link to the file. The API request is signed as
Zadarma's own clients sign it (``api_signature``) with the account's API key
(``options.api_key``) and secret; the link itself needs no credentials.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from yarl import URL

from connectors.download import (
    ProviderClient,
    MAX_ANSWER,
    MAX_RECORDING,
    TIMEOUT,
    Answer,
    RecordingFetchFailed,
    fetch,
    file_of,
    is_web_url,
)
from connectors.webhook import (
    Accepted,
    Account,
    Decide,
    Intake,
    RecordingNotReady,
    Request,
    WebhookRejected,
    account_of,
    plausible_duration,
    plausible_time,
    read_body,
    rejected_response,
    with_plus,
)
from gateway.events import (
    CallEvent,
    DialStatus,
    LegBridged,
    LegCreated,
    LegDialEnded,
    LegDialled,
    LegHangupRequested,
    LegHungUp,
    LegRinging,
    PartyKind,
    RecordingStarted,
)

log = logging.getLogger(__name__)

# The fields each event's signature covers, in order (Zadarma's PHP SDK).
SIGNED_FIELDS: Mapping[str, tuple[str, ...]] = {
    "NOTIFY_START": ("caller_id", "called_did", "call_start"),
    "NOTIFY_INTERNAL": ("caller_id", "called_did", "call_start"),
    "NOTIFY_END": ("caller_id", "called_did", "call_start"),
    "NOTIFY_IVR": ("caller_id", "called_did", "call_start"),
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}
API_BASES = {"zadarma": "https://api.zadarma.com", "novofon": "https://api.novofon.com"}
RECORD_REQUEST = "/v1/pbx/record/request/"
# Zadarma documents no answer for "the file is not made yet"; these words in
# an error's message are read as that (an assumption: the caller retries anyway).
_NOT_READY = re.compile(r"not (?:found|ready|exist)|no record|не найден|не готов", re.IGNORECASE)
RETURN_TIMEOUT = 20  # seconds a redirected call rings the manager before it goes back to the scenario
BRIDGE = "zadarma-talk"


def signature(secret: str, fields: Mapping[str, str], event: str) -> str:
    signed = "".join(fields.get(name, "") for name in SIGNED_FIELDS[event])
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def api_signature(secret: str, method: str, params: Mapping[str, str]) -> tuple[str, str]:
    """The query string and the ``Authorization`` signature of an API request,
    as Zadarma's clients (user-api-v1 ``lib/Client.php``, user-api-py-v1) make
    them: the parameters sorted by name and URL-encoded (spaces as '+'), then
    base64 of the *hex* HMAC-SHA1, keyed by the secret, of the method's path +
    that query + the hex MD5 of that query. The header is ``key:signature``."""
    query = urlencode(sorted(params.items()))
    signed = method + query + hashlib.md5(query.encode()).hexdigest()
    digest = hmac.new(secret.encode(), signed.encode(), hashlib.sha1).hexdigest()
    return query, base64.b64encode(digest.encode()).decode()


def _form(body: bytes) -> dict[str, str]:
    return dict(_parsed(body))


@lru_cache(maxsize=8192)
def _parsed(body: bytes) -> tuple[tuple[str, str], ...]:
    """A body's fields; a call is rebuilt from all its bodies at each event, so
    each body is parsed once, not once per later event of its call."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "bad_body", "the body is not UTF-8") from None
    return tuple(parse_qsl(text.strip(), keep_blank_values=True))


@lru_cache(maxsize=1024)
def _local_time(text: str, zone: str) -> float:
    at = plausible_time(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo(zone)).timestamp())
    if at is None:
        raise ValueError(f"{text} is before 1970 or too late")
    return at


def check(account: Account, body: bytes, header: str | None) -> Accepted | None:
    """Verify and identify one POSTed event; None for an event type this
    gateway does not use (answered 200, not stored)."""
    fields = _form(body)
    event = fields.get("event", "")
    if event not in SIGNED_FIELDS:
        return None
    missing = [name for name in SIGNED_FIELDS[event] if name not in fields]
    if missing:
        raise WebhookRejected(400, "bad_event", f"{event} without {', '.join(missing)}")
    expected = signature(account.secrets["secret"], fields, event)
    # Bytes, not str: compare_digest refuses a str with non-ASCII characters (a 500).
    given = (header or "").strip().encode("utf-8", "surrogateescape")
    if header is None or not hmac.compare_digest(given, expected.encode()):
        raise WebhookRejected(401, "bad_signature", "the Signature header does not match the body")
    call = fields.get("pbx_call_id", "")
    if not call:
        raise WebhookRejected(400, "bad_event", f"{event} without pbx_call_id")
    # Zadarma's own advice: one event is (event, call, extension, start); an
    # answer also names who answered, a recording its id.
    key = "|".join((event, call, fields.get("internal", ""), fields.get("destination", ""),
                    fields.get("call_start", ""), fields.get("call_id_with_rec", "")))
    return Accepted(dedup_key=key, call_key=call)


# -- the call from its events --------------------------------------------------------


@dataclass
class _Facts:
    """Everything the events of one call say, merged (order does not matter)."""

    outbound: bool = False
    start: float | None = None
    caller: str | None = None
    dialled: str | None = None
    agent: str | None = None  # outbound: the extension that placed it
    rang: set[str] = field(default_factory=set)
    answered_by: str | None = None
    ended_at: float | None = None
    duration: float = 0.0
    disposition: str | None = None
    cause: int | None = None
    recording: str | None = None



def _is_extension(value: str | None) -> bool:
    return value is not None and value.isdigit() and len(value) <= 6


def facts(history: Sequence[Request], zone: str) -> _Facts:
    f = _Facts()
    for request in history:
        fields = _form(request.body)
        event = fields.get("event", "")
        if fields.get("call_start"):
            try:
                start = _local_time(fields["call_start"], zone)
                f.start = start if f.start is None else min(f.start, start)
            except ValueError:
                log.warning("zadarma: unreadable call_start %r", fields["call_start"][:40])
        if event.startswith("NOTIFY_OUT_"):
            f.outbound = True
            f.agent = fields.get("internal") or f.agent
            f.dialled = with_plus(fields.get("destination")) or f.dialled
            f.caller = f.agent
        elif event in ("NOTIFY_START", "NOTIFY_INTERNAL", "NOTIFY_END", "NOTIFY_IVR", "NOTIFY_ANSWER"):
            f.caller = with_plus(fields.get("caller_id")) or f.caller
            f.dialled = with_plus(fields.get("called_did")) or f.dialled
        if event == "NOTIFY_INTERNAL" and _is_extension(fields.get("internal")):
            f.rang.add(fields["internal"])
        if event == "NOTIFY_ANSWER":
            who = fields.get("internal") or fields.get("destination")
            if _is_extension(who):
                f.answered_by = who
        if event in ("NOTIFY_END", "NOTIFY_OUT_END"):
            f.ended_at = request.received_at
            f.disposition = fields.get("disposition", "")
            try:
                duration = float(fields.get("duration") or 0)
                cause = int(fields["status_code"]) if fields.get("status_code") else None
            except ValueError:
                duration, cause = 0.0, None
                log.warning("zadarma: unreadable duration or status_code in call %s", fields.get("pbx_call_id"))
            # Out of range is no call's (nan, 1e308 seconds, a cause beyond Q.850's 127):
            # kept, it would make the record impossible to store.
            f.duration = plausible_duration(duration) or 0.0
            f.cause = cause if cause is not None and 0 <= cause <= 127 else None
            if event == "NOTIFY_END" and f.disposition == "answered" and _is_extension(fields.get("internal")):
                f.answered_by = f.answered_by or fields["internal"]
            if fields.get("is_recorded") == "1" and fields.get("call_id_with_rec"):
                f.recording = fields["call_id_with_rec"]
        if event == "NOTIFY_RECORD" and fields.get("call_id_with_rec"):
            f.recording = fields["call_id_with_rec"]
    if f.answered_by:
        f.rang.add(f.answered_by)
    return f


_DIAL_STATUS = {"busy": DialStatus.BUSY, "no answer": DialStatus.NOANSWER, "cancel": DialStatus.CANCEL}


def call_events(provider: str, account: Account, history: Sequence[Request]) -> list[CallEvent]:
    f = facts(history, account.timezone)
    pbx_call_id = next((fields["pbx_call_id"] for r in history if (fields := _form(r.body)).get("pbx_call_id")), "")
    if f.start is None and f.ended_at is None:
        return []  # only a recording notice so far: nothing to show yet
    call_id = f"{provider}:{account.name}:{pbx_call_id}"
    start = f.start if f.start is not None else (f.ended_at or 0.0) - f.duration
    end = max(f.ended_at, start) if f.ended_at is not None else None
    answered_at = max(start, end - f.duration) if end is not None else start
    events: list[CallEvent] = []
    if f.outbound:
        agent_leg, far = f"ext-{f.agent}", "customer"
        events += [
            LegCreated(call_id, agent_leg, start, PartyKind.AGENT, extension=f.agent, number=f.agent),
            LegCreated(call_id, far, start, PartyKind.EXTERNAL, number=f.dialled, dialled=f.dialled),
            LegDialled(call_id, far, start, from_leg=agent_leg, dialled=f.dialled),
        ]
        if f.recording:
            events.append(RecordingStarted(call_id, agent_leg, start, path=f"{provider}://{account.name}/{f.recording}"))
        if end is not None:
            if f.disposition == "answered":
                events += [LegDialEnded(call_id, far, answered_at, DialStatus.ANSWER, from_leg=agent_leg),
                           LegBridged(call_id, agent_leg, BRIDGE, answered_at), LegBridged(call_id, far, BRIDGE, answered_at)]
            else:
                status = DialStatus.BUSY if f.disposition == "busy" else DialStatus.NOANSWER
                events.append(LegDialEnded(call_id, far, end, status, from_leg=agent_leg))
            events += [LegHungUp(call_id, far, end, f.cause), LegHungUp(call_id, agent_leg, end, f.cause)]
        return events

    caller_leg = "caller"
    events.append(LegCreated(call_id, caller_leg, start, PartyKind.EXTERNAL, number=f.caller, dialled=f.dialled))
    if f.recording:
        events.append(RecordingStarted(call_id, caller_leg, start, path=f"{provider}://{account.name}/{f.recording}"))
    for extension in sorted(f.rang):
        leg = f"ext-{extension}"
        events += [LegCreated(call_id, leg, start, PartyKind.AGENT, extension=extension, number=extension),
                   LegDialled(call_id, leg, start, from_leg=caller_leg, dialled=extension),
                   LegRinging(call_id, leg, start)]
    if f.answered_by is not None:
        leg = f"ext-{f.answered_by}"
        answered = answered_at if end is not None else start
        events += [LegDialEnded(call_id, leg, answered, DialStatus.ANSWER, from_leg=caller_leg),
                   LegBridged(call_id, caller_leg, BRIDGE, answered), LegBridged(call_id, leg, BRIDGE, answered)]
    if end is None:
        return events
    others = sorted(f.rang - {f.answered_by} if f.answered_by else f.rang)
    if f.answered_by is None and f.disposition == "cancel":
        events.append(LegHangupRequested(call_id, caller_leg, end))  # the caller gave up while it rang
    status = DialStatus.CANCEL if f.answered_by else _DIAL_STATUS.get(f.disposition or "", DialStatus.OTHER)
    for extension in others:
        events.append(LegDialEnded(call_id, f"ext-{extension}", end, status, from_leg=caller_leg))
    for extension in sorted(f.rang):
        events.append(LegHungUp(call_id, f"ext-{extension}", end, f.cause))
    events.append(LegHungUp(call_id, caller_leg, end, f.cause))
    return events


# -- HTTP -------------------------------------------------------------------------------


class ZadarmaConnector:
    """Serves ``/webhooks/{name}/{account}`` for Zadarma's (or Novofon's) accounts."""

    def __init__(self, accounts: Sequence[Account], name: str = "zadarma") -> None:
        self.name = name
        self.accounts = {a.name: a for a in accounts}
        self.max_recording = MAX_RECORDING  # bytes
        self._http = ProviderClient()  # recordings

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        return call_events(self.name, self.accounts[account], history)

    async def fetch_recording(self, account: str, ref: str) -> bytes:
        """The file of recording ``ref`` (a ``call_id_with_rec``): its link from
        the API, then the file from the link."""
        found = self.accounts.get(account)
        if found is None:
            raise RecordingFetchFailed(self.name, account, "no such account")
        api_key, secret = found.options.get("api_key", ""), found.secrets.get("secret", "")
        if not api_key or not secret:
            raise RecordingFetchFailed(self.name, account, "options.api_key and the secret are needed to "
                                       "download recordings")
        base = (found.api_base_url or API_BASES.get(self.name, API_BASES["zadarma"])).rstrip("/")
        # format=json: the official clients add it to every request, so it is signed too.
        query, signature = api_signature(secret, RECORD_REQUEST, {"call_id": ref, "format": "json"})
        answer = await fetch(self._http.session(), self.name, account, "GET",
                             URL(f"{base}{RECORD_REQUEST}?{query}", encoded=True),  # sent as signed
                             limit=MAX_ANSWER, headers={"Authorization": f"{api_key}:{signature}"})
        link = self._link(account, answer)
        return file_of(await fetch(self._http.session(), self.name, account, "GET", URL(link), limit=self.max_recording),
                       self.name, account, "the recording file")

    def _link(self, account: str, answer: Answer) -> str:
        """The download link of the API's answer ``{"status": "success", "link": ...}``
        (or ``"links": [...]``)."""
        if answer.status == 404:
            raise RecordingNotReady(f"{self.name} {account}: no recording yet (HTTP 404 from {answer.host})")
        data: Any = None
        try:
            data = json.loads(answer.body)
        except (ValueError, RecursionError):
            pass
        if not isinstance(data, dict):
            raise RecordingFetchFailed(self.name, account, f"HTTP {answer.status} from {answer.host}, not a JSON "
                                       "object", answer.status)
        message = str(data.get("message", ""))[:200]
        if not answer.ok or data.get("status") != "success":
            if _NOT_READY.search(message):
                raise RecordingNotReady(f"{self.name} {account}: no recording yet (HTTP {answer.status}: {message})")
            raise RecordingFetchFailed(self.name, account, f"HTTP {answer.status} from {answer.host}: "
                                       f"{data.get('status')!s:.20} {message}", answer.status)
        links = data.get("links")
        link = data.get("link") or (links[0] if isinstance(links, list) and links else None)
        if not link:
            raise RecordingNotReady(f"{self.name} {account}: the API gave no link yet")
        if not isinstance(link, str) or not is_web_url(link):
            raise RecordingFetchFailed(self.name, account, "the API's link is not an http(s) URL")
        return link

    async def close(self) -> None:
        """Close the HTTP client to the provider (the app's cleanup does it too)."""
        await self._http.close()

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        path = f"/webhooks/{self.name}/{{account}}"

        async def echo(request: web.Request) -> web.StreamResponse:
            account = self._account(request)
            if isinstance(account, web.Response):
                return account
            value = request.query.get("zd_echo")
            if value is None:
                return web.json_response({"error": "bad_request", "message": "expected ?zd_echo= or a POST"},
                                         status=400)
            return web.Response(text=value[:200], content_type="text/plain")

        async def notify(request: web.Request) -> web.StreamResponse:
            account = self._account(request)
            if isinstance(account, web.Response):
                return account
            try:
                body = await read_body(request)
                accepted = check(account, body, request.headers.get("Signature"))
            except WebhookRejected as exc:
                log.warning("%s %s: request refused from %s: %s", self.name, account.name, request.remote,
                            exc.message)
                return rejected_response(exc)
            if accepted is None:
                log.info("%s %s: event %r not used", self.name, account.name, _form(body).get("event", "")[:40])
                return web.Response(text="")
            stored = Request("", request.query_string, body, clock())
            fields = _form(body)
            routing = None
            if decide is not None and fields.get("event") == "NOTIFY_START":
                routing = asyncio.ensure_future(_route(decide, fields, account.route_deadline))
            try:
                await intake.deliver(self.name, account.name, stored, accepted)
            except Exception as exc:
                if routing is not None:
                    routing.cancel()
                log.warning("%s %s: event not stored, the provider will have to resend it: %s", self.name,
                          account.name, exc)
                return web.json_response({"error": "store_unavailable", "message": "try again"}, status=503)
            reply = await routing if routing is not None else {}
            return web.json_response(reply) if reply else web.Response(text="")

        app.router.add_get(path, echo)
        app.router.add_post(path, notify)
        self._http.close_with(app)

    def _account(self, request: web.Request) -> Account | web.Response:
        try:
            return account_of(request, self.accounts, self.name)
        except WebhookRejected as exc:
            return rejected_response(exc)


async def _route(decide: Decide, fields: Mapping[str, str], deadline: float) -> dict[str, object]:
    """The NOTIFY_START reply: the assigned manager's extension, or nothing
    (after the deadline or on any error the PBX follows its own scenario)."""
    try:
        caller, dialled = with_plus(fields.get("caller_id")), with_plus(fields.get("called_did"))
        decision = await asyncio.wait_for(decide(caller, dialled), deadline)
    except Exception as exc:  # a late or failed decision must not hold the caller
        log.warning("zadarma: no routing for call %s: %s", fields.get("pbx_call_id"), exc or type(exc).__name__)
        return {}
    reply: dict[str, object] = {}
    if decision.extension and decision.reason in ("assigned_manager", "vip"):
        reply = {"redirect": decision.extension, "return_timeout": RETURN_TIMEOUT}
    if decision.contact_name:
        reply["caller_name"] = decision.contact_name
    return reply
