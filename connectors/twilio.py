"""Twilio Voice webhooks.

Five URLs per account, below ``/webhooks/twilio/{account}/``: ``voice`` (the
number's incoming-call webhook: the reply is TwiML that routes the call),
``status`` (the number's status callback: the parent call, or a REST-created
call), ``child-status`` (the status callback of the leg that ``<Dial>`` rings),
``dial-action`` (``<Dial action>``: the reply continues or ends the call) and
``recording`` (``recordingStatusCallback``). Every request is a form POST
signed in ``X-Twilio-Signature`` = base64 HMAC-SHA1, keyed by the Auth Token,
of the URL Twilio called + every parameter's name and value sorted by name.
That URL is the account's *public* URL (what Twilio was told), never the one
this process sees behind a proxy; like twilio-python, the URL with and without
an explicit default port (``:443``/``:80``) is accepted, because Twilio itself
is not consistent about it.

A call is keyed by its parent CallSid (a ``<Dial>`` leg names it as
``ParentCallSid``). Twilio does not order its callbacks, and legs interleave:
a call is rebuilt from the *facts* of everything kept so far (each leg's
states ordered by ``SequenceNumber`` then ``Timestamp``, RFC 2822 UTC), so the
arrival order does not change the record. The call ends with the parent's
final status (``completed``, or busy/no-answer/failed/canceled); until that
is in, the call is live and the phones of the ``<Dial>`` legs that ring get
pops. Agent legs are the ``<Dial>`` legs; the agent's extension is read back
from the dialled endpoint (``options.endpoints``, else the ``options.dial``
template, else the child's ``To`` itself). A REST-created call is one Twilio
leg to the customer, placed by the agent its status URL names
(``status?extension=101``), or a call to an agent's endpoint whose ``<Dial>``
legs reach the customer (click-to-call).

Routing: the reply to ``voice`` dials the caller's assigned manager (the
routing function's answer for ``assigned_manager``/``vip``) or else
``options.default_dial``. The routing lookup runs beside the inbox write and
gets ``route_deadline``; after it, or on any error, the call goes to the
default. A manager who does not answer hands the call on to the default
(``dial-action?then=default``); when nobody answers the default either, the
reply is ``options.voicemail_twiml`` (else an empty ``<Response/>``, which
ends the call).

Recordings (``fetch_recording``): the reference is the ``RecordingSid``; the
file is ``GET {api}/2010-04-01/Accounts/{options.account_sid}/Recordings/{sid}.mp3``
with HTTP basic auth (the Account SID and the Auth Token). A reference that is
a URL (a ``RecordingUrl``) is fetched (+ ``.mp3``) only on api.twilio.com or
the configured ``api_base_url``: the credentials go nowhere else, not even
after a redirect (Twilio redirects to its storage, which needs none).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit
from xml.sax.saxutils import escape, quoteattr

import aiohttp
from aiohttp import web
from yarl import URL

from connectors.download import (
    ProviderClient,
    MAX_RECORDING,
    TIMEOUT,
    RecordingFetchFailed,
    basic_auth,
    fetch,
    file_of,
    is_web_url,
    origin,
)
from connectors.webhook import (
    Accepted,
    Account,
    Decide,
    Intake,
    Request,
    WebhookRejected,
    account_of,
    plausible_duration,
    plausible_time,
    read_body,
    rejected_response,
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

KINDS = ("voice", "status", "child-status", "dial-action", "recording")
STATUS_KINDS = ("status", "child-status")
OPTIONS = ("dial", "endpoints", "default_dial", "voicemail_twiml", "timeout", "record", "account_sid")
DEFAULT_API = "https://api.twilio.com"
_SID = re.compile(r"[A-Za-z0-9]{2,64}")  # a RecordingSid (RE + 32 hex); nothing that changes the path
RECORD_MODES = ("do-not-record", "record-from-answer", "record-from-ringing", "record-from-answer-dual",
                "record-from-ringing-dual")
RING_TIMEOUT = 20  # seconds <Dial> rings before its action is asked what next
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?>\n<Response/>\n'
CHILD_EVENTS = "initiated ringing answered completed"

TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
_STATE_RANK = {"queued": 0, "initiated": 1, "ringing": 2, "in-progress": 3, "answered": 3}
_CAUSE = {"completed": 16, "busy": 17, "no-answer": 19}  # Q.850: normal, user busy, no answer
_DIAL_STATUS = {"busy": DialStatus.BUSY, "no-answer": DialStatus.NOANSWER, "failed": DialStatus.UNAVAILABLE,
                "canceled": DialStatus.CANCEL}
_ANSWERED = ("completed", "answered")  # DialCallStatus of a bridged dial


# -- signature ---------------------------------------------------------------------------


def signature(token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Twilio's: the URL, then name + value of every parameter sorted by name
    (a repeated name: each of its values, sorted)."""
    signed = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def url_variants(public_url: str) -> tuple[str, ...]:
    """The account's URL prefix as given, and with its default port added or
    removed (twilio-python accepts both spellings; so does Twilio's signer)."""
    base = public_url.rstrip("/")
    parts = urlsplit(base)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return (base,)
    if default is None:
        return (base,)
    if port is None:
        other = parts._replace(netloc=f"{parts.netloc}:{default}")
    elif port == default:
        other = parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])
    else:
        return (base,)
    return base, urlunsplit(other)


def _pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected(400, "bad_body", "the body is not UTF-8") from None
    return parse_qsl(text.strip(), keep_blank_values=True)


_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "voice": ("CallSid",),
    "status": ("CallSid", "CallStatus"),
    "child-status": ("CallSid", "CallStatus"),
    "dial-action": ("CallSid",),
    "recording": ("CallSid", "RecordingSid"),
}


def check(token: str, prefixes: Sequence[str], kind: str, query: str, body: bytes,
          header: str | None) -> tuple[Accepted, dict[str, str]]:
    """Verify and identify one request: its verdict and its fields."""
    pairs = _pairs(body)
    if not header:
        raise WebhookRejected(401, "bad_signature", "no X-Twilio-Signature header")
    suffix = f"/{kind}" + (f"?{query}" if query else "")
    # aiohttp keeps header bytes that are not UTF-8 as surrogates: encoded back, not a 500.
    given = header.strip().encode("utf-8", "surrogateescape")
    # Every variant is compared (no early exit), so the time taken says nothing.
    matches = [hmac.compare_digest(given, signature(token, prefix + suffix, pairs).encode()) for prefix in prefixes]
    if not any(matches):
        raise WebhookRejected(401, "bad_signature", "X-Twilio-Signature does not match the URL and parameters")
    fields = dict(pairs)
    missing = [name for name in _REQUIRED[kind] if not fields.get(name)]
    if missing:
        raise WebhookRejected(400, "bad_event", f"{kind} without {', '.join(missing)}")
    sid = fields["CallSid"]
    if kind == "voice":
        key, call = f"voice|{sid}", sid
    elif kind in STATUS_KINDS:
        # SPEC §6.5: a leg's callback is (CallSid, SequenceNumber); the status
        # is added for callbacks that carry no sequence number.
        key = f"status|{sid}|{fields['CallStatus']}|{fields.get('SequenceNumber', '')}"
        call = fields.get("ParentCallSid") or sid
    elif kind == "dial-action":
        key, call = f"dial-action|{sid}|{fields.get('DialCallSid', '')}|{fields.get('DialCallStatus', '')}", sid
    else:
        key, call = f"recording|{fields['RecordingSid']}|{fields.get('RecordingStatus', '')}", sid
    return Accepted(dedup_key=key, call_key=call), fields


# -- the account's dialling options ------------------------------------------------------


def _bare(endpoint: str) -> str:
    """An endpoint as compared: a SIP URI without its parameters and headers."""
    value = endpoint.strip()
    if value.lower().startswith(("sip:", "sips:")):
        value = re.split(r"[;?]", value, maxsplit=1)[0]
    return value.lower()


@dataclass(frozen=True)
class Dialling:
    """Where this account's calls are dialled (``Account.options``)."""

    template: str | None = None  # e.g. "sip:{extension}@example.sip.twilio.com"
    endpoints: Mapping[str, str] = field(default_factory=dict)  # extension -> endpoint, before the template
    default: str | None = None  # where calls go that routing gives to nobody
    voicemail: str = EMPTY_TWIML  # the dial-action reply when nobody answered ("{public_url}" filled in)
    timeout: int = RING_TIMEOUT
    record: str | None = "record-from-answer-dual"

    @classmethod
    def of(cls, account: Account) -> Dialling:
        """From the account's options; ValueError names a bad key."""
        options = account.options

        def fail(key: str, expected: str) -> ValueError:
            return ValueError(f"[[webhooks.twilio]] {account.name}: options.{key}: expected {expected}")

        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise fail(unknown[0], f"one of {', '.join(OPTIONS)}")
        template = options.get("dial") or None
        if template is not None and template.count("{extension}") != 1:
            raise fail("dial", 'a template with one "{extension}", like "sip:{extension}@example.sip.twilio.com"')
        endpoints: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in options.get("endpoints", "").split(","))):
            extension, _, endpoint = item.partition("=")
            if not extension.strip() or not endpoint.strip():
                raise fail("endpoints", 'extension=endpoint pairs, like "101=+14155550142, 102=sip:102@pbx"')
            endpoints[extension.strip()] = endpoint.strip()
        try:
            timeout = int(options.get("timeout", str(RING_TIMEOUT)))
        except ValueError:
            raise fail("timeout", "seconds between 5 and 600") from None
        if not 5 <= timeout <= 600:
            raise fail("timeout", "seconds between 5 and 600")
        record = options.get("record", "record-from-answer-dual")
        if record not in RECORD_MODES:
            raise fail("record", f"one of {', '.join(RECORD_MODES)}")
        voicemail = options.get("voicemail_twiml") or EMPTY_TWIML
        try:
            root = ElementTree.fromstring(voicemail.replace("{public_url}", "https://x").encode())
        except ElementTree.ParseError:
            raise fail("voicemail_twiml", "a TwiML document (<Response>...</Response>)") from None
        if root.tag != "Response":
            raise fail("voicemail_twiml", "a TwiML document (<Response>...</Response>)")
        return cls(template=template, endpoints=endpoints, default=options.get("default_dial") or None,
                   voicemail=voicemail, timeout=timeout, record=None if record == "do-not-record" else record)

    def endpoint_for(self, extension: str) -> str | None:
        """Where to dial an agent's extension (None: nowhere configured)."""
        if extension in self.endpoints:
            return self.endpoints[extension]
        return self.template.replace("{extension}", extension) if self.template else None

    def extension_of(self, endpoint: str | None, *, strict: bool = False) -> str | None:
        """The agent extension a dialled endpoint belongs to: by ``endpoints``,
        by the template, a short number itself; else (unless ``strict``) the
        endpoint itself, so that whoever answers there is named."""
        if not endpoint:
            return None
        bare = _bare(endpoint)
        for extension, known in sorted(self.endpoints.items()):
            if _bare(known) == bare:
                return extension
        if self.template is not None:
            before, _, after = self.template.partition("{extension}")
            found = re.fullmatch(re.escape(_bare(before)) + r"([^@;:/?]+)" + re.escape(_bare(after)), bare)
            if found:
                return found[1]
        if endpoint.isdigit() and len(endpoint) <= 6:
            return endpoint
        return None if strict else endpoint


# -- TwiML -------------------------------------------------------------------------------


def dial_twiml(dialling: Dialling, public_url: str, endpoint: str, *, then_default: bool) -> str:
    """``<Dial>`` one endpoint, with the callbacks the gateway needs (the
    shape of samples/twilio_voice_response__dial_manager.xml)."""
    base = public_url.rstrip("/")
    action = f"{base}/dial-action" + ("?then=default" if then_default else "")
    attributes = [("action", action), ("method", "POST"), ("timeout", str(dialling.timeout)),
                  ("answerOnBridge", "true")]
    if dialling.record is not None:
        attributes += [("record", dialling.record), ("recordingStatusCallback", f"{base}/recording"),
                       ("recordingStatusCallbackEvent", "completed")]
    lowered = endpoint.lower()
    if lowered.startswith(("sip:", "sips:")):
        noun, target = "Sip", endpoint
    elif lowered.startswith("client:"):
        noun, target = "Client", endpoint[len("client:"):]
    else:
        noun, target = "Number", endpoint
    dial = " ".join(f"{name}={quoteattr(value)}" for name, value in attributes)
    callbacks = f'statusCallback={quoteattr(f"{base}/child-status")} statusCallbackEvent="{CHILD_EVENTS}"'
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response>\n  <Dial {dial}>\n'
            f"    <{noun} {callbacks}>{escape(target)}</{noun}>\n  </Dial>\n</Response>\n")


def voicemail_twiml(dialling: Dialling, public_url: str) -> str:
    return dialling.voicemail.replace("{public_url}", public_url.rstrip("/"))


# -- the call from its requests ------------------------------------------------------------


def _stamp(value: str | None) -> float | None:
    """An RFC 2822 time (Twilio's ``Timestamp``) as epoch seconds; None if unreadable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    # "-0000": UTC. A year Twilio cannot mean (0001, 9999 west of UTC): None.
    return plausible_time((moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp())


def _number(value: str | None) -> float | None:
    """A duration in seconds; None if unreadable or longer than any call."""
    try:
        return plausible_duration(float(value)) if value else None
    except ValueError:
        return None


def _least(current: str | None, new: str | None) -> str | None:
    """One value from several (they agree in practice): the same whatever the order."""
    if not new:
        return current
    return new if current is None else min(current, new)


@dataclass(frozen=True, order=True)
class _Callback:
    """One status callback of one leg, in Twilio's order for the leg."""

    seq: int
    at: float
    rank: int
    status: str
    stamped: bool  # ``at`` is Twilio's Timestamp, not the gateway's receipt
    duration: float | None
    body: bytes  # the last tie-break: identical callbacks are duplicates anyway


@dataclass
class _Leg:
    sid: str
    direction: str | None = None
    source: str | None = None  # From
    target: str | None = None  # To
    callbacks: set[_Callback] = field(default_factory=set)
    dial_status: str | None = None  # from the parent's <Dial action> (DialCallSid = this leg)
    dial_duration: float | None = None
    dial_at: float | None = None
    # settled from the above
    first_at: float | None = None
    initiated_at: float | None = None
    ringing_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    end_status: str | None = None
    answered: bool = False

    def settle(self) -> None:
        ordered = sorted(self.callbacks)
        last = max((i for i, cb in enumerate(ordered) if cb.status in TERMINAL), default=None)
        # A state reported after the leg's end is late news of nothing (SPEC §6.6).
        live = ordered if last is None else ordered[:last]
        times = [cb.at for cb in ordered]
        self.first_at = min(times) if times else None
        self.initiated_at = min((cb.at for cb in live if cb.status in ("queued", "initiated")), default=None)
        self.ringing_at = min((cb.at for cb in live if cb.status == "ringing"), default=None)
        self.answered_at = min((cb.at for cb in live if cb.status in ("in-progress", "answered")), default=None)
        duration: float | None = None
        if last is not None:
            end = ordered[last]
            self.ended_at, self.end_status, duration = end.at, end.status, end.duration
        elif self.dial_status in TERMINAL or self.dial_status == "answered":
            self.ended_at = self.dial_at
            self.end_status = "completed" if self.dial_status == "answered" else self.dial_status
            duration = self.dial_duration
        self.answered = self.answered_at is not None or self.end_status == "completed"
        if self.answered and self.answered_at is None and self.ended_at is not None:
            self.answered_at = self.ended_at - (duration or 0.0)

    @property
    def stamps(self) -> list[float]:
        return [cb.at for cb in self.callbacks if cb.stamped]

    @property
    def duration(self) -> float | None:
        """The CallDuration of the leg's final callback."""
        ends = sorted(cb for cb in self.callbacks if cb.status in TERMINAL)
        return ends[-1].duration if ends else None


@dataclass
class _Call:
    parent: str
    legs: dict[str, _Leg] = field(default_factory=dict)
    received: list[float] = field(default_factory=list)
    recordings: set[tuple[float, str]] = field(default_factory=set)  # (start, RecordingSid)
    dial_statuses: set[str] = field(default_factory=set)
    extension: str | None = None  # ?extension= on a REST call's status URL: the agent who placed it

    def leg(self, sid: str) -> _Leg:
        return self.legs.setdefault(sid, _Leg(sid))


def _call_of(history: Sequence[Request]) -> _Call | None:
    parsed: list[tuple[Request, dict[str, str], dict[str, str]]] = []
    for request in history:
        if request.path not in KINDS:
            continue
        try:
            fields = dict(_pairs(request.body))
        except WebhookRejected:
            continue
        if fields.get("CallSid"):
            parsed.append((request, fields, dict(parse_qsl(request.query, keep_blank_values=True))))
    keys = {fields.get("ParentCallSid") or fields["CallSid"] if request.path in STATUS_KINDS else fields["CallSid"]
            for request, fields, _ in parsed}
    if not keys:
        return None
    call = _Call(parent=min(keys))
    for request, fields, query in parsed:
        call.received.append(request.received_at)
        sid = fields["CallSid"]
        recording = fields.get("RecordingSid")
        if recording and fields.get("RecordingStatus", "completed") not in ("absent", "failed"):
            start = _stamp(fields.get("RecordingStartTime"))
            call.recordings.add((start if start is not None else math.inf, recording))
        if request.path == "recording":
            continue
        leg = call.leg(sid)
        leg.direction = _least(leg.direction, fields.get("Direction"))
        leg.source = _least(leg.source, fields.get("From"))
        leg.target = _least(leg.target, fields.get("To"))
        if request.path in STATUS_KINDS:
            stamp = _stamp(fields.get("Timestamp"))
            status = fields["CallStatus"]
            try:
                seq = int(fields.get("SequenceNumber") or -1)
            except ValueError:
                seq = -1
            leg.callbacks.add(_Callback(seq, stamp if stamp is not None else request.received_at,
                                        4 if status in TERMINAL else _STATE_RANK.get(status, 0), status,
                                        stamp is not None, _number(fields.get("CallDuration")), request.body))
            call.extension = _least(call.extension, query.get("extension"))
        elif request.path == "dial-action":
            status = fields.get("DialCallStatus", "")
            call.dial_statuses.add(status)
            if fields.get("DialCallSid"):
                child = call.leg(fields["DialCallSid"])
                child.dial_status = _least(child.dial_status, status)
                duration = _number(fields.get("DialCallDuration"))
                if duration is not None:
                    child.dial_duration = duration if child.dial_duration is None else max(child.dial_duration,
                                                                                           duration)
                child.dial_at = request.received_at if child.dial_at is None else min(child.dial_at,
                                                                                      request.received_at)
    for leg in call.legs.values():
        leg.settle()
    return call


@dataclass(frozen=True)
class _Offer:
    """A leg the call's origin rings, as the events describe it."""

    leg: _Leg
    kind: PartyKind
    extension: str | None
    number: str | None


def call_events(provider: str, account: Account, dialling: Dialling, history: Sequence[Request]) -> list[CallEvent]:
    call = _call_of(history)
    if call is None:
        return []
    parent = call.leg(call.parent)
    children = sorted((leg for leg in call.legs.values() if leg.sid != call.parent and leg.callbacks),
                      key=lambda leg: (leg.first_at if leg.first_at is not None else math.inf, leg.sid))
    if not parent.direction and not parent.callbacks and not children:
        return []  # only a recording or a <Dial action> so far: nothing to show yet
    call_id = f"{provider}:{account.name}:{call.parent}"
    inbound = (parent.direction or "inbound") == "inbound"
    end = parent.ended_at if parent.end_status is not None else None  # the parent's final status

    stamps = [t for leg in call.legs.values() for t in leg.stamps]
    if inbound and end is not None and parent.duration is not None and any(
            cb.stamped and cb.status in TERMINAL for cb in parent.callbacks):
        stamps.append(end - parent.duration)  # an inbound parent's CallDuration runs from its start
    start = min(stamps) if stamps else min(call.received)

    if inbound:
        # The customer called the DID; the <Dial> legs are the agents offered the call.
        origin, kind, extension = call.parent, PartyKind.EXTERNAL, None
        number = parent.source or next((c.source for c in children if c.source), None)
        dialled = parent.target
        offers = [_Offer(c, PartyKind.AGENT, dialling.extension_of(c.target), c.target) for c in children]
    elif (agent := dialling.extension_of(parent.target, strict=True)) is not None:
        # A REST call to an agent's phone that then <Dial>s the customer (click-to-call).
        origin, kind, extension, number, dialled = call.parent, PartyKind.AGENT, agent, parent.target, None
        offers = [_Offer(c, PartyKind.EXTERNAL, None, c.target) for c in children]
    else:
        # A REST call straight to the customer is one Twilio leg; who placed it
        # is the agent named on its status URL (?extension=101), else unknown.
        origin, kind, extension = f"{call.parent}:agent", PartyKind.AGENT, call.extension
        number, dialled = parent.source, None
        offers = [_Offer(parent, PartyKind.EXTERNAL, None, parent.target)]

    events: list[CallEvent] = [LegCreated(call_id, origin, start, kind, extension=extension, number=number,
                                          dialled=dialled)]
    if call.recordings:
        recording = min(call.recordings)[1]
        events.append(RecordingStarted(call_id, origin, start, path=f"{provider}://{account.name}/{recording}"))
    # The rest in time order; at one time: created, dialled, ringing, answered,
    # bridged, the caller giving up, a dial ending unanswered, a hangup.
    timed: list[tuple[float, int, int, CallEvent]] = []
    for i, offer in enumerate(offers):
        leg, sid = offer.leg, offer.leg.sid
        own = leg is parent  # the REST call's one leg: it exists from the call's start
        if leg.initiated_at is not None:
            begun = leg.initiated_at
        else:
            begun = start if own or leg.first_at is None else leg.first_at
        created = LegCreated(call_id, sid, start if own else begun, offer.kind, extension=offer.extension,
                             number=offer.number, dialled=offer.number if offer.kind is PartyKind.EXTERNAL else None)
        if own:
            events.append(created)
        else:
            timed.append((begun, 0, i, created))
        timed.append((begun, 1, i, LegDialled(call_id, sid, begun, from_leg=origin, dialled=offer.number)))
        if leg.ringing_at is not None or leg.answered or leg.end_status == "no-answer":
            ringing = leg.ringing_at if leg.ringing_at is not None else begun
            timed.append((ringing, 2, i, LegRinging(call_id, sid, ringing)))
        if leg.answered and leg.answered_at is not None:
            at = leg.answered_at
            timed += [(at, 3, i, LegDialEnded(call_id, sid, at, DialStatus.ANSWER, from_leg=origin)),
                      (at, 4, i, LegBridged(call_id, origin, sid, at)), (at, 4, i, LegBridged(call_id, sid, sid, at))]
        # A <Dial> leg may end while the call goes on (to voicemail, to the
        # default): its own end is news. The call ends only with the parent's
        # final status, so the parent's hangups, and those of legs with no end
        # of their own, wait for it.
        if leg.ended_at is not None and not own:
            leg_end, status = leg.ended_at, _DIAL_STATUS.get(leg.end_status or "", DialStatus.OTHER)
        elif end is not None:
            leg_end, status = end, (_DIAL_STATUS.get(leg.end_status or "", DialStatus.OTHER) if own
                                    else DialStatus.CANCEL)
        else:
            continue
        if not leg.answered:
            timed.append((leg_end, 6, i, LegDialEnded(call_id, sid, leg_end, status, from_leg=origin)))
        cause = _CAUSE.get(leg.end_status or "") if leg.ended_at is not None else None
        timed.append((leg_end, 7, i, LegHungUp(call_id, sid, leg_end, cause)))
    if end is not None:
        if inbound and not any(c.answered for c in children):
            canceled = [c.ended_at for c in children if c.end_status == "canceled" and c.ended_at is not None]
            if canceled or any(c.ended_at is None for c in children) or "canceled" in call.dial_statuses:
                # The caller hung up while an agent's phone rang: said before that dial ends.
                at = min([end, *canceled])
                timed.append((at, 5, -1, LegHangupRequested(call_id, origin, at)))
        timed.append((end, 8, len(offers), LegHungUp(call_id, origin, end, _CAUSE.get(parent.end_status or ""))))
    timed.sort(key=lambda item: (item[0], item[1], item[2]))
    return events + [event for _, _, _, event in timed]


# -- HTTP --------------------------------------------------------------------------------


class TwilioConnector:
    """Serves ``/webhooks/{name}/{account}/{voice|status|child-status|dial-action|recording}``."""

    def __init__(self, accounts: Sequence[Account], name: str = "twilio") -> None:
        self.name = name
        self.accounts = {a.name: a for a in accounts}
        self.max_recording = MAX_RECORDING  # bytes
        self._http = ProviderClient()  # recordings
        self.dialling = {a.name: Dialling.of(a) for a in accounts}
        self.prefixes = {a.name: url_variants(a.public_url) for a in accounts}
        for account in accounts:
            if self.dialling[account.name].default is None:
                log.warning("%s %s: options.default_dial is not set: calls routing gives to nobody get the "
                            "voicemail TwiML (or are ended)", name, account.name)

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        return call_events(self.name, self.accounts[account], self.dialling[account], history)

    async def fetch_recording(self, account: str, ref: str) -> bytes:
        """The MP3 of recording ``ref`` (a RecordingSid, or a RecordingUrl on Twilio's API)."""
        found = self.accounts.get(account)
        if found is None:
            raise RecordingFetchFailed(self.name, account, "no such account")
        sid, token = found.options.get("account_sid", ""), found.secrets.get("auth_token", "")
        if not sid or not token:
            raise RecordingFetchFailed(self.name, account, "options.account_sid and the auth_token are needed to "
                                       "download recordings")
        base = (found.api_base_url or DEFAULT_API).rstrip("/")
        if "://" in ref:
            url = self._api_url(found, base, ref)
        elif _SID.fullmatch(ref):
            url = URL(f"{base}/2010-04-01/Accounts/{quote(sid, safe='')}/Recordings/{ref}.mp3")
        else:
            raise RecordingFetchFailed(self.name, account, "the reference is neither a RecordingSid nor a URL")
        answer = await fetch(self._http.session(), self.name, account, "GET", url, limit=self.max_recording,
                             headers={"Authorization": basic_auth(sid, token)})
        return file_of(answer, self.name, account, "the recording")

    def _api_url(self, account: Account, base: str, ref: str) -> URL:
        """A RecordingUrl + ".mp3", if it is on Twilio's API (or the configured
        one): the credentials are for there only."""
        if not is_web_url(ref):
            raise RecordingFetchFailed(self.name, account.name, "refused: the recording URL is not http(s)")
        url = URL(ref)
        allowed = {origin(URL(base)), origin(URL(DEFAULT_API))}
        if origin(url) not in allowed or url.query_string or url.fragment:
            raise RecordingFetchFailed(self.name, account.name, f"refused: the recording URL is on {url.host}, not "
                                       "Twilio's API: the credentials are not sent there")
        return url if url.path.endswith(".mp3") else url.with_path(url.path + ".mp3")

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        async def hook(request: web.Request) -> web.StreamResponse:
            account = self._account(request)
            if isinstance(account, web.Response):
                return account
            kind = request.match_info["kind"]
            if kind not in KINDS:
                return web.json_response({"error": "not_found", "message": f"no such callback: {kind[:40]}"},
                                         status=404)
            query = request.rel_url.raw_query_string
            try:
                body = await read_body(request)
                accepted, fields = check(account.secrets["auth_token"], self.prefixes[account.name], kind, query,
                                         body, request.headers.get("X-Twilio-Signature"))
            except WebhookRejected as exc:
                log.warning("%s %s: %s refused from %s: %s", self.name, account.name, kind, request.remote,
                            exc.message)
                return rejected_response(exc)
            routing = None
            if kind == "voice" and (fields.get("Direction") or "inbound") == "inbound":
                routing = asyncio.ensure_future(self._endpoint(decide, account, fields))
            try:
                await intake.deliver(self.name, account.name, Request(kind, query, body, clock()), accepted)
            except Exception as exc:
                if routing is not None:
                    routing.cancel()
                log.warning("%s %s: %s not stored, Twilio will have to send it again: %s", self.name, account.name,
                          kind, exc)
                return web.json_response({"error": "store_unavailable", "message": "try again"}, status=503)
            if kind == "dial-action":
                twiml = self._after_dial(account, fields, query)
            elif kind != "voice":
                twiml = EMPTY_TWIML
            elif routing is None:
                # A REST call whose TwiML URL is this one: nobody here knows whom it should dial.
                log.warning("%s %s: voice webhook of a %s call %s: nothing to dial", self.name, account.name,
                            fields.get("Direction", "")[:20], fields.get("CallSid"))
                twiml = EMPTY_TWIML
            else:
                twiml = self._route_reply(account, await routing)
            return web.Response(text=twiml, content_type="text/xml")

        app.router.add_post(f"/webhooks/{self.name}/{{account}}/{{kind}}", hook)
        self._http.close_with(app)

    async def close(self) -> None:
        """Close the HTTP client to the provider (the app's cleanup does it too)."""
        await self._http.close()

    def _account(self, request: web.Request) -> Account | web.Response:
        try:
            return account_of(request, self.accounts, self.name)
        except WebhookRejected as exc:
            return rejected_response(exc)

    async def _endpoint(self, decide: Decide | None, account: Account, fields: Mapping[str, str]) -> str | None:
        """The manager's endpoint for this caller, or None (the default):
        within the deadline, never an error."""
        if decide is None:
            return None
        try:
            decision = await asyncio.wait_for(decide(fields.get("From") or None, fields.get("To") or None),
                                              account.route_deadline)
        except Exception as exc:  # a late or failed decision must not hold the caller
            log.warning("%s %s: no routing for call %s: %s", self.name, account.name, fields.get("CallSid"),
                        exc or type(exc).__name__)
            return None
        if decision.extension and decision.reason in ("assigned_manager", "vip"):
            endpoint = self.dialling[account.name].endpoint_for(decision.extension)
            if endpoint is None:
                log.warning("%s %s: no endpoint for extension %s (options.dial / endpoints)", self.name,
                            account.name, decision.extension)
            return endpoint
        return None

    def _route_reply(self, account: Account, endpoint: str | None) -> str:
        dialling = self.dialling[account.name]
        if endpoint is not None:
            return dial_twiml(dialling, account.public_url, endpoint, then_default=dialling.default is not None)
        if dialling.default is not None:
            return dial_twiml(dialling, account.public_url, dialling.default, then_default=False)
        return voicemail_twiml(dialling, account.public_url)

    def _after_dial(self, account: Account, fields: Mapping[str, str], query: str) -> str:
        """The ``<Dial action>`` reply: end an answered (or abandoned) call;
        hand an unanswered manager's call to the default; else voicemail."""
        dialling = self.dialling[account.name]
        status = fields.get("DialCallStatus", "")
        if status in _ANSWERED or status == "canceled" or fields.get("CallStatus") == "completed":
            return EMPTY_TWIML
        then = dict(parse_qsl(query)).get("then")
        if then == "default" and dialling.default is not None:
            return dial_twiml(dialling, account.public_url, dialling.default, then_default=False)
        return voicemail_twiml(dialling, account.public_url)
