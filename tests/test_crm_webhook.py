"""The generic signed webhook through the whole gateway (tests/harness.py):
real captures over AMI and signed Zadarma samples over HTTP go in; a local
aiohttp server standing in for the customer's system receives the events.

Every body received is checked against the published schema
(docs/crm-events.schema.json), every signature with a verifier written here
from the Standard Webhooks specification (not with the gateway's ``sign``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from connectors.ami.scenarios import CallFactory
from crm_bridge.bridge_config import CrmConfig, SinkEntry
from crm_bridge.outbox import EVENTS
from crm_bridge.sinks.webhook import WebhookSinkConfig, sign
from gateway.numberplan import PlanBook
from gateway.record import from_iso, iso
from tests.harness import Harness
from tests.test_callbacks_live import B_MISSED_DUE, MISSED_CALLER, MSK, SHOP_A, capture, play
from tests.test_hub import running
from tests.test_numberplan import example_plan
from tests.test_recordings import SECONDS, answered_call
from tests.test_zadarma import ANSWERED, MISSED, ZADARMA, deliver, sample_clock

DOCS = Path(__file__).resolve().parents[1] / "docs"
SCHEMA = json.loads((DOCS / "crm-events.schema.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA)
PLAIN_SECRET = "plain-secret-of-the-erp-0123"
WHSEC_SECRET = "whsec_" + base64.b64encode(bytes(range(7, 31))).decode()


# -- the other side -----------------------------------------------------------------


def verify(secret: str, headers: Mapping[str, str], body: bytes) -> bool:
    """The Standard Webhooks check: HMAC-SHA256 over "id.timestamp.body" with the
    secret (whsec_: base64 after the prefix), compared with each "v1,<base64>"
    of the space-separated signature header."""
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    return any(version == "v1" and hmac.compare_digest(value.encode(), expected)
               for version, _, value in (s.partition(",") for s in headers["webhook-signature"].split(" ")))


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered

    @property
    def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.body)
        return event

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Receiver:
    """The customer's system: keeps every request it answers, answering what
    ``answer`` says (204 by default); while ``hanging`` it answers nobody."""

    port: int = 0
    answer: Callable[[Received], int] = lambda received: 204
    retry_after: str | None = None
    hanging: bool = False
    requests: list[Received] = field(default_factory=list)
    arrived: int = 0  # requests that came in, answered or not
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def come_back(self) -> None:
        self.hanging = False
        self._release.set()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        if self.hanging:
            await self._release.wait()
            return web.Response(status=503)  # to a client that gave up long ago
        received = Received(request.path.lstrip("/"), {k.lower(): v for k, v in request.headers.items()},
                            await request.read(), 0)
        received.status = self.answer(received)
        self.requests.append(received)
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        return web.Response(status=received.status, headers=headers)

    def delivered(self, path: str | None = None) -> list[Received]:
        """The requests answered 2xx (to ``path``), in arrival order."""
        return [r for r in self.requests if 200 <= r.status < 300 and path in (None, r.path)]


@asynccontextmanager
async def receiving(port: int = 0) -> AsyncIterator[Receiver]:
    receiver = await Receiver(port).start()
    try:
        yield receiver
    finally:
        await receiver.close()


def sink(name: str, url: str, secret: str = PLAIN_SECRET, events: Iterable[str] = EVENTS) -> SinkEntry:
    return SinkEntry("webhook", name, WebhookSinkConfig(name, url, secret, frozenset(events)))


async def settled(h: Harness, timeout: float = 10.0) -> None:
    """Wait until what the calls stored is delivered (no entry pending)."""
    await h.gateway.drain()
    await h.bridge.drain()
    for _ in range(int(timeout / 0.02)):
        if (await h.store.read("SELECT count(*) FROM outbox WHERE state = 'pending'"))[0][0] == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(await h.store.read("SELECT sink, event, attempts, last_error FROM outbox "
                                            "WHERE state = 'pending'"))


def check(received: Iterable[Received]) -> list[dict[str, Any]]:
    """Every body valid by the schema; the events."""
    events = []
    for r in received:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(r.event)]
        assert not errors, (r.event, errors)
        events.append(r.event)
    return events


def story(events: Iterable[dict[str, Any]], call_id: str) -> list[tuple[str, str]]:
    """The call's own events in order: (type, extension), the finished one with its outcome."""
    return [(e["type"], e["data"].get("extension") or e["data"]["outcome"]) for e in events
            if e["type"].startswith("call.") and e["data"]["call_id"] == call_id]


# -- the schema itself --------------------------------------------------------------

RINGING = {"type": "call.ringing", "timestamp": "2026-11-26T23:39:08.740+00:00", "data": {
    "call_id": "1795736348.0", "direction": "inbound", "customer": "+79161110001", "caller": "+79161110001",
    "caller_name": "Ivan Petrov", "dialled": "+74950000001", "extension": "101", "agent": "anna", "shop": "A",
    "channel": "direct", "started_at": "2026-11-26T23:39:08.724+00:00", "at": "2026-11-26T23:39:08.733+00:00"}}


def test_the_schema_is_valid_and_holds_each_event_to_its_shape() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert VALIDATOR.is_valid(RINGING)
    assert set(SCHEMA["properties"]["type"]["enum"]) == set(EVENTS)

    def changed(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(RINGING))
        change(body)
        return body

    broken = [
        changed(lambda b: b["data"].update(extra=1)),  # a property the shape does not have
        changed(lambda b: b["data"].pop("agent")),  # a property left out (null is written, never omitted)
        changed(lambda b: b["data"].update(direction="sideways")),
        changed(lambda b: b["data"].update(customer="89161110001")),  # not E.164
        changed(lambda b: b["data"].update(at="2026-11-26 23:39:08")),  # not the ISO form
        changed(lambda b: b.update(type="call.finished")),  # a ringing's data is not a record
        changed(lambda b: b.update(type="call.started")),
        changed(lambda b: b.update(extra=True)),
    ]
    for body in broken:
        assert not VALIDATOR.is_valid(body), body


def test_the_verifier_and_sign_agree_with_the_specification_s_example() -> None:
    # The example of the Standard Webhooks specification's reference libraries.
    secret, message_id, timestamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body, expected = b'{"test": 2432232314}', "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": expected}
    assert verify(secret, headers, body)
    assert verify(secret, {**headers, "webhook-signature": "v1,bm90IGl0 " + expected}, body)  # rotated secrets
    assert not verify(secret, {**headers, "webhook-signature": "v2," + expected[3:]}, body)
    assert not verify(secret, headers, body.replace(b"2", b"3", 1))
    assert sign(secret, message_id, timestamp, body) == expected


def blocks(language: str) -> list[str]:
    """The fenced blocks of docs/crm-events.md in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```$", (DOCS / "crm-events.md").read_text(), re.M | re.S)


def test_the_documented_examples_follow_the_schema() -> None:
    examples = [json.loads(block) for block in blocks("json")]
    assert sorted(e["type"] for e in examples) == sorted(EVENTS)
    check_all = [list(VALIDATOR.iter_errors(e)) for e in examples]
    assert check_all == [[]] * len(examples)


# -- the captures -------------------------------------------------------------------

CAPTURES = {
    "a_answered": [("call.ringing", "101"), ("call.answered", "101"), ("call.finished", "answered")],
    "b_missed": [("call.ringing", "101"), ("call.ring_stopped", "101"), ("call.finished", "missed")],
    "c_abandoned_ringing": [("call.ringing", "101"), ("call.ring_stopped", "101"), ("call.finished", "abandoned")],
    "e_queue_answered": [("call.ringing", "101"), ("call.ring_stopped", "101"), ("call.ringing", "102"),
                         ("call.answered", "102"), ("call.finished", "answered")],
    "f_queue_abandoned": [("call.ringing", "101"), ("call.ring_stopped", "101"), ("call.ringing", "102"),
                          ("call.ring_stopped", "102"), ("call.finished", "abandoned")],
    "g_click_to_call": [("call.finished", "answered")],  # the agent's own phone is the caller: no pop
    "h1_blind_transfer": [("call.ringing", "101"), ("call.answered", "101"), ("call.ringing", "102"),
                          ("call.answered", "102"), ("call.finished", "answered")],
    "i_busy": [("call.finished", "missed")],
    "k_agi_fallback": [("call.ringing", "101"), ("call.ringing", "102"), ("call.answered", "101"),
                       ("call.ring_stopped", "102"), ("call.finished", "answered")],
}
LOGINS = {"101": "anna", "102": "boris", "103": "vera"}


@pytest.mark.parametrize("name", sorted(CAPTURES))
async def test_each_capture_s_events_are_valid_signed_and_in_order(tmp_path: Path, name: str) -> None:
    async with receiving() as receiver, running(
            tmp_path, plans=PlanBook(example_plan()), crm=CrmConfig(sinks=(sink("erp", receiver.url()),))) as h:
        started = int(time.time())
        await capture(h, name)
        await settled(h)
        ended = time.time()
    (record,) = h.records
    events = check(receiver.requests)
    assert story(events, record.call_id) == CAPTURES[name]
    assert all(r.status == 204 for r in receiver.requests)  # each event once: no retry was needed
    ids = [r.webhook_id for r in receiver.requests]
    assert len(set(ids)) == len(ids)
    for r in receiver.requests:
        assert verify(PLAIN_SECRET, r.headers, r.body), r.headers
        assert started <= int(r.headers["webhook-timestamp"]) <= ended  # the time of the attempt
        assert r.headers["content-type"] == "application/json"
    finished = next(e["data"] for e in events if e["type"] == "call.finished")
    assert (finished["outcome"], finished["customer"], finished["shop"]) == (
        record.outcome, record.customer, record.shop)
    placed_by = (record.caller,) if record.direction != "inbound" else ()  # the agent placing an outbound call
    assert finished["agents"] == {ext: LOGINS[ext] for ext in (*placed_by, *record.rang, *record.talked)}
    assert finished["answered_by_agent"] == (LOGINS[record.answered_by] if record.answered_by else None)
    owner = record.talked[-1] if record.talked else record.answered_by
    assert finished["owner_agent"] == (LOGINS[owner] if owner else None)
    assert finished["recording_expected"] is (record.recording_path is not None)
    for ringing in (e["data"] for e in events if e["type"] == "call.ringing"):
        assert (ringing["agent"], ringing["customer"]) == (LOGINS[ringing["extension"]], record.customer)
    opened = [e["data"] for e in events if e["type"] == "task.opened"]
    if record.outcome in ("missed", "abandoned"):
        (task,) = opened
        assert (task["call_id"], task["phone"], task["owner"]) == (record.call_id, record.customer, "anna")
    else:
        assert opened == []


async def test_each_sink_signs_with_its_own_secret_and_takes_only_its_events(tmp_path: Path) -> None:
    async with receiving() as receiver:
        crm = CrmConfig(sinks=(sink("plain", receiver.url("plain")),
                               sink("std", receiver.url("std"), WHSEC_SECRET),
                               sink("records", receiver.url("records"), events=("call.finished", "task.opened"))))
        async with running(tmp_path, plans=PlanBook(example_plan()), crm=crm) as h:
            await capture(h, "b_missed")
            await settled(h)
    plain, std, records = (receiver.delivered(path) for path in ("plain", "std", "records"))
    check(receiver.requests)
    assert sorted(r.event["type"] for r in plain) == sorted(r.event["type"] for r in std) == [
        "call.finished", "call.ring_stopped", "call.ringing", "task.opened"]
    assert sorted(r.event["type"] for r in records) == ["call.finished", "task.opened"]
    assert {r.webhook_id for r in plain} == {r.webhook_id for r in std}  # the event's key, whoever receives it
    documented: dict[str, Any] = {}
    exec(blocks("python")[0], documented)  # the docs' verifier works on what the gateway sends
    for secret, got, other in ((PLAIN_SECRET, plain, WHSEC_SECRET), (WHSEC_SECRET, std, PLAIN_SECRET)):
        for r in got:
            assert verify(secret, r.headers, r.body) and not verify(other, r.headers, r.body)
            assert documented["verify_webhook"](secret, r.headers, r.body)
            assert not documented["verify_webhook"](other, r.headers, r.body)
            flipped = bytearray(r.body)
            flipped[len(flipped) // 2] ^= 0x01
            assert not verify(secret, r.headers, bytes(flipped))
            assert not verify(secret, {**r.headers, "webhook-id": r.webhook_id + "x"}, r.body)
            stamp = int(r.headers["webhook-timestamp"])
            assert not verify(secret, {**r.headers, "webhook-timestamp": str(stamp + 1)}, r.body)


# -- tasks and recordings -----------------------------------------------------------


async def test_a_missed_call_called_back_opens_then_closes_its_task(tmp_path: Path) -> None:
    async with receiving() as receiver, running(
            tmp_path, plans=PlanBook(example_plan()), crm=CrmConfig(sinks=(sink("erp", receiver.url()),))) as h:
        await capture(h, "b_missed")
        # Boris (102) calls the customer back at 09:10 Moscow time; he answers.
        back_at = datetime(2026, 11, 27, 9, 10, tzinfo=MSK).timestamp()
        await play(h, CallFactory().click_to_call("102", MISSED_CALLER, SHOP_A, channel_id="c2c-back", answered=True),
                   back_at)
        await settled(h)
    missed, back = h.records
    events = check(receiver.requests)
    tasks = [e for e in events if e["type"].startswith("task.")]
    assert [e["type"] for e in tasks] == ["task.opened", "task.closed"]  # one stream: in order
    opened, closed = (e["data"] for e in tasks)
    assert missed.ended_at is not None and back.answered_at is not None
    assert opened == {"task_id": opened["task_id"], "phone": MISSED_CALLER, "shop": "A", "channel": "direct",
                      "owner": "anna", "call_id": missed.call_id, "opened_at": opened["opened_at"],
                      "due_at": iso(B_MISSED_DUE)}
    assert from_iso(opened["opened_at"]) == pytest.approx(missed.ended_at, abs=0.002)
    assert {k: closed[k] for k in ("task_id", "phone", "shop", "owner", "status", "attempts", "closed_by", "reason",
                                   "call_id", "within_sla", "due_at", "opened_at")} == {
        "task_id": opened["task_id"], "phone": MISSED_CALLER, "shop": "A", "owner": "anna", "status": "reached",
        "attempts": 1, "closed_by": "boris", "reason": "called_back", "call_id": back.call_id, "within_sla": True,
        "due_at": opened["due_at"], "opened_at": opened["opened_at"]}
    assert from_iso(closed["closed_at"]) == pytest.approx(back.answered_at, abs=0.002)
    assert closed["callback_seconds"] == pytest.approx(back.answered_at - missed.ended_at, abs=0.002)
    # A click-to-call pops nobody (the agent's own phone places it): its record is its one event.
    assert story(events, back.call_id) == [("call.finished", "answered")]
    record = next(e["data"] for e in events if e["type"] == "call.finished" and e["data"]["call_id"] == back.call_id)
    assert (record["direction"], record["customer"]) == ("outbound", MISSED_CALLER)


async def test_recording_ready_follows_the_call_once_the_collector_kept_the_file(tmp_path: Path) -> None:
    async with receiving() as receiver, running(
            tmp_path, plans=PlanBook(example_plan()), crm=CrmConfig(sinks=(sink("erp", receiver.url()),))) as h:
        call_id = await answered_call(h)
        await settled(h)
        assert [r.event["type"] for r in receiver.requests][-1] == "call.finished"
        assert await h.collector.collect_due() == 1
        h.bridge.poke()  # the trigger's row would otherwise wait for the loop's next look (POLL_SECONDS)
        await settled(h)
        kept = await h.recordings.get(call_id)
    events = check(receiver.requests)
    assert [e["type"] for e in events] == ["call.ringing", "call.answered", "call.finished", "recording.ready"]
    assert events[2]["data"]["recording_expected"] is True
    assert kept is not None and kept.size is not None
    ready = events[3]["data"]
    assert (ready["call_id"], ready["content_type"], ready["size"]) == (call_id, "audio/ogg", kept.size)
    assert ready["duration"] == pytest.approx(SECONDS, abs=0.1)
    assert receiver.requests[3].webhook_id == f"{call_id}:recording"


# -- a cloud PBX ---------------------------------------------------------------------


async def test_a_zadarma_call_s_events_follow_its_webhooks(tmp_path: Path) -> None:
    async with receiving() as receiver, running(
            tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA,
            crm=CrmConfig(sinks=(sink("erp", receiver.url()),))) as h:
        await deliver(h, MISSED + ANSWERED)
        await settled(h)
    missed, answered = h.records
    events = check(receiver.requests)
    assert sorted(story(events, missed.call_id)[:2]) == [("call.ringing", "101"), ("call.ringing", "102")]
    assert missed.outcome in ("missed", "abandoned")
    assert sorted(story(events, missed.call_id)[2:]) == [
        ("call.finished", missed.outcome), ("call.ring_stopped", "101"), ("call.ring_stopped", "102")]
    assert story(events, missed.call_id)[-1] == ("call.finished", missed.outcome)
    assert story(events, answered.call_id)[0][0] == "call.ringing"
    assert story(events, answered.call_id)[-1] == ("call.finished", "answered")
    assert [e["data"]["call_id"] for e in events if e["type"] == "task.opened"] == [missed.call_id]
    for r in receiver.requests:
        assert verify(PLAIN_SECRET, r.headers, r.body)
