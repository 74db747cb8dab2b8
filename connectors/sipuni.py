"""Sipuni PBX events ("Настройки → API → События АТС").

Sipuni signs nothing, so the URL carries a secret: ``/webhooks/sipuni/{account}/{url_token}``
(a trailing ``/`` is accepted too). A wrong or missing token answers 401 and
nothing is kept; an account whose token is missing or shorter than
``MIN_TOKEN`` characters refuses everything (fail closed). An optional
source-IP allow-list helps. The token is not kept with the request and never
logged.

Each event comes by GET (query string) or POST (URL-encoded body): ``event``
1 (the call started, and again for each extension that starts ringing), 3 (an
answer), 4 (an intermediate hangup: a leg that ended while the call goes on,
as in a transfer), 2 (a hangup). The reply is ``{"success": true}`` (also for
a duplicate, for an event type this gateway does not use and for an empty
request, which is not kept): without it Sipuni may stop sending. An event's
key is (event, call_id, timestamp, src_num, dst_num, status): the SPEC's
triple plus the parties, so two extensions that start ringing in the same
second are two events, and one event sent by GET and again by POST is one.

Parties: ``*_type`` 1 is an external number, 2 an internal one (what two OSS
receivers and every sample agree on; one OSS comment says the opposite). An
extension is read from ``short_*_num`` when given (``dst_num`` carries the
account's prefix: ``0158561101`` is extension 101). External numbers are kept
as written except: 11 digits starting with 8 become +7..., 11 or more digits
without '+' get one.

Sipuni promises no order and no single delivery, so a call is rebuilt from
the *facts* of all its events (who called, which DID, which extensions rang
and answered, which legs ended early, how the call ended, the recording link)
in an order of their own (``timestamp``, then the event's rank), never in
arrival order. The caller is the source of the call's earliest event. The
call ends with an event 2 that has the customer on one side (the samples'
whole-call hangup: ``status``, ``call_start_timestamp`` and
``call_answer_timestamp`` describe the whole call); in a call without an
external party (an internal call) any event 2 ends it. Another event 2 (two
extensions between themselves) counts as an intermediate hangup, like 4.
Until the end is in, no hangup that ends the call is emitted: the call is
live and the extensions that ring get pops.

In the samples the DID appears only when the call reached no extension (the
missed call's ``dst_num``); ``options.number`` gives the account's line for
inbound calls whose events name none (a one-number account), so they get the
plan's shop and channel. Sipuni has no routing callback: no routing here.

Recordings (``fetch_recording``): the reference is the event's
``call_record_link`` itself, a link Sipuni signs with its own token; it is
fetched as it is, with no credentials of ours, and only over http(s). The link
is never logged (its query is a credential).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from yarl import URL

from connectors.download import (
    MAX_RECORDING,
    ProviderClient,
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
    Request,
    WebhookRejected,
    account_of,
    read_body,
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

MIN_TOKEN = 16  # characters; a shorter url_token is as good as none
EVENTS = ("1", "2", "3", "4")
# Events at the same second: a ring before its answer, an answer before a hangup.
RANK = {"1": 0, "3": 1, "4": 2, "2": 3}
TIMES = ("timestamp", "call_start_timestamp", "call_answer_timestamp")
BRIDGE = "sipuni-talk"
BUSY_CAUSE = 17
_STATUS = {
    "ANSWER": DialStatus.ANSWER,
    "BUSY": DialStatus.BUSY,
    "NOANSWER": DialStatus.NOANSWER,
    "NO_ANSWER": DialStatus.NOANSWER,
    "CANCEL": DialStatus.CANCEL,
    "CONGESTION": DialStatus.CONGESTION,
    "CHANUNAVAIL": DialStatus.UNAVAILABLE,
}
SUCCESS = {"success": True}


def _parse(text: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(text.strip(), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "bad_body", "a %-escape is not UTF-8") from None


def fields_of(query: str, body: bytes) -> dict[str, str]:
    """An event's fields: the query string's, then the body's (a POST)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "bad_body", "the body is not UTF-8") from None
    return dict(_parse(query) + _parse(text))


def check(query: str, body: bytes) -> Accepted | None:
    """Identify one event whose URL token was right; None for a request this
    gateway does not use (answered success, not stored)."""
    fields = fields_of(query, body)
    if not fields:
        return None  # an empty request (a check of the URL)
    event = fields.get("event")
    if event is None:
        raise WebhookRejected(400, "bad_event", "no event field")
    if event not in EVENTS:
        return None
    call = fields.get("call_id", "").strip()
    if not call:
        raise WebhookRejected(400, "bad_event", f"event {event} without call_id")
    for name in TIMES:
        if (fields.get(name) or name == "timestamp") and not _is_unix(fields.get(name, "")):
            raise WebhookRejected(400, "bad_event", f"event {event}: {name} is not unix seconds")
    # The SPEC's key (call_id, event, timestamp) plus the parties and status:
    # two extensions that start ringing in one second are two events. Fields,
    # not bytes: the same event by GET and by POST is one.
    key = "|".join((event, call, fields["timestamp"], fields.get("src_num", ""), fields.get("dst_num", ""),
                    fields.get("status", "")))
    return Accepted(dedup_key=key, call_key=call)


# -- the call from its events --------------------------------------------------------


def _number(raw: str) -> str | None:
    """An external number, with '+' where Sipuni leaves it out and +7 for a Russian 8..."""
    text = raw.strip()
    if raw.startswith(" ") and text.isdigit():
        text = "+" + text  # a '+' sent without %-escaping reads as a space
    if not text:
        return None
    if text.isdigit():
        if len(text) == 11 and text.startswith("8"):
            return "+7" + text[1:]
        if len(text) >= 11:
            return "+" + text
    return text


@dataclass(frozen=True, slots=True)
class _Party:
    internal: bool
    number: str | None  # an extension when internal


def _party(fields: Mapping[str, str], side: str) -> _Party | None:
    raw, short = fields.get(f"{side}_num", ""), fields.get(f"short_{side}_num", "").strip()
    if not raw.strip() and not short:
        return None
    kind = fields.get(f"{side}_type", "").strip()
    if kind in ("1", "2"):
        internal = kind == "2"
    else:  # no type given: an extension has a short form or few digits
        internal = bool(short) or (raw.strip().isdigit() and len(raw.strip()) <= 6)
    if internal:
        return _Party(True, short or raw.strip())
    return _Party(False, _number(raw))


def _last_called(fields: Mapping[str, str]) -> str | None:
    """The extension the call was last sent to ('101&102': the last one)."""
    called = [part.strip() for part in fields.get("last_called", "").split("&") if part.strip()]
    return called[-1] if called else None


def _is_unix(value: str) -> bool:
    """Unix seconds as Sipuni writes them: up to 10 ASCII digits (until the year 2286)."""
    return 0 < len(value) <= 10 and value.isascii() and value.isdigit()


def _epoch(value: str | None) -> float | None:
    """Unix seconds; None for missing or 0 (Sipuni's "never")."""
    return float(value) if value and _is_unix(value) and int(value) > 0 else None


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str
    at: float
    call: str
    src: _Party | None
    dst: _Party | None
    status: str
    call_start: float | None
    call_answer: float | None
    record: str
    last_called: str | None
    order: tuple[tuple[str, str], ...]  # the fields, sorted: ties broken by content, not arrival

    @property
    def sort_key(self) -> tuple[float, int, tuple[tuple[str, str], ...]]:
        return self.at, RANK[self.kind], self.order


def _event(request: Request) -> _Event | None:
    try:
        fields = fields_of(request.query, request.body)
    except WebhookRejected as exc:
        log.warning("sipuni: a stored request is unreadable: %s", exc.message)
        return None
    kind, call = fields.get("event", ""), fields.get("call_id", "").strip()
    if kind not in EVENTS or not call:
        return None
    return _Event(
        kind=kind,
        at=_epoch(fields.get("timestamp")) or request.received_at,
        call=call,
        src=_party(fields, "src"),
        dst=_party(fields, "dst"),
        status=fields.get("status", "").strip().upper(),
        call_start=_epoch(fields.get("call_start_timestamp")),
        call_answer=_epoch(fields.get("call_answer_timestamp")),
        record=fields.get("call_record_link", "").strip(),
        last_called=_last_called(fields),
        order=tuple(sorted(fields.items())),
    )


@dataclass
class _Leg:
    """A party the call went to (an extension; the customer of an outbound call)."""

    leg_id: str
    party: _Party
    seen: int  # index of the first event naming it: ties between legs
    ring_at: float | None = None
    answered_at: float | None = None
    left_at: float | None = None  # ended before the call did (event 4)
    left_status: str = ""


class _Call:
    """The facts of one call, merged from its events (deduplicated, in canonical order)."""

    def __init__(self, events: list[_Event], account: Account) -> None:
        self.events = events
        self.origin = events[0].src or _Party(False, None)  # no source: a withheld number
        self.inbound = not self.origin.internal
        externals = [p for e in events for p in (e.src, e.dst) if p is not None and not p.internal]
        finals = [e for e in events if e.kind == "2" and (not externals or _has_external(e))]
        self.final = finals[-1] if finals else None  # several: the latest one ends the call
        self.customer: _Party | None = None
        self.dialled: str | None = None
        if self.inbound:
            self.dialled = next((e.dst.number for e in events
                                 if e.dst is not None and not e.dst.internal and e.dst != self.origin),
                                None) or _number(account.options.get("number", ""))
        else:
            self.customer = next((p for p in externals if p != self.origin), None)
        self.start = min([e.at for e in events] + [e.call_start for e in events if e.call_start is not None])
        self.end = max(self.final.at, self.start) if self.final is not None else None
        self.recording = next((e.record for e in reversed(events) if e.record), None)
        self.origin_left: float | None = None
        self.legs: dict[_Party, _Leg] = {}
        for index, e in enumerate(events):
            self._merge(index, e)
        self._leg(self.customer, len(events))  # an outbound call went to its customer
        if self.final is not None and self.final.status == "ANSWER":
            self._answered_at_the_end(self.final)

    def _clamp(self, at: float) -> float:
        at = max(at, self.start)
        return min(at, self.end) if self.end is not None else at

    def _leg(self, party: _Party | None, index: int) -> _Leg | None:
        """The leg of a party the call went to; None for the caller, the DID, others."""
        if party is None or party == self.origin:
            return None
        if not party.internal and party != self.customer:
            return None  # the DID of an inbound call; another outside number
        leg = self.legs.get(party)
        if leg is None:
            leg_id = f"ext-{party.number}" if party.internal else "customer"
            leg = self.legs[party] = _Leg(leg_id, party, index)
        return leg

    def _merge(self, index: int, e: _Event) -> None:
        at = self._clamp(e.at)
        if e.kind == "1":
            leg = self._leg(e.dst, index)
            if leg is not None:
                leg.ring_at = at if leg.ring_at is None else min(leg.ring_at, at)
        elif e.kind == "3":
            leg = self._leg(e.dst, index)
            if leg is not None:
                leg.answered_at = at if leg.answered_at is None else min(leg.answered_at, at)
        elif e.kind == "4" or e != self.final:
            # A leg ended while the call goes on: the extension's side of it
            # (on an outbound call, the agent who placed it may be the one).
            ended = next((p for p in (e.dst, e.src) if p is not None and p.internal), e.dst)
            if ended == self.origin:
                if not self.inbound:
                    self.origin_left = at if self.origin_left is None else max(self.origin_left, at)
            elif (leg := self._leg(ended, index)) is not None:
                leg.left_at = at if leg.left_at is None else max(leg.left_at, at)
                leg.left_status = e.status
                if e.status == "ANSWER" and leg.answered_at is None:
                    leg.answered_at = self._clamp(e.call_answer or e.at)
        else:
            self._leg(e.dst, index)  # the call's end names a party it went to
        if self.inbound and e.kind in ("2", "4") and e.last_called:
            self._leg(_Party(True, e.last_called), index)  # it rang

    def _answered_at_the_end(self, final: _Event) -> None:
        """The whole call's hangup says ANSWER: who answered, where no answer event says so."""
        index = len(self.events)
        answerers = [self._leg(final.dst, index)]
        if self.inbound and answerers[0] is None and final.last_called:
            if not any(leg.answered_at is not None for leg in self.legs.values()):
                answerers.append(self._leg(_Party(True, final.last_called), index))
        if not self.inbound:
            answerers.append(self._leg(self.customer, index))  # an outbound call answered is the customer's answer
        for leg in answerers:
            if leg is not None and leg.answered_at is None:
                ring = leg.ring_at if leg.ring_at is not None else self.start
                leg.answered_at = max(self._clamp(final.call_answer or final.at), ring)

    def times(self, leg: _Leg) -> tuple[float, float | None, float | None]:
        """A leg's ring, answer and early end, each no earlier than the one before."""
        ring = leg.ring_at if leg.ring_at is not None else self.start
        answered, left = leg.answered_at, leg.left_at
        if answered is not None:
            ring = min(ring, answered)
            if left is not None:
                answered = min(answered, left)
        if left is not None:
            left = max(left, answered if answered is not None else ring)
        return ring, answered, left


def _has_external(e: _Event) -> bool:
    return any(p is not None and not p.internal for p in (e.src, e.dst))


def call_events(provider: str, account: Account, history: Sequence[Request]) -> list[CallEvent]:
    unique = {e.order: e for e in map(_event, history) if e is not None}  # a repeat says nothing new
    if not unique:
        return []
    events = sorted(unique.values(), key=lambda e: e.sort_key)
    call = _Call(events, account)
    call_id = f"{provider}:{account.name}:{events[0].call}"
    origin = call.origin
    origin_leg = f"ext-{origin.number}" if origin.internal else "customer"
    start = call.start
    out: list[tuple[float, int, int, CallEvent]] = []

    if origin.internal:
        out.append((start, 0, 0, LegCreated(call_id, origin_leg, start, PartyKind.AGENT, extension=origin.number,
                                            number=origin.number)))
    else:
        out.append((start, 0, 0, LegCreated(call_id, origin_leg, start, PartyKind.EXTERNAL, number=origin.number,
                                            dialled=call.dialled)))
    if call.recording:
        out.append((start, 1, 0, RecordingStarted(call_id, origin_leg, start,
                                                  path=f"{provider}://{account.name}/{call.recording}")))
    legs = sorted(call.legs.values(), key=lambda leg: (call.times(leg)[0], leg.seen, leg.leg_id))
    times = [call.times(leg) for leg in legs]
    first_answer = min((answered for _, answered, _ in times if answered is not None), default=None)
    if first_answer is not None and (call.origin_left is None or call.origin_left >= first_answer):
        out.append((first_answer, 6, 0, LegBridged(call_id, origin_leg, BRIDGE, first_answer)))
    for n, (leg, (ring, answered, left)) in enumerate(zip(legs, times), start=1):
        party = leg.party
        if party.internal:
            out += [(ring, 2, n, LegCreated(call_id, leg.leg_id, ring, PartyKind.AGENT, extension=party.number,
                                            number=party.number)),
                    (ring, 3, n, LegDialled(call_id, leg.leg_id, ring, from_leg=origin_leg, dialled=party.number)),
                    (ring, 4, n, LegRinging(call_id, leg.leg_id, ring))]
        else:
            out += [(ring, 2, n, LegCreated(call_id, leg.leg_id, ring, PartyKind.EXTERNAL, number=party.number,
                                            dialled=party.number)),
                    (ring, 3, n, LegDialled(call_id, leg.leg_id, ring, from_leg=origin_leg, dialled=party.number))]
        if answered is not None:
            out += [(answered, 5, n, LegDialEnded(call_id, leg.leg_id, answered, DialStatus.ANSWER,
                                                  from_leg=origin_leg)),
                    (answered, 7, n, LegBridged(call_id, leg.leg_id, BRIDGE, answered))]
        if left is not None:
            status = _STATUS.get(leg.left_status, DialStatus.NOANSWER)
            cause = None
            if answered is None:
                cause = BUSY_CAUSE if status is DialStatus.BUSY else None
                out.append((left, 8, n, LegDialEnded(call_id, leg.leg_id, left, status, from_leg=origin_leg)))
            out.append((left, 9, n, LegHungUp(call_id, leg.leg_id, left, cause)))
    if call.origin_left is not None:
        out.append((call.origin_left, 9, 0, LegHungUp(call_id, origin_leg, call.origin_left)))

    end, final = call.end, call.final
    if end is not None and final is not None:
        # Only once the hangup of the whole call is in: until then the call is live.
        status = _STATUS.get(final.status, DialStatus.OTHER)
        ringing = [leg for leg, (_, answered, left) in zip(legs, times) if answered is None and left is None]
        if call.inbound and first_answer is None and status is DialStatus.CANCEL and ringing:
            out.append((end, 10, 0, LegHangupRequested(call_id, origin_leg, end)))  # the caller gave up
        for n, (leg, (_, answered, left)) in enumerate(zip(legs, times), start=1):
            if left is not None:
                continue
            cause = None
            if answered is None:
                unanswered = DialStatus.CANCEL if first_answer is not None else status
                if unanswered is DialStatus.ANSWER:
                    unanswered = DialStatus.OTHER  # answered, not by this leg: a scenario, a forward
                cause = BUSY_CAUSE if unanswered is DialStatus.BUSY else None
                out.append((end, 11, n, LegDialEnded(call_id, leg.leg_id, end, unanswered, from_leg=origin_leg)))
            out.append((end, 12, n, LegHungUp(call_id, leg.leg_id, end, cause)))
        if call.origin_left is None:
            out.append((end, 13, 0, LegHungUp(call_id, origin_leg, end)))
    out.sort(key=lambda step: step[:3])
    return [event for *_, event in out]


# -- HTTP -------------------------------------------------------------------------------


def _refused(exc: WebhookRejected) -> web.Response:
    # Sipuni reads "success"; the rest is for people.
    return web.json_response({"success": False, "error": exc.code, "message": exc.message}, status=exc.status)


class SipuniConnector:
    """Serves ``/webhooks/{name}/{account}/{url_token}`` for Sipuni's accounts."""

    def __init__(self, accounts: Sequence[Account], name: str = "sipuni") -> None:
        self.name = name
        self.accounts = {a.name: a for a in accounts}
        self.max_recording = MAX_RECORDING  # bytes
        self._http = ProviderClient()  # recordings

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        return call_events(self.name, self.accounts[account], history)

    async def fetch_recording(self, account: str, ref: str) -> bytes:
        """The file behind ``ref``, the call's ``call_record_link``."""
        if account not in self.accounts:
            raise RecordingFetchFailed(self.name, account, "no such account")
        if not is_web_url(ref):
            # file:, ftp:, a relative path...: nothing but the web is fetched.
            raise RecordingFetchFailed(self.name, account, "refused: the recording link is not an http(s) URL")
        answer = await fetch(self._http.session(), self.name, account, "GET", URL(ref), limit=self.max_recording)
        return file_of(answer, self.name, account, "the recording")

    async def close(self) -> None:
        """Close the HTTP client to the provider (the app's cleanup does it too)."""
        await self._http.close()

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        # ``decide`` is not used: Sipuni has no routing callback.
        for account in self.accounts.values():
            if len(account.secrets.get("url_token", "")) < MIN_TOKEN:
                log.warning("%s %s: url_token missing or shorter than %d characters: every request is refused",
                            self.name, account.name, MIN_TOKEN)

        async def event(request: web.Request) -> web.StreamResponse:
            account = self._account(request)
            if isinstance(account, web.Response):
                return account
            query = request.rel_url.raw_query_string  # as sent: the inbox parses it again
            try:
                self._check_token(account, request.match_info.get("token"))
                body = await read_body(request) if request.method == "POST" else b""
                accepted = check(query, body)
            except WebhookRejected as exc:
                log.warning("%s %s: request refused from %s: %s", self.name, account.name, request.remote,
                            exc.message)
                return _refused(exc)
            if accepted is None:
                log.info("%s %s: request without a used event (event %r): not stored", self.name, account.name,
                         fields_of(query, body).get("event", "")[:40])
                return web.json_response(SUCCESS)
            stored = Request("", query, body, clock())
            try:
                await intake.deliver(self.name, account.name, stored, accepted)
            except Exception as exc:
                log.warning("%s %s: event not stored, Sipuni will have to resend it: %s", self.name, account.name, exc)
                return _refused(WebhookRejected(503, "store_unavailable", "try again"))
            return web.json_response(SUCCESS)

        base = f"/webhooks/{self.name}/{{account}}"
        for path in (base, base + "/", base + "/{token}", base + "/{token}/"):
            app.router.add_get(path, event, allow_head=False)
            app.router.add_post(path, event)
        self._http.close_with(app)

    @staticmethod
    def _check_token(account: Account, given: str | None) -> None:
        expected = account.secrets.get("url_token", "")
        if len(expected) < MIN_TOKEN:
            raise WebhookRejected(401, "bad_token", "no usable url_token is configured for this account")
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            raise WebhookRejected(401, "bad_token", "the URL token is wrong or missing")

    def _account(self, request: web.Request) -> Account | web.Response:
        try:
            return account_of(request, self.accounts, self.name)
        except WebhookRejected as exc:
            return _refused(exc)
