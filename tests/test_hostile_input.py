"""Hostile input, with hypothesis: the AMI codec, every webhook parser behind
the real aiohttp app, and the websocket client frames to the hub.

The contract for each: accept, or refuse with a documented answer (a skipped
AMI message counted in ``skipped``; a 2xx/4xx/413/503 webhook answer; a
websocket error frame or a documented close code); never a crash of a
connection task or of the process, and memory bounded. After the hostile
input the same gateway still does its work with real input.

Examples are bounded and derandomised, so CI runs the same cases each time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from connectors.ami.codec import AmiCodec, AmiMessage
from connectors.ami.normalise import AmiNormaliser
from connectors.ami.server import capture_stream
from connectors.mango import MangoConnector
from connectors.webhook import MAX_BODY
from gateway.config import Secret, WebhookAccount, WebhooksConfig
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.local_server import serve
from tests.test_callbacks_live import jsonl_stream
from tests.test_hub import FakeClock, Tab, auth, open_ws, running
from tests.test_mango import ANSWERED as MANGO_ANSWERED
from tests.test_mango import KEY as MANGO_KEY
from tests.test_mango import SALT as MANGO_SALT
from tests.test_mango import deliver as mango_deliver
from tests.test_numberplan import example_plan
from tests.test_sipuni import ANSWERED as SIPUNI_ANSWERED
from tests.test_sipuni import TOKEN as SIPUNI_TOKEN
from tests.test_sipuni import deliver as sipuni_deliver
from tests.test_twilio import ANSWERED as TWILIO_ANSWERED
from tests.test_twilio import OPTIONS as TWILIO_OPTIONS
from tests.test_twilio import PUBLIC as TWILIO_PUBLIC
from tests.test_twilio import TOKEN as TWILIO_TOKEN
from tests.test_twilio import deliver as twilio_deliver
from tests.test_zadarma import ANSWERED as ZADARMA_ANSWERED
from tests.test_zadarma import SAMPLE_DAY
from tests.test_zadarma import SECRET as ZADARMA_SECRET
from tests.test_zadarma import deliver as zadarma_deliver

T = TypeVar("T")

CAPTURES = Path(__file__).parent / "captures" / "asterisk-22"
NOTHING_DROPPED: frozenset[str] = frozenset()

# Bounded and reproducible: the whole file runs in well under a minute on 2 busy cores.
FAST = settings(max_examples=60, deadline=None, derandomize=True, print_blob=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the AMI codec ------------------------------------------------------------------------


@cache
def capture_bytes(name: str) -> bytes:
    return (CAPTURES / name).read_bytes()


CAPTURE_NAMES = sorted(p.name for p in CAPTURES.glob("*.ami"))


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` cut into reads of the given sizes, cycled."""
    pos, i = 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        yield data[pos:pos + size]
        pos += size
        i += 1


def decode(codec: AmiCodec, reads: Iterator[bytes] | list[bytes], *, bound: int | None = None) -> list[AmiMessage]:
    """Feed reads as the link does (drain after each), then EOF; check the buffer
    bound after every drain: at most ``max_message_bytes`` plus one read."""
    out: list[AmiMessage] = []
    for read in reads:
        if not read:
            continue
        codec.receive_data(read)
        out.extend(codec.messages())
        if bound is not None:
            assert codec.pending_bytes <= bound + len(read), (codec.pending_bytes, len(read))
    codec.receive_data(b"")
    out.extend(codec.messages())
    assert codec.pending_bytes == 0  # a message cut by EOF is dropped, not kept
    return out


@cache
def whole(name: str, limit: int) -> tuple[list[AmiMessage], int]:
    codec = AmiCodec(max_message_bytes=limit, drop_events=NOTHING_DROPPED)
    return decode(codec, [capture_bytes(name)]), codec.skipped


@FAST
@given(name=st.sampled_from(CAPTURE_NAMES),
       sizes=st.lists(st.one_of(st.integers(1, 7), st.integers(8, 5000)), min_size=1, max_size=30),
       limit=st.sampled_from([300, 1200, 64 * 1024]))
def test_any_chunking_of_a_real_capture_decodes_the_same(name: str, sizes: list[int], limit: int) -> None:
    """Real Asterisk bytes cut anywhere give the same messages as read whole; a
    small limit makes some of them oversized, which are skipped the same way."""
    expected, skipped = whole(name, limit)
    codec = AmiCodec(max_message_bytes=limit, drop_events=NOTHING_DROPPED)
    assert decode(codec, pieces(capture_bytes(name), sizes), bound=limit) == expected
    assert codec.skipped == skipped


# A model of well-formed messages: (name, value) pairs, the first naming the kind.
KEYS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1,
               max_size=12)
VALUES = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=80)
HEADER = st.tuples(st.one_of(KEYS, st.sampled_from(["Event", "ActionID", "Response", "Variable"])), VALUES)
MESSAGE = st.tuples(st.tuples(st.sampled_from(["Event", "Response", "Action"]), VALUES),
                    st.lists(HEADER, max_size=8)).map(lambda m: [m[0], *m[1]])


def expected_message(pairs: list[tuple[str, str]]) -> AmiMessage:
    """What the codec documents: a repeated header becomes a list of its values in
    order, except Event, Response and ActionID, whose first value is kept."""
    msg: AmiMessage = {}
    for key, value in pairs:
        old = msg.get(key)
        if old is None:
            msg[key] = value
        elif key in ("Event", "Response", "ActionID"):
            continue
        elif isinstance(old, list):
            old.append(value)
        else:
            msg[key] = [old, value]
    return msg


def encoded(pairs: list[tuple[str, str]], eol: bytes) -> bytes:
    return b"".join(f"{key}: {value}".encode() + eol for key, value in pairs) + eol


@FAST
@given(messages=st.lists(MESSAGE, min_size=1, max_size=12), eol=st.sampled_from([b"\r\n", b"\n"]),
       banner=st.booleans(), blank=st.sampled_from([b"", b"\r\n", b"\n\n"]),
       limit=st.sampled_from([64, 200, 64 * 1024]),
       sizes=st.lists(st.integers(1, 300), min_size=1, max_size=20))
def test_generated_messages_decode_as_documented(messages: list[list[tuple[str, str]]], eol: bytes, banner: bool,
                                                 blank: bytes, limit: int, sizes: list[int]) -> None:
    """Any well-formed stream, CRLF or bare-LF, with repeated headers, blank lines
    between messages and any chunking: every message up to the limit decodes to
    the model, every longer one is skipped and counted, the buffer stays bounded."""
    stream = b"Asterisk Call Manager/11.0.0" + eol if banner else b""
    expected: list[AmiMessage] = [{"Banner": "Asterisk Call Manager/11.0.0"}] if banner else []
    oversized = 0
    for pairs in messages:
        data = encoded(pairs, eol)
        stream += data + blank
        if len(data) > limit:
            oversized += 1
        else:
            expected.append(expected_message(pairs))
    codec = AmiCodec(max_message_bytes=limit, drop_events=NOTHING_DROPPED)
    assert decode(codec, pieces(stream, sizes), bound=limit) == expected
    assert codec.skipped == oversized


@FAST
@given(value=st.binary(min_size=1, max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
       sizes=st.lists(st.integers(1, 50), min_size=1, max_size=5))
def test_invalid_utf8_is_decoded_with_replacement_and_nothing_else_is_lost(value: bytes, sizes: list[int]) -> None:
    stream = (b"Event: Newchannel\r\nCallerIDName: " + value + b"\r\nUniqueid: 1.1\r\n\r\n"
              b"Event: Hangup\r\nUniqueid: 1.1\r\nCause: 16\r\n\r\n")
    codec = AmiCodec(drop_events=NOTHING_DROPPED)
    assert decode(codec, pieces(stream, sizes)) == [
        {"Event": "Newchannel", "CallerIDName": value.decode("utf-8", "replace"), "Uniqueid": "1.1"},
        {"Event": "Hangup", "Uniqueid": "1.1", "Cause": "16"},
    ]
    assert codec.skipped == 0


HOSTILE_PARTS = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"\n\n", b": ", b":", b"Event: ", b"Event:VarSet",
                     b"Event: VarSet", b"Response: Success", b"Action: Ping", b"ActionID: 1", b"Asterisk Call Manager/",
                     b"\xff\xfe", b"\xd0", b"\x00", b"\xe2\x82", b"Cyrillic: \xd0\x98\xd0\xb2"]),
    st.integers(1, 5000).map(lambda n: b"X" * n),
)


@FAST
@given(parts=st.lists(HOSTILE_PARTS, max_size=40), sizes=st.lists(st.integers(1, 700), min_size=1, max_size=10),
       limit=st.sampled_from([128, 1024, 64 * 1024]))
def test_arbitrary_bytes_never_raise_and_stay_bounded(parts: list[bytes], sizes: list[int], limit: int) -> None:
    """Garbage in any chunking: only messages of the documented shape come out,
    the buffer never holds more than the limit plus one read, and a real call
    sent after the garbage (and a blank line) is decoded whole."""
    tail = capture_bytes("b_missed.ami").split(b"\r\n", 1)[1]  # without the banner
    stream = b"".join(parts) + b"\r\n\r\n" + tail
    codec = AmiCodec(max_message_bytes=limit, drop_events=NOTHING_DROPPED)
    out = decode(codec, pieces(stream, sizes), bound=limit)
    for msg in out:
        assert next(iter(msg)) in ("Event", "Response", "Action", "Banner"), msg
        for key, value in msg.items():
            assert isinstance(key, str) and key and ":" not in key
            assert isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
            if key in ("Event", "Response", "ActionID"):
                assert isinstance(value, str), msg
    real = whole("b_missed.ami", limit)[0][1:]  # the capture's own messages, banner aside
    assert out[len(out) - len(real):] == real


@settings(max_examples=15, deadline=None, derandomize=True, print_blob=False, database=None)
@given(size=st.integers(10_000, 3_000_000), read=st.integers(1000, 65_536), eol=st.sampled_from([b"\r\n", b"\n"]))
def test_a_huge_line_is_skipped_with_bounded_memory(size: int, read: int, eol: bytes) -> None:
    """A header line of megabytes, read in socket-sized pieces: the codec never
    holds more than its limit plus one read, skips that message only, and the
    Hangup right behind it arrives."""
    limit = 8192
    codec = AmiCodec(max_message_bytes=limit, drop_events=NOTHING_DROPPED)
    huge = b"Event: Newchannel" + eol + b"CallerIDName: " + b"\xd0\x98" * (size // 2) + eol + eol
    hangup = b"Event: Hangup" + eol + b"Uniqueid: 1.1" + eol + eol
    assert decode(codec, pieces(b"Event: FullyBooted" + eol + eol + huge + hangup, [read]), bound=limit) == [
        {"Event": "FullyBooted"}, {"Event": "Hangup", "Uniqueid": "1.1"}]
    assert codec.skipped == 1


def test_capture_byte_by_byte_decodes_as_whole() -> None:
    name = "c_abandoned_ringing.ami"
    codec = AmiCodec(drop_events=NOTHING_DROPPED)
    data = capture_bytes(name)
    assert decode(codec, (data[i:i + 1] for i in range(len(data)))) == whole(name, 64 * 1024)[0]


# -- the webhook parsers, through the real app --------------------------------------------
#
# One gateway with an account of every provider. Each example is one request to
# it; hypothesis runs inside a plain test that owns the event loop, so the same
# gateway serves every example and is checked with real samples afterwards.

ALLOWED = {200, 204, 400, 401, 403, 404, 405, 413}  # and 503 only if the store fails, which it does not here
NASTY_TEXT = st.sampled_from([
    "", " ", "0", "-1", "1.5", "1e309", "-1e309", "nan", "NaN", "inf", "-0", "99999999999999999999999999",
    "١٢٣", "²", "٠٠٠٠٠٠٠٠٠٠٠", "101", "+79161110001", "79161110001", "89161110001", "8", "\x00", "%ff",
    "2026-03-02 10:15:00", "2026-02-30 25:61:61", "9999-12-31 23:59:59", "0001-01-01 00:00:00",
    "1772435707", "-62135596800", "253402300800", "99999999999", "Mon, 02 Mar 2026 18:15:07 +0000",
    "Mon, 99 Foo 2026 99:99:99 +9999", "Fri, 31 Dec 9999 23:59:59 -1200", "Mon, 01 Jan 1900 00:00:00 +0000", "answered", "busy", "cancel", "no answer", "ANSWER", "NOANSWER",
    "completed", "in-progress", "ringing", "no-answer", "canceled", "failed", "1", "2", "3", "4",
    "<Response/>", "' OR 1=1 --", "Иван Петров", "sip:101@example.sip.twilio.com", "client:anna",
    "http://127.0.0.1:9/rec.mp3", "file:///etc/passwd", "../../etc/passwd",
])
NASTY = st.one_of(NASTY_TEXT, st.text(max_size=30), st.integers().map(str), st.floats().map(repr),
                  st.integers(200, 3000).map(lambda n: "9" * n))
NAMES = st.text(max_size=12)


def mostly(right: T | st.SearchStrategy[T], wrong: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """``right`` mostly (about nine times in ten), so that most hostile requests
    get past the signature and the required fields to the parsers behind them."""
    good = right if isinstance(right, st.SearchStrategy) else st.just(right)
    # A float decides: hypothesis draws small integers and one_of branches far from evenly.
    return st.floats(0, 1).flatmap(lambda x: good if x < 0.8 else wrong)


# What an HTTP client can put in a header: no control characters.
HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f"),
                       max_size=60)


class ErrorLog(logging.Handler):
    """Every ERROR logged while it is attached: a crashed handler, a consumer that
    could not process a request, a task that died with an exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[str]:
        got = [f"{r.name}: {r.getMessage()}\n{self.format(r) if r.exc_info else ''}" for r in self.records]
        self.records.clear()
        return got


@dataclass(frozen=True)
class Hit:
    """One hostile request."""

    method: str
    path: str  # below /webhooks/
    body: bytes = b""
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    chunked: bool = False  # no Content-Length: the limit must hold while reading


def all_providers(api: str) -> WebhooksConfig:
    """An account of every provider, signed as in the providers' own tests; their
    APIs (Mango's commands/route) on a stand-in at ``api``, never the internet."""
    mango = {"key": Secret(MANGO_KEY), "salt": Secret(MANGO_SALT)}
    return WebhooksConfig(accounts=(
        WebhookAccount("zadarma", "main", {"secret": Secret(ZADARMA_SECRET)}, api_base_url=api),
        WebhookAccount("mango", "main", mango, api_base_url=api, route_deadline_ms=300),
        WebhookAccount("sipuni", "main", {"url_token": Secret(SIPUNI_TOKEN)}),
        WebhookAccount("twilio", "main", {"auth_token": Secret(TWILIO_TOKEN)}, public_url=TWILIO_PUBLIC,
                       options=TWILIO_OPTIONS, api_base_url=api),
    ))


class Gateway:
    """A whole gateway (tests.harness) on an event loop of its own, for a sync test
    that hands hypothesis's examples to it one at a time."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors = ErrorLog()
        self.tmp_path = tmp_path

    def __enter__(self) -> Gateway:
        logging.getLogger().addHandler(self.errors)
        self.run(self._start())
        return self

    async def _start(self) -> None:
        async def provider_api(request: web.Request) -> web.Response:
            return web.json_response({"result": 1000})  # Mango's "done"

        app = web.Application()
        app.router.add_post("/{tail:.*}", provider_api)
        self.api_runner, api_url = await serve(app)
        clock = FakeClock()
        clock.now = SAMPLE_DAY
        self.running = running(self.tmp_path, plans=PlanBook(example_plan()), clock=clock,
                               webhooks=all_providers(api_url))
        self.h = await self.running.__aenter__()
        self.http = aiohttp.ClientSession()

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
            logging.getLogger().removeHandler(self.errors)

    async def _stop(self) -> None:
        await self.http.close()
        mango = self.h.webhooks.connectors["mango"]
        assert isinstance(mango, MangoConnector)
        await mango.drain()
        await self.running.__aexit__(None, None, None)
        await self.api_runner.cleanup()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        # A bound on every step: a gateway that stops answering fails the test, not hangs it.
        return self.loop.run_until_complete(asyncio.wait_for(work, 60))

    def hit(self, hit: Hit) -> tuple[int, str]:
        """Send one request; check the answer and that nothing crashed while the
        gateway stored and processed it."""
        status, text = self.run(self._send(hit))
        errors = self.errors.take()
        assert status in ALLOWED, (status, text, hit)
        assert errors == [], hit
        self.check_calls_stored()
        return status, text

    def check_calls_stored(self) -> None:
        """Every call the core finished was stored: a save that fails on a value
        (a time out of range) loses the call with no more than a late log line."""
        finished = sum(sample.value for metric in self.h.metrics.registry.collect()
                       if metric.name == "cti_calls_finished" for sample in metric.samples
                       if sample.name == "cti_calls_finished_total")
        assert finished == len(self.h.records), "a finished call was not stored"

    def afterwards(self, provider: str, deliver: Callable[[Harness, list[str]], Coroutine[Any, Any, object]],
                   answered: list[str]) -> None:
        """Hostile requests were kept (so the parsers behind the inbox read them)
        and the gateway still turns a real answered call into its record."""
        kept = sum(self.h.metrics.registry.get_sample_value("cti_webhook_requests_total",
                                                            {"provider": provider, "result": result}) or 0
                   for result in ("accepted", "duplicate"))
        assert kept >= 20, "too few hostile requests got past the signature to test the parsers"
        count = len(self.h.records)
        self.run(deliver(self.h, answered))
        assert [r.outcome for r in self.h.records[count:]] == ["answered"]
        assert self.errors.take() == []

    async def _send(self, hit: Hit) -> tuple[int, str]:
        url = URL(f"{self.h.url}/webhooks/{hit.path}" + (f"?{hit.query}" if hit.query else ""), encoded=True)
        data: Any = hit.body

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(hit.body), 16 * 1024):
                yield hit.body[start:start + 16 * 1024]

        if hit.chunked:
            data = chunks()
        try:
            async with self.http.request(hit.method, url, data=data if hit.method == "POST" else None,
                                         headers=dict(hit.headers)) as response:
                status, text = response.status, await response.text(errors="replace")
        except aiohttp.ClientOSError:
            if len(hit.body) <= MAX_BODY:
                raise
            # The server answered 413 and closed before the whole body was sent.
            return 413, "connection closed after a refused body"
        await self.h.webhooks.idle()
        await self.h.gateway.drain()
        return status, text


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(tmp_path) as gateway:
        yield gateway


WEB = settings(max_examples=250, deadline=None, derandomize=True, print_blob=False, database=None,
               suppress_health_check=list(HealthCheck))


@st.composite
def form_body(draw: st.DrawFn, names: list[str], kinds: list[str], kind_field: str,
              call_field: str, call_ids: list[str], required: tuple[str, ...] = ()) -> dict[str, str]:
    """Fields of a provider's form: its own names with hostile values (the ones its
    checks require mostly present), its call id from a few (so hostile events
    pile up on the same calls), and strangers."""
    fields = {kind_field: draw(mostly(st.sampled_from(kinds), NASTY))}
    chosen = draw(st.lists(st.sampled_from(names), unique=True))
    if draw(mostly(True, st.just(False))):
        chosen += [name for name in required if name not in chosen]
    for name in chosen:
        fields[name] = draw(NASTY)
    if draw(mostly(True, st.just(False))):
        fields[call_field] = draw(st.sampled_from(call_ids))
    fields.update(draw(st.dictionaries(NAMES, NASTY, max_size=3)))
    return fields


@st.composite
def mangled(draw: st.DrawFn, body: bytes) -> tuple[bytes, bool]:
    """The body as signed, or broken the ways a hostile sender breaks it; chunked or not."""
    how = draw(mostly("as is", st.sampled_from(["invalid utf-8", "garbage", "huge", "huge chunked", "bad escape",
                                                "repeated field", "empty"])))
    if how == "invalid utf-8":
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.sampled_from([b"\xff", b"\xd0", b"\xe2\x82", b"\xc0\x80"])) + body[cut:]
    elif how == "garbage":
        body = draw(st.binary(max_size=300))
    elif how.startswith("huge"):
        body = body + b"&pad=" + b"x" * draw(st.integers(MAX_BODY, 3 * MAX_BODY))
    elif how == "bad escape":
        body = body + draw(st.sampled_from([b"&x=%ff%fe", b"&%d0=1", b"&x=%", b"&x=%zz", b"&&&==&"]))
    elif how == "repeated field":
        body = body + b"&" + body
    elif how == "empty":
        body = b""
    return body, how == "huge chunked"


# -- the providers' signatures, written here from their documentation


def zadarma_signature(fields: dict[str, str]) -> str:
    """base64 of the hex HMAC-SHA1 of the event's signed fields, concatenated."""
    signed = "".join(fields.get(name, "") for name in ZADARMA_SIGNED.get(fields.get("event", ""), ()))
    digest = hmac.new(ZADARMA_SECRET.encode(), signed.encode(), hashlib.sha1).hexdigest()
    return base64.b64encode(digest.encode()).decode()


def twilio_signature(url: str, fields: dict[str, str]) -> str:
    """base64 HMAC-SHA1 of the URL then every name + value, sorted by name."""
    signed = url + "".join(name + value for name, value in sorted(fields.items()))
    return base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()


INBOUND_SIGNED = ("caller_id", "called_did", "call_start")
ZADARMA_SIGNED = {
    "NOTIFY_START": INBOUND_SIGNED, "NOTIFY_INTERNAL": INBOUND_SIGNED, "NOTIFY_END": INBOUND_SIGNED,
    "NOTIFY_IVR": INBOUND_SIGNED,
    "NOTIFY_ANSWER": ("caller_id", "destination", "call_start"),
    "NOTIFY_OUT_START": ("internal", "destination", "call_start"),
    "NOTIFY_OUT_END": ("internal", "destination", "call_start"),
    "NOTIFY_RECORD": ("pbx_call_id", "call_id_with_rec"),
}
ZADARMA_FIELDS = ["caller_id", "called_did", "call_start", "internal", "destination", "disposition", "duration",
                  "status_code", "is_recorded", "call_id_with_rec", "last_internal"]


@st.composite
def zadarma_hits(draw: st.DrawFn) -> Hit:
    fields = draw(form_body(ZADARMA_FIELDS, list(ZADARMA_SIGNED) + ["NOTIFY_BOGUS"], "event", "pbx_call_id",
                            ["in-1", "in-2", "out-1", ""], tuple(ZADARMA_FIELDS[:6])))
    body, chunked = draw(mangled(urlencode(fields).encode()))
    signature = draw(mostly(zadarma_signature(fields), st.one_of(st.just(""), HEADER_VALUE)))
    headers = (("Content-Type", "application/x-www-form-urlencoded"), ("Signature", signature))
    return Hit("POST", "zadarma/main", body, headers=headers if signature else headers[:1], chunked=chunked)


@given(hit=zadarma_hits())
@WEB
def _zadarma_example(gw: Gateway, hit: Hit) -> None:
    gw.hit(hit)


def test_zadarma_survives_hostile_requests(gw: Gateway) -> None:
    _zadarma_example(gw)
    gw.afterwards("zadarma", zadarma_deliver, ZADARMA_ANSWERED)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([10**20, 10**400, -(2**63)]),
                      st.floats(), NASTY)
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
                    max_leaves=6)
MANGO_PARTY = st.one_of(JSON, st.dictionaries(
    st.sampled_from(["extension", "number", "line_number", "acd_group", "was_transfered", "hold_initiator"]),
    JSON, max_size=4))
MANGO_KEYS = ["timestamp", "seq", "call_state", "location", "disconnect_reason", "talk_time", "end_time",
              "create_time", "forward_time", "entry_result", "call_direction", "recording_id", "recording_state",
              "result", "dtmf", "completion_time", "completion_code", "locaton", "callback_initiator"]
MANGO_PATHS = ["events/call", "events/summary", "events/recording", "events/dtmf", "result/route",
               "result/callback", "", "events//call/", "events/call/extra"]
BROKEN_JSON = st.sampled_from([
    "[" * 3000, '{"a":' * 2000, "not json", '{"entry_id": "E1" "call_id": "L1" "seq": 1}', "[]", "null", "1e999999",
    '"' + "a" * 20_000, '{"entry_id": "E1", "call_id": "L1", "seq": ' + "9" * 5000 + "}", "{" + '"x" ' * 5000,
])


@st.composite
def mango_hits(draw: st.DrawFn) -> Hit:
    path = draw(mostly(st.sampled_from(MANGO_PATHS[:5]), st.one_of(st.sampled_from(MANGO_PATHS),
                                                                   st.text(alphabet="abcdefghij/._-%", max_size=20))))
    event: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(MANGO_KEYS), unique=True)):
        event[key] = draw(JSON)
    # The ids each path requires: mostly given, as text or number, so that the
    # parsers behind the check see the rest.
    for key, ids in (("entry_id", ["E1", "E2", 7]), ("call_id", ["L1", "L2", "L3"]), ("recording_id", ["R1", "R2"]),
                     ("command_id", ["C1", "gw-route-x"])):
        event[key] = draw(mostly(st.sampled_from(ids), JSON))
    if draw(st.booleans()):
        event["call_state"] = draw(st.sampled_from(["Appeared", "Connected", "OnHold", "Disconnected"]))
        event["location"] = draw(st.sampled_from(["ivr", "queue", "abonent", "group"]))
    for side in ("from", "to"):
        if draw(st.booleans()):
            event[side] = draw(MANGO_PARTY)
    text = draw(mostly(st.builds(json.dumps, st.just(event), ensure_ascii=st.booleans()), BROKEN_JSON))
    # Mango's sign: the hex SHA-256 of key + the json field + salt.
    fields = {"vpbx_api_key": MANGO_KEY, "sign": hashlib.sha256((MANGO_KEY + text + MANGO_SALT).encode()).hexdigest(),
              "json": text}
    forged = draw(mostly("", st.sampled_from(["vpbx_api_key", "sign"])))
    if forged:
        fields[forged] = draw(NASTY)
    body, chunked = draw(mangled(urlencode(fields).encode()))
    method = draw(mostly("POST", st.just("GET")))
    return Hit(method, f"mango/main/{path}", body, headers=(("Content-Type", "application/x-www-form-urlencoded"),),
               chunked=chunked)


@given(hit=mango_hits())
@WEB
def _mango_example(gw: Gateway, hit: Hit) -> None:
    gw.hit(hit)


def test_mango_survives_hostile_requests(gw: Gateway) -> None:
    _mango_example(gw)
    gw.afterwards("mango", mango_deliver, MANGO_ANSWERED)


SIPUNI_FIELDS = ["src_type", "src_num", "dst_type", "dst_num", "short_src_num", "short_dst_num", "status",
                 "call_record_link", "channel", "treeName", "treeNumber", "last_called"]


@st.composite
def sipuni_hits(draw: st.DrawFn) -> Hit:
    fields = draw(form_body(SIPUNI_FIELDS, ["1", "2", "3", "4"], "event", "call_id", ["S1", "S2", "S3"],
                            ("src_type", "src_num", "dst_type", "dst_num")))
    for name in ("timestamp", "call_start_timestamp", "call_answer_timestamp"):
        # Unix seconds (the check requires them) of any value, or else anything.
        fields[name] = draw(mostly(st.one_of(st.sampled_from(["1772435707", "1772435800", "0"]),
                                             st.integers(0, 9_999_999_999).map(str)), NASTY))
    encoded_fields, chunked = draw(mangled(urlencode(fields).encode()))
    token = draw(mostly(SIPUNI_TOKEN, st.sampled_from(["", "wrong", SIPUNI_TOKEN + "x", SIPUNI_TOKEN.upper()])))
    path = f"sipuni/main/{token}" if token else "sipuni/main"
    if draw(st.booleans()):
        query = urllib.parse.quote(encoded_fields.decode("latin-1"), safe="=&%+")
        return Hit("GET", path, query=query[:6000])
    return Hit("POST", path, encoded_fields, headers=(("Content-Type", "application/x-www-form-urlencoded"),),
               chunked=chunked)


@given(hit=sipuni_hits())
@WEB
def _sipuni_example(gw: Gateway, hit: Hit) -> None:
    gw.hit(hit)


def test_sipuni_survives_hostile_requests(gw: Gateway) -> None:
    _sipuni_example(gw)
    gw.afterwards("sipuni", sipuni_deliver, SIPUNI_ANSWERED)


TWILIO_FIELDS = ["ParentCallSid", "CallStatus", "SequenceNumber", "Timestamp", "From", "To", "Direction", "Called",
                 "Caller", "CallDuration", "Duration", "DialCallSid", "DialCallStatus", "DialCallDuration",
                 "RecordingSid", "RecordingUrl", "RecordingStatus", "RecordingDuration", "AccountSid", "CallbackSource"]
TWILIO_KINDS = ["voice", "status", "child-status", "dial-action", "recording"]


@st.composite
def twilio_hits(draw: st.DrawFn) -> Hit:
    fields = draw(form_body(TWILIO_FIELDS, ["completed", "ringing", "in-progress", "busy", "no-answer"],
                            "CallStatus", "CallSid", ["CA1", "CA2", "CA3", ""], ("RecordingSid",)))
    if draw(st.booleans()):
        fields["ParentCallSid"] = draw(st.sampled_from(["CA1", "CA2", "CA9"]))
    kind = draw(mostly(st.sampled_from(TWILIO_KINDS), st.sampled_from(["nope", "voice/", "%2e%2e"])))
    query = draw(st.sampled_from(["", "then=default", "extension=101", "leg=out", "extension=%ff", "then=%00"]))
    signed = f"{TWILIO_PUBLIC}/{kind}" + (f"?{query}" if query else "")
    signature = draw(mostly(twilio_signature(signed, fields), st.one_of(st.just(""), HEADER_VALUE)))
    body, chunked = draw(mangled(urlencode(fields).encode()))
    headers = (("Content-Type", "application/x-www-form-urlencoded"), ("X-Twilio-Signature", signature))
    return Hit("POST", f"twilio/main/{kind}", body, query=query, headers=headers if signature else headers[:1],
               chunked=chunked)


@given(hit=twilio_hits())
@WEB
def _twilio_example(gw: Gateway, hit: Hit) -> None:
    gw.hit(hit)


def test_twilio_survives_hostile_requests(gw: Gateway) -> None:
    _twilio_example(gw)
    gw.afterwards("twilio", twilio_deliver, TWILIO_ANSWERED)


# -- websocket client frames to the hub ----------------------------------------------------

Frame = tuple[str, str | bytes]  # ("text", str) | ("binary", bytes) | ("raw text", bytes: not UTF-8)
MAX_FRAME = 4096  # docs/websocket-protocol.md: a client frame of 4 KiB or more closes the socket (1009)
CLOSE_TOO_BIG, CLOSE_NOT_UTF8, CLOSE_BAD_FRAME, CLOSE_AUTH = 1009, 1007, 4400, 4401

TEXT_FRAMES = st.one_of(
    st.builds(json.dumps, st.fixed_dictionaries(
        {"type": st.sampled_from(["ping", "ack", "auth", "pop", "bogus", "", None, 1, ["ping"], {"t": 1}])},
        optional={"pop_id": JSON, "token": JSON, "x": JSON})),
    st.builds(json.dumps, JSON),  # JSON of every wrong shape
    st.text(max_size=100),  # not JSON at all
    st.sampled_from(["[" * 3000, '{"type": "ping", "x": ' + "[" * 1500 + "]" * 1500 + "}", "{" * 2000, "",
                     '{"type": "ping"} {"type": "ping"}', '{"type": "ping", "type": "bogus"}', "NaN", "\x00"]),
    st.integers(MAX_FRAME - 20, 3 * MAX_FRAME).map(lambda n: json.dumps({"type": "ping", "pad": "x" * n})),
    st.integers(1000, 3000).map(lambda n: "я" * n),  # few characters, more than 4 KiB of UTF-8
)
FRAMES: st.SearchStrategy[Frame] = st.one_of(
    TEXT_FRAMES.map(lambda text: ("text", text)),
    st.binary(max_size=200).map(lambda data: ("binary", data)),
    st.integers(MAX_FRAME + 1, 3 * MAX_FRAME).map(lambda n: ("binary", b"{" * n)),
    st.sampled_from([b"\xff", b'{"type": "ping", "x": "\xd0"}', b"\xed\xa0\x80", b"\xc0\x80"]).map(
        lambda data: ("raw text", data)),
)


def usable(text: str) -> dict[str, Any] | None:
    """The frame as the protocol reads it: a JSON object, or nothing usable."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return frame if isinstance(frame, dict) else None


def size(frame: Frame) -> int:
    kind, data = frame
    return len(data.encode()) if isinstance(data, str) else len(data)


def expected_answers(frames: list[Frame], authenticated: bool) -> tuple[list[tuple[str, str]], int | None]:
    """What docs/websocket-protocol.md says the server answers: error frames (by
    code) and pongs, in order, then the close code (None: it stays open)."""
    answers: list[tuple[str, str]] = []
    for frame in frames:
        kind, data = frame
        if size(frame) >= MAX_FRAME:  # aiohttp's max_msg_size refuses a frame of exactly 4 KiB too
            return answers, CLOSE_TOO_BIG
        if kind == "raw text":
            return answers, CLOSE_NOT_UTF8  # RFC 6455: a text frame must be UTF-8
        parsed = usable(data) if isinstance(data, str) else None
        if not authenticated:
            if parsed is None or parsed.get("type") != "auth" or not isinstance(parsed.get("token"), str):
                return [("error", "bad_frame")], CLOSE_BAD_FRAME
            return [("error", "auth_failed")], CLOSE_AUTH  # no token of ours is generated
        if kind == "binary":
            continue  # not a frame of the protocol: ignored
        if parsed is None:
            answers.append(("error", "bad_frame"))
        elif parsed.get("type") == "ping":
            answers.append(("pong", ""))
        elif parsed.get("type") != "ack":
            answers.append(("error", "unknown_type"))
    return answers, None


async def hostile_session(gw: Gateway, frames: list[Frame],
                          authenticate: bool) -> tuple[list[tuple[str, str]], int | None]:
    """One hostile client (aiohttp's: it can send a text frame that is not UTF-8):
    the frames, then a ping; what came back before that ping's pong, and the
    close code if the server closed instead."""
    answers: list[tuple[str, str]] = []
    owed = len(expected_answers(frames, True)[0])  # answers before the last pong, if all goes to plan
    async with gw.http.ws_connect(gw.h.ws_url, autoclose=False, max_msg_size=0) as ws:
        if authenticate:
            await ws.send_str(json.dumps({"type": "auth", "token": gw.h.token("anna")}))
            ready = json.loads((await ws.receive(timeout=5)).data)
            assert ready["type"] == "ready", ready
        for kind, data in frames:
            if isinstance(data, str):
                await ws.send_str(data)
            elif kind == "binary":
                await ws.send_bytes(data)
            else:
                await ws.send_frame(data, aiohttp.WSMsgType.TEXT)
        await ws.send_str('{"type": "ping"}')
        while True:
            message = await ws.receive(timeout=5)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return answers, message.data
            assert message.type is aiohttp.WSMsgType.TEXT, message
            frame = json.loads(message.data)
            if frame["type"] == "pong" and len(answers) >= owed:
                return answers, None
            answers.append((frame["type"], frame.get("code", "")))


@given(frames=st.lists(FRAMES, min_size=1, max_size=6), authenticate=mostly(True, st.just(False)))
@settings(max_examples=200, deadline=None, derandomize=True, print_blob=False, database=None,
          suppress_health_check=list(HealthCheck))
def _websocket_example(gw: Gateway, frames: list[Frame], authenticate: bool) -> None:
    answers, code = gw.run(hostile_session(gw, frames, authenticate))
    expected, expected_code = expected_answers(frames, authenticate)
    errors = gw.errors.take()
    assert (answers, code) == (expected, expected_code)
    assert errors == []


def test_hostile_websocket_frames_get_documented_answers_and_the_hub_survives(gw: Gateway) -> None:
    bystander = gw.run(open_tab(gw.h, "boris"))
    try:
        _websocket_example(gw)
        assert gw.h.hub.online() == {"boris": 1}  # every hostile connection was detached
        gw.run(gw.h.ami.send_raw(capture_stream(CAPTURES / "k_agi_fallback.ami")))  # rings 101 and 102
        pop = gw.run(bystander.until(lambda f: f["type"] == "pop"))
        assert pop["pop_id"].endswith("/102")
    finally:
        gw.run(bystander.ws.close())
    assert gw.errors.take() == []


async def open_tab(h: Harness, login: str) -> Tab:
    ws = await open_ws(h)
    ready = await auth(ws, h.token(login))
    assert ready["type"] == "ready", ready
    return Tab(ws, ready)


# -- well-framed AMI events with hostile values, through the live gateway -----------------

AMI_IDS = st.sampled_from(["1.1", "1.2", "2.1", "2.2", ""])
AMI_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Channel": st.sampled_from(["PJSIP/101-00000001", "PJSIP/102-00000002", "PJSIP/trunk-00000003",
                                "Local/101@from-internal-00000004;1", "PJSIP/", "/", "Local/;2"]),
    "Uniqueid": AMI_IDS, "Linkedid": AMI_IDS, "DestUniqueid": AMI_IDS, "DestLinkedid": AMI_IDS,
    "TransfererLinkedid": AMI_IDS, "TransfereeLinkedid": AMI_IDS, "OrigTransfererLinkedid": AMI_IDS,
    "DestChannel": st.sampled_from(["PJSIP/101-00000005", "PJSIP/102-00000006", ""]),
    "TransferTargetChannel": st.sampled_from(["PJSIP/103-00000007", ""]),
    "ChannelStateDesc": st.sampled_from(["Ring", "Ringing", "Up", "Down", "Busy"]),
    "DialStatus": st.sampled_from(["ANSWER", "BUSY", "NOANSWER", "CANCEL", "CHANUNAVAIL", "CONGESTION"]),
    "Timestamp": st.sampled_from(["1795736000.5", "nan", "inf", "-inf", "1e308", "-1e308", "0", "-1", "1e400"]),
    "Uptime": st.sampled_from(["0", "5", "-5", "99999999999999999999", "nan"]),
    "Cause": st.sampled_from(["16", "17", "19", "0", "-1", "999999999999999999999", "nan"]),
    "Duration": st.sampled_from(["00:00:10", "99:99:99", "1:2", "-00:00:01", "10", "99999999999:00:00"]),
    "ChanVariable": st.sampled_from(["DID=+74950000001", "RECFILE=/var/spool/asterisk/monitor/../../etc/passwd",
                                     "DID=", "=", "RECFILE="]),
}
AMI_EVENT_NAMES = sorted(AmiNormaliser.HANDLED_EVENTS)
AMI_HEADER_NAMES = sorted(AMI_VALUES) + ["CallerIDNum", "CallerIDName", "Exten", "DestExten", "Extension",
                                         "Queue", "BridgeUniqueid", "BridgeType", "DialString", "ActionID",
                                         "Cause-txt", "Context", "ChannelState"]
AMI_SAFE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)


@st.composite
def ami_events(draw: st.DrawFn) -> bytes:
    lines = [f"Event: {draw(st.sampled_from(AMI_EVENT_NAMES))}"]
    for name in draw(st.lists(st.sampled_from(AMI_HEADER_NAMES), max_size=14)):
        value = draw(mostly(AMI_VALUES.get(name, AMI_SAFE), st.one_of(AMI_SAFE, NASTY.filter(
            lambda text: "\r" not in text and "\n" not in text))))
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@given(events=st.lists(ami_events(), min_size=1, max_size=8))
@settings(max_examples=120, deadline=None, derandomize=True, print_blob=False, database=None,
          suppress_health_check=list(HealthCheck))
def _ami_example(gw: Gateway, events: list[bytes]) -> None:
    gw.run(gw.h.ami.send_raw(b"".join(events)))
    gw.run(consumed(gw.h))
    consumer = gw.h._consumer
    assert consumer is not None
    assert not consumer.done(), consumer.exception()
    assert gw.errors.take() == []
    gw.check_calls_stored()


async def consumed(h: Harness) -> None:
    """Wait until the gateway has taken every event sent so far: the answer to an
    action comes after them on the same stream, then the link's queue empties."""
    await h.link.action("Ping", timeout=5)
    consumer = h._consumer
    assert consumer is not None
    while not h.link.events.empty() and not consumer.done():  # a dead consumer leaves them queued
        await asyncio.sleep(0.001)
    await h.gateway.drain()


def test_hostile_ami_events_never_stop_the_gateway(gw: Gateway) -> None:
    connections = gw.h.ami.connections
    _ami_example(gw)
    assert gw.h.ami.connections == connections  # the link never had to reconnect
    count = len(gw.h.records)
    gw.run(gw.h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami")))
    gw.run(gw.h.wait_records(count + 1))
    assert [r.outcome for r in gw.h.records[count:]] == ["answered"]
    assert gw.errors.take() == []


# -- hand-picked regressions ---------------------------------------------------------------


async def raw_post(h: Harness, path: str, headers: bytes, body: bytes) -> int:
    """A request written byte by byte, for header bytes no HTTP client sends (not UTF-8)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        writer.write(b"POST /webhooks/" + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n" + headers
                     + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("signature", [b"\xc3\xa9", b"\xff\xfe", "Ωmega".encode(), b"\x80" * 40])
def test_a_signature_header_that_is_not_ascii_is_refused_not_a_500(gw: Gateway, signature: bytes) -> None:
    """Found by hypothesis: hmac.compare_digest raises TypeError for a str with
    non-ASCII characters, so Zadarma's check answered 500."""
    zadarma = urlencode({"event": "NOTIFY_START", "caller_id": "+79161110001", "called_did": "+74950000001",
                         "call_start": "2026-03-02 10:15:00", "pbx_call_id": "in-9"}).encode()
    twilio = urlencode({"CallSid": "CA9", "CallStatus": "ringing"}).encode()
    assert gw.run(raw_post(gw.h, "zadarma/main", b"Signature: " + signature + b"\r\n", zadarma)) == 401
    assert gw.run(raw_post(gw.h, "twilio/main/status", b"X-Twilio-Signature: " + signature + b"\r\n", twilio)) == 401
    assert gw.errors.take() == []


@pytest.mark.parametrize("token", ["%ff%fe", "%ed%a0%80", "%00", "%C3%A9" * 10, "..%2F..%2Fetc"])
def test_a_sipuni_url_token_that_is_not_utf8_is_refused(gw: Gateway, token: str) -> None:
    status, _ = gw.hit(Hit("GET", f"sipuni/main/{token}", query="event=1&call_id=S9&timestamp=1772435707"))
    assert status in (401, 404)


@pytest.mark.parametrize("authenticate", [False, True])
@pytest.mark.parametrize("frame", [("text", "[" * 3000), ("text", "x" * 5000), ("raw text", b"\xff")])
def test_frames_that_broke_the_websocket_handler(gw: Gateway, frame: Frame, authenticate: bool) -> None:
    """Found by hypothesis: JSON nested deeper than the parser's recursion limit
    raised RecursionError out of the handler (the socket dropped without a close
    code); before auth, a frame aiohttp had already refused (too big, not UTF-8)
    made the handler write to a closing socket and log an error."""
    answers, code = gw.run(hostile_session(gw, [frame], authenticate))
    assert (answers, code) == expected_answers([frame], authenticate)
    assert gw.errors.take() == []


def test_a_client_that_leaves_before_its_auth_frame_is_no_error(gw: Gateway) -> None:
    async def leave() -> None:
        async with gw.http.ws_connect(gw.h.ws_url) as ws:
            await ws.close()
        runner = gw.h._runner
        assert runner is not None and runner.server is not None
        async with asyncio.timeout(5):
            while runner.server.connections:  # until the server's handler has finished
                await asyncio.sleep(0.01)

    gw.run(leave())
    assert gw.errors.take() == []


@pytest.mark.parametrize("stamp", ["1e308", "inf", "nan", "-1", "99999999999999"])
def test_a_call_with_absurd_ami_timestamps_is_stored_with_the_time_it_arrived(gw: Gateway, stamp: str) -> None:
    """Found by hypothesis: an AMI Timestamp beyond what datetime can hold made
    the call's save fail in the background (OverflowError): the call was lost."""
    data = re.sub(rb"Timestamp: [0-9.]+", b"Timestamp: " + stamp.encode(), jsonl_stream("a_answered"))
    gw.run(gw.h.ami.send_raw(data))
    [record] = gw.run(gw.h.wait_records(1))
    assert record.outcome == "answered" and 0 < record.started_at <= time.time()
    gw.check_calls_stored()
    assert gw.errors.take() == []
