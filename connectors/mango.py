"""Mango Office VPBX (API v1.10) realtime notifications, and routing through
its ``commands/route``.

Mango calls ``{base}/events/call``, ``/events/summary``, ``/events/recording``,
``/events/dtmf`` and command results such as ``/result/route``; the base URL
set in its cabinet is ``/webhooks/mango/{account}``. Every POST is a form of
three fields: ``vpbx_api_key``, ``sign`` and ``json`` (the event, a JSON
string), signed ``sign = sha256_hex(key + json + salt)`` over the ``json``
field exactly as received; the key must be this account's too. There is no
timestamp: an optional source-IP allow-list helps against replays. Any other
path under the prefix (the cabinet's connection check, results of commands the
gateway does not send) is answered 200 and not kept.

Mango sends its notifications in parallel: they arrive in any order, maybe
twice. A call (``entry_id``, the inbox's call key) is made of *legs*
(``call_id``): the caller in the IVR, in a queue, with an employee; each leg
reports its states (``Appeared`` ringing, ``Connected`` talking, ``OnHold``,
``Disconnected`` with a ``disconnect_reason``), numbered by ``seq`` per leg.
``events/summary`` comes once, when the call is over. So a call is rebuilt
from the merged facts of its requests, never from their arrival order: every
leg to a person becomes a leg of the call (an agent's with his extension), the
customer is one more leg, and only the summary hangs up the leg that ends the
call. The summary decides whether anybody talked (``talk_time``, the answer
time, 0 when nobody did); a leg that stopped ringing because the caller hung
up (reason 1110) means he gave up. Times are Mango's own (UTC epoch seconds).

Routing is asynchronous: when an inbound call appears in the IVR (or a queue)
the routing function gets ``route_deadline``; if it names a manager, the
gateway POSTs ``commands/route`` (signed the same way) to Mango's API. The
reply to the notification never waits for it; the result comes back later at
``result/route`` and is logged.

Recordings (``fetch_recording``): the ``recording_id`` of ``events/recording``
is POSTed, signed like a command, to ``queries/recording/post/`` with
``action: download``; Mango answers a redirect to a one-time link (followed,
without the signed form) or the file itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
from aiohttp import web
from yarl import URL

from connectors.download import MAX_RECORDING, ProviderClient, RecordingFetchFailed, fetch, file_of
from connectors.webhook import (
    LATEST,
    Accepted,
    Account,
    Decide,
    Intake,
    Request,
    WebhookRejected,
    account_of,
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
    QueueAbandoned,
    QueueJoined,
    QueueLeft,
    RecordingStarted,
)

log = logging.getLogger(__name__)

DEFAULT_API = "https://app.mango-office.ru/vpbx"
CALL, SUMMARY, RECORDING, DTMF, ROUTE_RESULT = (
    "events/call", "events/summary", "events/recording", "events/dtmf", "result/route")
KEPT = (CALL, SUMMARY, RECORDING, DTMF, ROUTE_RESULT)  # the paths whose requests are verified and stored
ROUTED_REASONS = ("assigned_manager", "vip")
COMMAND_TIMEOUT = 5.0  # seconds for Mango's API to take a command (the IVR holds the caller meanwhile)
ROUTED_MEMORY = 10_000  # calls remembered as already routed (a repeated notification routes nothing)
OPTIONS = {"route": ("on", "off")}  # "off": never send commands/route (the PBX's scenario always applies)

# disconnect_reason (Mango's own codes, API v1.10 appendix)
CALLER_HUNG_UP = 1110
_DIAL_STATUS = {1110: DialStatus.CANCEL, 1111: DialStatus.NOANSWER, 1121: DialStatus.BUSY,
                1122: DialStatus.BUSY, 1170: DialStatus.NOANSWER, 1182: DialStatus.CANCEL}
_Q850 = {1111: 19, 1121: 17, 1122: 21, 1182: 26}  # the record keeps Q.850 causes like every other source
RECORDING_QUERY = "queries/recording/post/"
ROUTE_RESULTS = {1000: "done", 4001: "not supported", 4100: "not allowed for this call", 4101: "the call is gone"}


def sign(key: str, payload: str, salt: str) -> str:
    """Mango's ``sign``: hex SHA-256 of key + the JSON text + salt (both directions)."""
    return hashlib.sha256((key + payload + salt).encode("utf-8")).hexdigest()


# -- reading a request -----------------------------------------------------------------

_SIGNED = ("vpbx_api_key", "sign", "json")
# Mango's own examples miss commas between members; only tried when the text is not JSON.
_MISSING_COMMA = re.compile(r'(["}\]\d]|\btrue|\bfalse|\bnull)(\s+)("(?:[^"\\]|\\.)*"\s*:)')


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "bad_body", "the body is not UTF-8") from None
    pairs = parse_qsl(text.strip(), keep_blank_values=True)
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields and name in _SIGNED:  # which one would be the signed one? Neither.
            raise WebhookRejected(400, "bad_body", f"the field {name} is given twice")
        fields.setdefault(name, value)
    return fields


def _loads(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        try:
            value = json.loads(_MISSING_COMMA.sub(r"\1,\2\3", text))
        except (ValueError, RecursionError):  # nested too deep: no event of Mango's is
            raise WebhookRejected(400, "bad_json", "the json field is not JSON") from None
    if not isinstance(value, dict):
        raise WebhookRejected(400, "bad_json", "the json field is not a JSON object")
    return value


def _payload(body: bytes) -> dict[str, Any]:
    """The event of a stored (so already verified) request."""
    return _loads(_form(body).get("json", ""))


def _int(value: Any) -> int | None:
    """Mango writes numbers as numbers or as strings ("seq":"1"); None when neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return None
            return _int(number)
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _party(value: Any) -> dict[str, str]:
    """``from`` / ``to`` with the values that are there, as text."""
    if not isinstance(value, dict):
        return {}
    return {str(key): text for key, raw in value.items() if (text := _text(raw)) is not None}


def _location(event: Mapping[str, Any]) -> str | None:
    location = _text(event.get("location", event.get("locaton")))  # the manual misspells it
    return location.lower() if location else None


def _required(event: Mapping[str, Any], path: str, names: Sequence[str]) -> list[str]:
    values = [_text(event.get(name)) for name in names]
    missing = [name for name, value in zip(names, values) if value is None]
    if missing:
        raise WebhookRejected(400, "bad_event", f"{path} without {', '.join(missing)}")
    return [value for value in values if value is not None]


def check(account: Account, path: str, body: bytes) -> tuple[Accepted, dict[str, Any]]:
    """Verify and identify one request to a kept path; the event with it."""
    fields = _form(body)
    payload = fields.get("json")
    if payload is None:
        raise WebhookRejected(400, "bad_body", "no json field in the form")
    key, salt = account.secrets.get("key", ""), account.secrets.get("salt", "")
    expected = sign(key, payload, salt)
    # Both compared, always: which one failed is not the sender's business.
    key_ok = hmac.compare_digest(fields.get("vpbx_api_key", "").encode(), key.encode())
    sign_ok = hmac.compare_digest(fields.get("sign", "").encode(), expected.encode())
    if not (key and salt and key_ok and sign_ok):
        raise WebhookRejected(401, "bad_signature", "vpbx_api_key and sign do not match this account and the json")
    event = _loads(payload)
    if path == CALL:
        entry, leg = _required(event, path, ("entry_id", "call_id"))
        seq = _int(event.get("seq"))
        # SPEC §6.5: a leg's state change is (call_id, seq); "1" and 1 are one.
        key_ = (f"call|{leg}|{seq}" if seq is not None
                else f"call|{leg}|{_text(event.get('call_state'))}|{_int(event.get('timestamp'))}")
        return Accepted(key_, entry), event
    if path == SUMMARY:
        (entry,) = _required(event, path, ("entry_id",))
        return Accepted(f"summary|{entry}", entry), event
    if path == RECORDING:
        entry, recording = _required(event, path, ("entry_id", "recording_id"))
        return Accepted(f"recording|{recording}|{_text(event.get('call_id'))}|"
                        f"{_text(event.get('recording_state'))}|{_int(event.get('seq'))}", entry), event
    if path == DTMF:
        (entry,) = _required(event, path, ("entry_id",))
        return Accepted(f"dtmf|{_text(event.get('call_id'))}|{_int(event.get('seq'))}|"
                        f"{_text(event.get('dtmf'))}|{_int(event.get('timestamp'))}", entry), event
    (command,) = _required(event, path, ("command_id",))
    return Accepted(f"{path}|{command}", None), event  # a command's result belongs to no call


# -- the call from its requests ------------------------------------------------------



@dataclass(frozen=True, slots=True)
class _State:
    """One ``events/call``: a state of one leg."""

    seq: int
    at: float
    state: str
    location: str | None
    source: Mapping[str, str]  # from
    target: Mapping[str, str]  # to
    reason: int | None
    callback: bool


@dataclass
class _Leg:
    """One Mango leg (``call_id``), merged from its states in ``seq`` order."""

    leg_id: str
    first_at: float
    first_seq: int
    location: str | None = None
    source: dict[str, str] = field(default_factory=dict)  # as first reported: a transfer's leg later names the client
    target: dict[str, str] = field(default_factory=dict)
    connected_at: float | None = None
    ended_at: float | None = None
    reason: int | None = None
    callback: bool = False

    @property
    def is_party(self) -> bool:
        """A leg to a person or a number (not the caller in the IVR or a queue)."""
        if self.location in ("ivr", "queue"):
            return False
        return self.location is not None or "extension" in self.target or "extension" in self.source

    @property
    def from_customer(self) -> bool:
        return "extension" not in self.source and "number" in self.source


@dataclass(frozen=True, slots=True)
class _Summary:
    direction: int | None
    source: Mapping[str, str]
    target: Mapping[str, str]
    line: str | None
    created: float | None
    forwarded: float | None
    talk: float | None  # when the talk began; 0 when nobody talked
    end: float | None
    result: int | None
    reason: int | None


@dataclass
class _Facts:
    entry_id: str | None = None
    legs: dict[str, _Leg] = field(default_factory=dict)
    summary: _Summary | None = None
    recording: str | None = None


def _positive(value: Any) -> float | None:
    """A time (epoch seconds); None for 0 (Mango's "never") or one no call can have."""
    number = _int(value)
    # Compared as an int first: float() of a JSON integer of 400 digits raises.
    return plausible_time(float(number)) if number is not None and 0 < number < LATEST else None


def facts(history: Sequence[Request]) -> _Facts:
    """The merged facts of every kept request of one call (order and repeats do not matter)."""
    f = _Facts()
    states: dict[str, list[_State]] = {}
    recordings: dict[str, tuple[float, bool]] = {}  # id -> (first time, saved)
    summaries: list[_Summary] = []
    entries: set[str] = set()
    for request in history:
        try:
            event = _payload(request.body)
        except WebhookRejected:
            log.warning("mango: a kept %s request is not readable; skipped", request.path)
            continue
        if (entry := _text(event.get("entry_id"))) is not None:
            entries.add(entry)
        at = _positive(event.get("timestamp")) or request.received_at
        if request.path == CALL and (leg_id := _text(event.get("call_id"))) is not None:
            states.setdefault(leg_id, []).append(_State(
                _int(event.get("seq")) or 0, at, _text(event.get("call_state")) or "", _location(event),
                _party(event.get("from")), _party(event.get("to")), _int(event.get("disconnect_reason")),
                _text(event.get("callback_initiator")) is not None))
        elif request.path == SUMMARY:
            summaries.append(_Summary(
                _int(event.get("call_direction")), _party(event.get("from")), _party(event.get("to")),
                _text(event.get("line_number")), _positive(event.get("create_time")),
                _positive(event.get("forward_time")),
                0.0 if (talk := _int(event.get("talk_time"))) == 0 else _positive(talk),
                _positive(event.get("end_time")), _int(event.get("entry_result")),
                _int(event.get("disconnect_reason"))))
        elif request.path == RECORDING and (recording := _text(event.get("recording_id"))) is not None:
            code = _int(event.get("completion_code"))
            # Completed with any code but 1000 (4002: too short) saved no file.
            failed = _text(event.get("recording_state")) == "Completed" and code is not None and code != 1000
            first, ok = recordings.get(recording, (at, True))
            recordings[recording] = (min(first, at), ok and not failed)
    f.entry_id = min(entries) if entries else None
    if summaries:
        f.summary = min(summaries, key=repr)  # one per call; a changed repeat must not depend on arrival
    for leg_id, leg_states in states.items():
        by_seq: dict[int, _State] = {}
        for state in sorted(leg_states, key=lambda s: (s.seq, s.at, s.state, repr(s))):
            by_seq.setdefault(state.seq, state)
        ordered = [by_seq[seq] for seq in sorted(by_seq)]
        leg = f.legs[leg_id] = _Leg(leg_id, min(s.at for s in ordered), ordered[0].seq)
        for state in ordered:
            leg.location = leg.location or state.location
            for name, value in state.source.items():
                leg.source.setdefault(name, value)
            for name, value in state.target.items():
                leg.target.setdefault(name, value)
            leg.callback = leg.callback or state.callback
            if state.state == "Connected" and leg.connected_at is None:
                leg.connected_at = state.at
            if state.state == "Disconnected" and leg.ended_at is None:
                leg.ended_at, leg.reason = state.at, state.reason
    kept = sorted((first, recording) for recording, (first, ok) in recordings.items() if ok)
    f.recording = kept[0][1] if kept else None
    return f


def _cause(reason: int | None) -> int | None:
    """Mango's disconnect_reason as the Q.850 cause the record keeps."""
    if reason is None:
        return None
    if reason in _Q850:
        return _Q850[reason]
    return {11: 16, 32: 1, 42: 20, 50: 41}.get(reason // 100)


def _dial_status(reason: int | None) -> DialStatus:
    if reason is None:
        return DialStatus.OTHER
    if reason in _DIAL_STATUS:
        return _DIAL_STATUS[reason]
    if reason // 100 == 42:
        return DialStatus.UNAVAILABLE
    return DialStatus.NOANSWER if reason // 100 == 11 else DialStatus.OTHER


def _direction(f: _Facts, legs: Sequence[_Leg]) -> str:
    if f.summary is not None and f.summary.direction in (0, 1, 2):
        return {0: "internal", 1: "inbound", 2: "outbound"}[f.summary.direction]
    if any(leg.callback for leg in legs):
        return "outbound"  # a click-to-call (commands/callback): the PBX first rings our employee
    if any(leg.from_customer for leg in legs):
        return "inbound"  # somebody outside called in (the first state of a leg names its caller)
    if any(leg.is_party and "extension" not in leg.target for leg in legs):
        return "outbound"
    return "internal"


BRIDGE = "mango-talk-{}"


def call_events(provider: str, account: Account, history: Sequence[Request]) -> list[CallEvent]:
    f = facts(history)
    s = f.summary
    legs = sorted(f.legs.values(), key=lambda leg: (leg.first_at, leg.first_seq, leg.leg_id))
    if f.entry_id is None or (not legs and s is None):
        return []  # only a recording or DTMF notice so far: nothing to show yet
    call_id = f"{provider}:{account.name}:{f.entry_id}"
    direction = _direction(f, legs)
    times = [t for leg in legs for t in (leg.first_at, leg.connected_at, leg.ended_at) if t is not None]
    if s is not None:
        times += [t for t in (s.created, s.forwarded, s.talk or None, s.end) if t is not None]
    start = min(times) if times else 0.0
    end = None
    if s is not None:  # the summary, and only it, ends the call
        end = max([start, *(t for leg in legs for t in (leg.first_at, leg.connected_at, leg.ended_at)
                            if t is not None)] + ([s.end] if s.end is not None else []))

    # The call's origin: the customer of an inbound call, else the employee who placed it.
    inbound = direction == "inbound"
    if inbound:
        origin = "caller"
        caller = with_plus((s.source.get("number") if s else None)
                           or next((leg.source["number"] for leg in legs if leg.from_customer), None))
        dialled = with_plus((s.line if s else None)
                            or next((leg.target.get("line_number") or leg.target.get("number")
                                     for leg in legs if not leg.is_party), None)
                            or next((leg.target["line_number"] for leg in legs if "line_number" in leg.target), None))
        first: CallEvent = LegCreated(call_id, origin, start, PartyKind.EXTERNAL, number=caller, dialled=dialled)
        agent = None
    else:
        agent = ((s.source.get("extension") if s else None)
                 or next((leg.source["extension"] for leg in legs if "extension" in leg.source), None)
                 or next((leg.target["extension"] for leg in legs if leg.callback and "extension" in leg.target),
                         None))
        origin = f"ext-{agent}" if agent else "agent"
        number = agent or with_plus((s.source.get("number") if s else None))
        first = LegCreated(call_id, origin, start, PartyKind.AGENT, extension=agent, number=number)
    # Legs to people: for an outbound call not the PBX ringing its own employee first (click-to-call).
    offers = [leg for leg in legs if leg.is_party and not (agent and leg.target.get("extension") == agent)]
    queues = [leg for leg in legs if inbound and leg.location == "queue"]

    def takes_part(leg: _Leg) -> bool:
        """Who can answer: an agent on an inbound call, the far side of the others."""
        return "extension" in leg.target if inbound else True

    if s is not None:
        offers = _settle(s, offers, inbound, start, takes_part)
    if end is not None:
        for leg in offers:
            for name in ("first_at", "connected_at", "ended_at"):
                if (t := getattr(leg, name)) is not None:
                    setattr(leg, name, min(max(t, start), end))

    events: list[CallEvent] = [first]
    if f.recording:
        events.append(RecordingStarted(call_id, origin, start, path=f"{provider}://{account.name}/{f.recording}"))
    answered_at = min((leg.connected_at for leg in offers if leg.connected_at is not None and takes_part(leg)),
                      default=None)
    steps: list[tuple[float, int, int, list[CallEvent]]] = []  # (when, phase, leg's place, events)
    for place, leg in enumerate(queues):
        queue = leg.target.get("acd_group") or leg.target.get("number") or "queue"
        steps.append((leg.first_at, 0, place, [QueueJoined(call_id, origin, queue, leg.first_at)]))
        left_at = leg.ended_at if leg.ended_at is not None else end
        if left_at is not None:
            gave_up = (leg.reason if leg.ended_at is not None else s.reason if s else None) == CALLER_HUNG_UP
            steps.append((left_at, 2, place, [QueueAbandoned(call_id, origin, queue, left_at) if gave_up
                                              else QueueLeft(call_id, origin, queue, left_at)]))
    for place, leg in enumerate(offers, start=len(queues)):
        extension = leg.target.get("extension")
        kind = PartyKind.AGENT if extension else PartyKind.EXTERNAL
        number = extension or with_plus(leg.target.get("number"))
        bridge = BRIDGE.format(leg.leg_id)
        steps.append((leg.first_at, 0, place, [
            LegCreated(call_id, leg.leg_id, leg.first_at, kind, extension=extension, number=number),
            LegDialled(call_id, leg.leg_id, leg.first_at, from_leg=origin, dialled=number),
            LegRinging(call_id, leg.leg_id, leg.first_at)]))
        if leg.connected_at is not None:
            # The customer talks with whoever a leg connects; a consultation leg
            # (employee to colleague, the customer on hold) counts as the
            # colleague's talk too: a transfer lists both agents, in order.
            steps.append((leg.connected_at, 1, place, [
                LegDialEnded(call_id, leg.leg_id, leg.connected_at, DialStatus.ANSWER, from_leg=origin),
                LegBridged(call_id, origin, bridge, leg.connected_at),
                LegBridged(call_id, leg.leg_id, bridge, leg.connected_at)]))
        ended_at, reason = leg.ended_at, leg.reason
        if ended_at is None and end is not None:
            ended_at, reason = end, s.reason if s else None  # its Disconnected was lost: it ended with the call
        if ended_at is None:
            continue
        ending: list[CallEvent] = []
        if leg.connected_at is None:
            if inbound and reason == CALLER_HUNG_UP and leg.from_customer:
                ending.append(LegHangupRequested(call_id, origin, ended_at))  # he gave up while it rang
            someone = answered_at is not None and answered_at <= ended_at
            status = DialStatus.CANCEL if someone else _dial_status(reason)
            ending.append(LegDialEnded(call_id, leg.leg_id, ended_at, status, from_leg=origin))
        ending.append(LegHungUp(call_id, leg.leg_id, ended_at, _cause(reason)))
        steps.append((ended_at, 2, place, ending))
    if end is not None and s is not None:
        steps.append((end, 3, 0, [LegHungUp(call_id, origin, end, _cause(s.reason))]))
    for _, _, _, chunk in sorted(steps, key=lambda step: step[:3]):
        events.extend(chunk)
    return events


def _settle(s: _Summary, offers: list[_Leg], inbound: bool, start: float,
            takes_part: Callable[[_Leg], bool]) -> list[_Leg]:
    """The offers as the summary has them: it decides whether anybody talked
    (``talk_time`` 0: nobody, whatever a stray Connected said) and stands in for
    the leg notifications that never came."""
    answered = s.talk > 0 if s.talk is not None else s.result == 1
    if not answered:
        for leg in offers:
            leg.connected_at = None
        if not offers and inbound and s.forwarded and "extension" in s.target:
            return [_synthetic(s, inbound, s.forwarded, None)]  # "to" is the first one it rang
        return offers
    if any(leg.connected_at is not None and takes_part(leg) for leg in offers):
        return offers
    # The talking leg's Connected was lost: the summary names who talked ("to") and when.
    talk = s.talk or s.forwarded or start
    want = s.target.get("extension")
    named = [leg for leg in offers if takes_part(leg) and leg.first_at <= talk
             and (leg.target.get("extension") == want if inbound or want else "extension" not in leg.target)]
    if named:
        named[-1].connected_at = talk
        return offers
    return [*offers, _synthetic(s, inbound, talk, talk)]


def _synthetic(s: _Summary, inbound: bool, first_at: float, talk: float | None) -> _Leg:
    """A leg only the summary tells of (its own notifications never came)."""
    target = dict(s.target) if inbound or "extension" in s.target else {"number": s.target.get("number", "")}
    name = target.get("extension") or target.get("number") or "unknown"
    leg = _Leg(f"summary-{name}", first_at, 0, location="abonent", target=target, connected_at=talk)
    leg.source = dict(s.source)
    return leg


# -- HTTP ------------------------------------------------------------------------------


class MangoConnector:
    """Serves ``/webhooks/{name}/{account}/...`` for Mango Office accounts and
    sends them ``commands/route``."""

    def __init__(self, accounts: Sequence[Account], name: str = "mango") -> None:
        for account in accounts:  # a misspelt option must stop the start, not be ignored
            for key, value in account.options.items():
                if key not in OPTIONS:
                    raise ValueError(f"[[webhooks.{name}]] {account.name}: options.{key}: unknown option "
                                     f"(known: {', '.join(OPTIONS)})")
                if value not in OPTIONS[key]:
                    raise ValueError(f"[[webhooks.{name}]] {account.name}: options.{key}: expected "
                                     f"{' or '.join(repr(v) for v in OPTIONS[key])}, got {value!r}")
        self.name = name
        self.accounts = {a.name: a for a in accounts}
        self.max_recording = MAX_RECORDING  # bytes
        self._http = ProviderClient(aiohttp.ClientTimeout(total=COMMAND_TIMEOUT))  # commands and recordings
        self._tasks: set[asyncio.Task[None]] = set()
        self._routed: OrderedDict[tuple[str, str], None] = OrderedDict()  # (account, entry_id)

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        return call_events(self.name, self.accounts[account], history)

    async def fetch_recording(self, account: str, ref: str) -> bytes:
        """The file of recording ``ref`` (a ``recording_id``), downloaded through
        ``queries/recording/post/``."""
        found = self.accounts.get(account)
        if found is None:
            raise RecordingFetchFailed(self.name, account, "no such account")
        key, salt = found.secrets.get("key", ""), found.secrets.get("salt", "")
        if not key or not salt:
            raise RecordingFetchFailed(self.name, account, "the key and the salt are needed to download recordings")
        text = json.dumps({"recording_id": ref, "action": "download"}, separators=(",", ":"), ensure_ascii=False)
        url = URL(f"{(found.api_base_url or DEFAULT_API).rstrip('/')}/{RECORDING_QUERY}")
        answer = await fetch(self._http.session(), self.name, account, "POST", url, limit=self.max_recording,
                             form={"vpbx_api_key": key, "sign": sign(key, text, salt), "json": text})
        if answer.ok and (answer.content_type == "application/json" or answer.body[:1] == b"{"):
            # An answer in JSON is Mango refusing (a result code), not a file.
            try:
                result = _int(json.loads(answer.body).get("result"))
            except (ValueError, RecursionError, AttributeError):
                result = None
            raise RecordingFetchFailed(self.name, account, f"HTTP {answer.status} from {answer.host}: "
                                       f"result {result}, no file", answer.status)
        return file_of(answer, self.name, account, f"recording {ref[:80]}")

    @property
    def routes_in_flight(self) -> int:
        """Routing decisions and commands still running."""
        return len(self._tasks)

    async def drain(self) -> None:
        """Wait for the routing decisions and commands under way."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        prefix = f"/webhooks/{self.name}/{{account}}"

        async def notify(request: web.Request) -> web.StreamResponse:
            account = self._account(request)
            if isinstance(account, web.Response):
                return account
            # A base URL saved with a trailing slash gives ".../main//events/call".
            path = "/".join(part for part in request.match_info.get("tail", "").split("/") if part)
            if request.method != "POST" or path not in KEPT:
                log.info("%s %s: %s /%s answered, not kept (a connection check or an unused callback)",
                         self.name, account.name, request.method, path[:80])
                return web.Response(text="")
            try:
                body = await read_body(request)
                accepted, event = check(account, path, body)
            except WebhookRejected as exc:
                log.warning("%s %s: %s refused from %s: %s", self.name, account.name, path, request.remote,
                            exc.message)
                return rejected_response(exc)
            try:
                await intake.deliver(self.name, account.name, Request(path, request.query_string, body, clock()),
                                     accepted)
            except Exception as exc:
                log.warning("%s %s: %s not stored, Mango will have to resend it: %s", self.name, account.name,
                          path, exc)
                return web.json_response({"error": "store_unavailable", "message": "try again"}, status=503)
            if path == ROUTE_RESULT:
                self._log_result(account, event)
            elif path == CALL and decide is not None and accepted.call_key is not None:
                self._maybe_route(account, decide, accepted.call_key, event)
            return web.Response(text="")

        app.router.add_route("*", prefix, notify)
        app.router.add_route("*", prefix + "/{tail:.*}", notify)
        self._http.close_with(app)

    def _account(self, request: web.Request) -> Account | web.Response:
        try:
            return account_of(request, self.accounts, self.name)
        except WebhookRejected as exc:
            return rejected_response(exc)

    def _log_result(self, account: Account, event: Mapping[str, Any]) -> None:
        result = _int(event.get("result"))
        what = ROUTE_RESULTS.get(result or 0, "refused")
        level = logging.INFO if result == 1000 else logging.WARNING
        log.log(level, "%s %s: route command %s: result %s (%s)", self.name, account.name,
                str(event.get("command_id"))[:80], result, what)

    # -- routing ---------------------------------------------------------------------

    def _maybe_route(self, account: Account, decide: Decide, entry: str, event: Mapping[str, Any]) -> None:
        """An inbound call just entered the IVR or a queue: ask who should take it, once per call."""
        source, target = _party(event.get("from")), _party(event.get("to"))
        if (account.options.get("route") == "off" or _text(event.get("call_state")) != "Appeared" or _location(event) not in ("ivr", "queue")
                or "extension" in source or "number" not in source or _text(event.get("command_id"))):
            return
        leg = _text(event.get("call_id"))
        if leg is None or (account.name, entry) in self._routed:
            return
        self._routed[(account.name, entry)] = None
        while len(self._routed) > ROUTED_MEMORY:
            self._routed.popitem(last=False)
        caller = with_plus(source.get("number"))
        dialled = with_plus(target.get("line_number") or target.get("number"))
        task = asyncio.get_running_loop().create_task(self._route(account, decide, leg, caller, dialled))
        self._tasks.add(task)  # kept until done: a task nobody references may be collected
        task.add_done_callback(self._tasks.discard)

    async def _route(self, account: Account, decide: Decide, leg: str, caller: str | None,
                     dialled: str | None) -> None:
        try:
            decision = await asyncio.wait_for(decide(caller, dialled), account.route_deadline)
        except Exception as exc:  # late or failed: the IVR follows its own scenario
            log.warning("%s %s: no routing for leg %s: %s", self.name, account.name, leg[:128],
                        exc or type(exc).__name__)
            return
        if not decision.extension or decision.reason not in ROUTED_REASONS:
            log.info("%s %s: leg %s left to the PBX (%s)", self.name, account.name, leg[:128], decision.reason)
            return
        command = {"command_id": "gw-route-" + hashlib.sha256(f"{account.name}|{leg}".encode()).hexdigest()[:12],
                   "call_id": leg, "to_number": decision.extension}
        await self._command(account, "commands/route", command)

    async def _command(self, account: Account, service: str, command: Mapping[str, str]) -> None:
        """POST one signed command to Mango's API; failures are logged (never re-sent)."""
        text = json.dumps(command, separators=(",", ":"), ensure_ascii=False)
        key, salt = account.secrets.get("key", ""), account.secrets.get("salt", "")
        body = urlencode({"vpbx_api_key": key, "sign": sign(key, text, salt), "json": text})
        url = f"{(account.api_base_url or DEFAULT_API).rstrip('/')}/{service}"
        try:
            async with self._http.session().post(url, data=body.encode(), headers={
                    "Content-Type": "application/x-www-form-urlencoded"}) as response:
                answer = (await response.text())[:200]
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("%s %s: %s %s not sent: %s", self.name, account.name, service, command.get("command_id"),
                        exc or type(exc).__name__)
            return
        if response.status != 200:
            log.warning("%s %s: %s %s refused: HTTP %d %s", self.name, account.name, service,
                        command.get("command_id"), response.status, answer)
        else:
            log.info("%s %s: %s %s sent (to %s): %s", self.name, account.name, service, command.get("command_id"),
                     command.get("to_number"), answer)

    async def close(self) -> None:
        """Close the HTTP client to the provider (the app's cleanup does it too)."""
        await self._http.close()
