"""Mango Office through the whole gateway: the real aiohttp app, the signed
sample bodies (tests/webhook_samples, from shared/webhooks), the inbox on
SQLite, the core, pops on the websocket, leads and missed-call tasks, and
``commands/route`` received by a stand-in for Mango's API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web

from connectors.mango import MangoConnector
from connectors.webhook import Account, Request
from crm_bridge.store import Store
from gateway.config import Secret, WebhookAccount, WebhooksConfig
from gateway.events import LegCreated, LegHungUp, RecordingStarted
from gateway.numberplan import PlanBook
from gateway.record import CallRecord
from tests.harness import Harness
from tests.test_hub import FakeClock, tab
from tests.test_numberplan import example_plan

SAMPLES = Path(__file__).parent / "webhook_samples"
README = (SAMPLES / "README.md").read_text()
MSK = ZoneInfo("Europe/Moscow")
# The samples' calls happen on Monday 2026-03-02 from 10:15 Moscow time (shop
# A is open 09:00-21:00); the gateway's clock is set just after the first one.
SAMPLE_DAY = datetime(2026, 3, 2, 10, 17, tzinfo=MSK).timestamp()


def readme_secret(what: str) -> str:
    match = re.search(rf"^\| Mango Office \| {what} \| `([^`]+)` \|$", README, re.M)
    assert match is not None, what
    return match[1]


KEY, SALT = readme_secret("vpbx_api_key"), readme_secret("vpbx_api_salt")
# File -> sign, from the samples' README (computed by the spec's own tool, not by us).
SIGNATURES = {m[1].removesuffix(".txt"): m[2]
              for m in re.finditer(r"^\| `(mango_[^`]+\.txt)` \| mango \|.*\| `([^`]+)` \|$", README, re.M)}
COMMAND_SAMPLE = "mango_commands_route__request_route_to_ext101"  # what *we* send
INCOMING = sorted(name for name in SIGNATURES if name != COMMAND_SAMPLE)

ANSWERED = ["mango_events_call__inbound_answered_1_ivr_appeared", "mango_events_call__inbound_answered_2_ivr_disconnected",
            "mango_events_call__inbound_answered_3_abonent_appeared",
            "mango_events_call__inbound_answered_4_abonent_connected",
            "mango_events_recording__inbound_answered_started",
            "mango_events_call__inbound_answered_5_abonent_disconnected",
            "mango_events_recording__inbound_answered_completed", "mango_events_dtmf__ivr",
            "mango_events_summary__inbound_answered"]
MISSED = ["mango_events_call__inbound_missed_1_ivr_appeared", "mango_events_call__inbound_missed_2_ivr_disconnected",
          "mango_events_call__inbound_missed_3_abonent_appeared",
          "mango_events_call__inbound_missed_4_abonent_disconnected", "mango_events_summary__inbound_missed"]
OUTBOUND = ["mango_events_call__outbound_1_appeared", "mango_events_call__outbound_2_connected",
            "mango_events_call__outbound_3_disconnected", "mango_events_summary__outbound"]
ANSWERED_ENTRY = "MToxMDA0NTYwOjEwMDE6NDI0MjQyNDI="
IVR_LEG = "MToxMDA0NTYwOjEwMDE6OTAwMDAwMDAx"


def at(hour: int, minute: int, second: int) -> float:
    return datetime(2026, 3, 2, hour, minute, second, tzinfo=MSK).timestamp()


def sample_clock() -> FakeClock:
    clock = FakeClock()
    clock.now = SAMPLE_DAY
    return clock


def body(name: str) -> bytes:
    return (SAMPLES / f"{name}.txt").read_bytes().rstrip(b"\n")


def path_of(name: str) -> str:
    """mango_events_call__... -> events/call (the README: derive from the file name)."""
    return name.removeprefix("mango_").split("__")[0].replace("_", "/")


def fields_of(raw: bytes) -> dict[str, str]:
    return dict(parse_qsl(raw.decode()))


def mango_sign(text: str, key: str = KEY) -> str:
    """The test's own sha256(key + json + salt), checked against the README below."""
    return hashlib.sha256((key + text + SALT).encode()).hexdigest()


def signed(event: dict[str, Any] | str, *, key: str = KEY) -> bytes:
    """A form as Mango sends it, for an event the test makes up."""
    text = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return urlencode({"vpbx_api_key": key, "sign": mango_sign(text, key), "json": text}).encode()


# -- a stand-in for Mango's API --------------------------------------------------------


class MangoApi:
    """Mango's ``/vpbx/commands/...`` on 127.0.0.1: keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str, bytes]] = []  # (path, content type, body)
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.path, request.content_type, await request.read()))
        if self.status != 200:
            return web.json_response({"code": 3102}, status=self.status)
        return web.json_response({"result": 1000})

    async def __aenter__(self) -> MangoApi:
        app = web.Application()
        app.router.add_post("/vpbx/commands/{command:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/vpbx"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def mango_config(api_url: str | None = None, options: dict[str, str] | None = None) -> WebhooksConfig:
    secrets = {"key": Secret(KEY), "salt": Secret(SALT)}
    return WebhooksConfig(accounts=(
        WebhookAccount("mango", "main", secrets, api_base_url=api_url, route_deadline_ms=300, options=options or {}),
        WebhookAccount("mango", "locked", secrets, allowed_ips=("10.0.0.0/8",)),
    ))


def harness(where: Path, api_url: str | None = None, options: dict[str, str] | None = None,
            **kwargs: Any) -> Harness:
    return Harness(where, plans=PlanBook(example_plan()), clock=sample_clock(),
                   webhooks=mango_config(api_url, options), **kwargs)


@pytest.fixture
async def api() -> AsyncIterator[MangoApi]:
    async with MangoApi() as mango:
        yield mango


@pytest.fixture
async def h(tmp_path: Path, api: MangoApi) -> AsyncIterator[Harness]:
    async with harness(tmp_path, api.url) as started:
        yield started


def connector(h: Harness) -> MangoConnector:
    return cast(MangoConnector, h.webhooks.connectors["mango"])


Item = tuple[str, str, bytes]  # (what it is, path below the account's prefix, body)


def items(names: list[str]) -> list[Item]:
    return [(name, path_of(name), body(name)) for name in names]


async def post(http: aiohttp.ClientSession, h: Harness, name: str, *, data: bytes | None = None,
               path: str | None = None, account: str = "main") -> tuple[int, str]:
    url = f"{h.url}/webhooks/mango/{account}/{path if path is not None else path_of(name)}"
    async with http.post(url, data=data if data is not None else body(name),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
        return response.status, await response.text()


async def deliver(h: Harness, flow: list[str] | list[Item]) -> None:
    async with aiohttp.ClientSession() as http:
        for item in flow:
            label, path, data = (item, path_of(item), body(item)) if isinstance(item, str) else item
            assert await post(http, h, label, path=path, data=data) == (200, ""), label
    await h.webhooks.idle()
    await h.gateway.drain()


# A consultative transfer (SPEC 2.6; no sample has one, so the test writes it):
# 101 answers, puts the caller on hold, calls 102 on a new leg, hangs up; the
# new leg then connects 102 with the caller.
TRANSFER_ENTRY = "MToxMDA0NTYwOjEwMDE6NDI0MjQyODg="
T0 = at(10, 20, 0)
CLIENT = {"number": "79990007788"}
LINE = "74950000003"  # shop A's yandex number in the example plan


def leg_event(leg: str, seq: int, after: int, state: str, location: str, source: dict[str, str],
              target: dict[str, str], reason: int | None = None) -> Item:
    event: dict[str, Any] = {"entry_id": TRANSFER_ENTRY, "call_id": leg, "timestamp": int(T0) + after, "seq": seq,
                             "call_state": state, "location": location, "from": source,
                             "to": {**target, "line_number": LINE}}
    if reason is not None:
        event["disconnect_reason"] = reason
    return f"{leg}#{seq}", "events/call", signed(event)


_IVR, _A, _B = "MToxMDA0NTYwOjEwMDE6OTAwMDAwMDgx", "MToxMDA0NTYwOjEwMDE6OTAwMDAwMDgy", "MToxMDA0NTYwOjEwMDE6OTAwMDAwMDgz"
_TO_101 = {"extension": "101", "number": "sip:ivanov@vpbx400000001.mangosip.ru"}
_TO_102 = {"extension": "102", "number": "sip:petrov@vpbx400000001.mangosip.ru"}
TRANSFER: list[Item] = [
    leg_event(_IVR, 1, 0, "Appeared", "ivr", CLIENT, {"number": LINE}),
    leg_event(_IVR, 2, 6, "Disconnected", "ivr", CLIENT, {"number": LINE}, 1100),
    leg_event(_A, 1, 6, "Appeared", "abonent", {**CLIENT, "taken_from_call_id": _IVR}, _TO_101),
    leg_event(_A, 2, 14, "Connected", "abonent", {**CLIENT, "taken_from_call_id": _IVR}, _TO_101),
    leg_event(_A, 3, 50, "OnHold", "abonent", {**CLIENT, "taken_from_call_id": _IVR}, _TO_101),
    leg_event(_B, 1, 52, "Appeared", "abonent", {**_TO_101, "taken_from_call_id": _A}, _TO_102),
    leg_event(_B, 2, 58, "Connected", "abonent", {**_TO_101, "taken_from_call_id": _A}, _TO_102),
    leg_event(_A, 4, 80, "Disconnected", "abonent", {**CLIENT, "taken_from_call_id": _IVR}, _TO_101, 1100),
    leg_event(_B, 3, 80, "Connected", "abonent", CLIENT, _TO_102),
    leg_event(_B, 4, 200, "Disconnected", "abonent", CLIENT, _TO_102, 1110),
    ("summary", "events/summary", signed({
        "entry_id": TRANSFER_ENTRY, "call_direction": 1, "from": CLIENT, "to": _TO_102, "line_number": LINE,
        "create_time": int(T0), "forward_time": int(T0) + 6, "talk_time": int(T0) + 14, "end_time": int(T0) + 200,
        "entry_result": 1, "disconnect_reason": 1110})),
]


async def inbox_count(h: Harness) -> int:
    return int((await h.store.read("SELECT count(*) FROM webhook_inbox"))[0][0])


# -- signatures --------------------------------------------------------------------------


def test_the_readme_signs_every_sample_as_the_body_says() -> None:
    assert len(SIGNATURES) == 20 and set(ANSWERED + MISSED + OUTBOUND) <= set(INCOMING)
    assert {path_of(name) for name in INCOMING} == {"events/call", "events/summary", "events/recording",
                                                     "events/dtmf", "result/route"}
    for name, expected in SIGNATURES.items():
        fields = fields_of(body(name))
        assert (fields["vpbx_api_key"], fields["sign"]) == (KEY, expected), name
        assert mango_sign(fields["json"]) == expected, name  # the test's own signer agrees with the README


async def test_each_sample_is_accepted_and_refused_with_one_byte_changed(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        for name in INCOMING:
            good = body(name)
            start = good.index(b"&json=") + 6
            flip = start + (len(good) - start) // 2  # inside the json field
            bad = good[:flip] + bytes([good[flip] ^ 0x01]) + good[flip + 1:]
            status, text = await post(http, h, name, data=bad)
            assert (status, '"bad_signature"' in text) == (401, True), (name, text)
            sig = SIGNATURES[name]
            other_sign = sig[:-1] + ("0" if sig[-1] != "0" else "1")
            status, _ = await post(http, h, name, data=good.replace(sig.encode(), other_sign.encode()))
            assert status == 401, name
            # The right sign with another key in the form: not this account's request.
            status, _ = await post(http, h, name, data=good.replace(KEY.encode(), KEY[:-1].encode() + b"b"))
            assert status == 401, name
            assert await inbox_count(h) == INCOMING.index(name)  # nothing of the refused ones
            status, text = await post(http, h, name)
            assert (status, text) == (200, ""), name
    assert await inbox_count(h) == len(INCOMING)  # every sample once


async def test_bad_requests_are_refused_with_a_reason_and_nothing_is_kept(h: Harness,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    first = ANSWERED[0]
    event = json.loads(fields_of(body(first))["json"])
    async with aiohttp.ClientSession() as http:
        assert (await post(http, h, first, account="other"))[0] == 404
        assert (await post(http, h, first, account="locked"))[0] == 403  # allowed_ips: 10.0.0.0/8 only
        assert (await post(http, h, first, data=b"json=" + b"a" * 70_000))[0] == 413
        no_sign = urlencode({"vpbx_api_key": KEY, "json": fields_of(body(first))["json"]}).encode()
        assert (await post(http, h, first, data=no_sign))[0] == 401
        status, text = await post(http, h, first, data=urlencode({"vpbx_api_key": KEY, "sign": "x"}).encode())
        assert status == 400 and "no json field" in text
        status, text = await post(http, h, first, data=signed("{not json"))
        assert status == 400 and "not JSON" in text
        status, text = await post(http, h, first, data=signed("[1, 2]"))
        assert status == 400 and "not a JSON object" in text
        status, text = await post(http, h, first, data=signed({k: v for k, v in event.items() if k != "entry_id"}))
        assert status == 400 and "events/call without entry_id" in text
        status, text = await post(http, h, first, data=body(first) + b"&json=%7B%7D")
        assert status == 400 and "given twice" in text
        status, text = await post(http, h, first, data=b"\xff\xfe")
        assert status == 400 and "not UTF-8" in text
    assert await inbox_count(h) == 0
    refusals = [r for r in caplog.records
                if r.name in ("connectors.mango", "connectors.webhook") and r.levelno == logging.WARNING]
    assert len(refusals) == 10 and all("refused" in r.getMessage() for r in refusals)
    assert KEY not in caplog.text and SALT not in caplog.text


async def test_other_paths_answer_200_and_keep_nothing_and_a_route_result_is_logged(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as http:
        # The cabinet's connection check and callbacks the gateway does not use.
        async with http.get(f"{h.url}/webhooks/mango/main") as response:
            assert response.status == 200
        assert (await post(http, h, "", path="ping", data=b"anything"))[:1] == (200,)
        assert (await post(http, h, "", path="events/sms", data=body(ANSWERED[0])))[:1] == (200,)
        assert await inbox_count(h) == 0
        # A base URL saved with a trailing slash still reaches events/call.
        assert (await post(http, h, ANSWERED[0], path="/events/call"))[:1] == (200,)
        assert (await post(http, h, "mango_result_route__success"))[:1] == (200,)
    rows = await h.store.read("SELECT path, call_key, done FROM webhook_inbox ORDER BY inbox_id")
    # The IVR leg waits for the rest of its call; a command's result is no call's: done at once.
    assert [tuple(row) for row in rows] == [("events/call", ANSWERED_ENTRY, 0), ("result/route", None, 1)]
    assert "route command gw-route-6f1c2a: result 1000 (done)" in caplog.text
    assert "GET / answered, not kept" in caplog.text and "POST /events/sms answered, not kept" in caplog.text


# -- flows ---------------------------------------------------------------------------------


async def test_inbound_answered_pops_logs_and_makes_a_lead(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        await deliver(h, ANSWERED[:3])  # the IVR, then 101 rings
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == "+79990001122" and pop["call_id"] == f"mango:main:{ANSWERED_ENTRY}"
        await deliver(h, ANSWERED[3:4])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "talking")
        await deliver(h, ANSWERED[4:-1])
        assert h.records == []  # every leg has hung up, but only the summary ends a Mango call
        await deliver(h, ANSWERED[-1:])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "ended")
    (record,) = h.records
    assert (record.call_id, record.direction, record.outcome, record.answered_by, record.rang, record.talked) == (
        f"mango:main:{ANSWERED_ENTRY}", "inbound", "answered", "101", ("101",), ("101",))
    assert (record.customer, record.caller, record.dialled, record.shop, record.channel) == (
        "+79990001122", "+79990001122", "+74950000100", "A", "unknown")
    assert (record.started_at, record.answered_at, record.ended_at) == (at(10, 15, 7), at(10, 15, 21), at(10, 16, 55))
    assert (record.ring_seconds, record.talk_seconds, record.hangup_cause) == (14, 94, 16)
    assert record.recording_path == "mango://main/MToxMDA0NTYwOjQ0NDQ0NDQ0NDow"
    # The customer and 101's phone: the IVR leg is no person.
    assert [(leg.kind, leg.extension, leg.number) for leg in record.legs] == [
        ("external", None, "+79990001122"), ("agent", "101", "101")]
    contact = await h.contacts.get("+79990001122")
    assert contact is not None and (contact.status, contact.manager) == ("lead", "anna")
    assert await h.followup.tasks.find(status="all") == []


async def test_inbound_missed_opens_a_task_and_outbound_is_logged(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        await deliver(h, MISSED[:3])
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == "+79990005566"
        await deliver(h, MISSED[3:])
        withdraw = await anna.until(lambda f: f["type"] == "withdraw")
        assert withdraw["reason"] == "caller_hung_up"
    (missed,) = h.records
    # 101's leg ended with 1110 "caller hung up" while it rang: the caller gave up.
    assert (missed.direction, missed.outcome, missed.reason, missed.rang, missed.answered_by, missed.talked) == (
        "inbound", "abandoned", "caller_hung_up", ("101",), None, ())
    assert (missed.customer, missed.dialled, missed.shop, missed.channel) == ("+79990005566", "+74950000100", "A",
                                                                              "unknown")
    assert (missed.started_at, missed.answered_at, missed.ended_at, missed.ring_seconds) == (
        at(11, 2, 40), None, at(11, 3, 7), 27)
    (task,) = await h.followup.tasks.find()
    assert (task.phone, task.owner, task.attempts) == ("+79990005566", "anna", 1)
    contact = await h.contacts.get("+79990005566")
    assert contact is not None and contact.status == "lead"

    assert isinstance(h.clock, FakeClock)
    h.clock.now = at(12, 31, 0)
    await deliver(h, OUTBOUND)
    outbound = h.records[-1]
    assert (outbound.direction, outbound.caller, outbound.dialled, outbound.outcome, outbound.answered_by) == (
        "outbound", "101", "+79990003344", "answered", None)
    assert (outbound.started_at, outbound.answered_at, outbound.ended_at, outbound.talk_seconds) == (
        at(12, 30, 0), at(12, 30, 9), at(12, 30, 50), 41)
    assert outbound.recording_path is None and outbound.customer == "+79990003344"
    assert [t.status for t in await h.followup.tasks.find(status="all")] == ["open"]  # another number


async def test_a_transfer_keeps_one_record_naming_both_agents(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await deliver(h, TRANSFER[:3])
        assert (await anna.until(lambda f: f["type"] == "pop"))["call_id"] == f"mango:main:{TRANSFER_ENTRY}"
        await deliver(h, TRANSFER[3:6])
        assert (await boris.until(lambda f: f["type"] == "pop"))["card"]["caller"]["e164"] == "+79990007788"
        await deliver(h, TRANSFER[6:])
        await boris.until(lambda f: f["type"] == "update" and f["state"] == "ended")
    (record,) = h.records
    assert (record.direction, record.outcome, record.answered_by, record.rang, record.talked) == (
        "inbound", "answered", "101", ("101", "102"), ("101", "102"))
    assert (record.customer, record.dialled, record.shop, record.channel) == ("+79990007788", "+74950000003", "A",
                                                                              "yandex")
    assert (record.started_at, record.answered_at, record.ended_at, record.talk_seconds) == (
        T0, T0 + 14, T0 + 200, 186)
    b_leg = next(leg for leg in record.legs if leg.leg_id == _B)
    assert (b_leg.extension, b_leg.answered_at) == ("102", T0 + 58)  # its first Connected by seq


async def test_a_call_whose_leg_notifications_were_lost_is_logged_from_its_summary(h: Harness) -> None:
    # Mango does not resend: the summary alone (and a call that lost its Connected) still make the record.
    await deliver(h, [ANSWERED[-1], MISSED[-1]] + [name for name in OUTBOUND if "connected" not in name])
    answered, missed, outbound = sorted(h.records, key=lambda r: r.started_at)
    assert (answered.outcome, answered.answered_by, answered.rang, answered.talked, answered.caller) == (
        "answered", "101", ("101",), ("101",), "+79990001122")
    assert (answered.started_at, answered.answered_at, answered.ended_at) == (at(10, 15, 7), at(10, 15, 21),
                                                                              at(10, 16, 55))
    assert (missed.outcome, missed.rang, missed.reason, missed.ring_seconds) == (
        "abandoned", ("101",), "caller_hung_up", 27)
    assert (outbound.direction, outbound.outcome, outbound.answered_at, outbound.talk_seconds) == (
        "outbound", "answered", at(12, 30, 9), 41)
    assert len(await h.followup.tasks.find()) == 1


async def test_the_summary_decides_whether_anybody_talked(h: Harness) -> None:
    # 101's leg says Connected (a voicemail, a quirk), the summary says no talk
    # (talk_time 0; entry_result 1 as in one of the manual's examples): missed.
    def changed(name: str, label: str = "", **fields: Any) -> Item:
        event = json.loads(fields_of(body(name))["json"])
        event.update(fields)
        return name + label, path_of(name), signed({k: v for k, v in event.items() if v is not None})

    await deliver(h, items(MISSED[:3]) + [
        changed(MISSED[3], "/connected", seq=2, call_state="Connected", timestamp=int(at(11, 2, 50)),
                disconnect_reason=None),
        changed(MISSED[3], seq=3, disconnect_reason=1100),
        changed(MISSED[4], entry_result=1, disconnect_reason=1100)])
    (record,) = h.records
    assert (record.outcome, record.answered_by, record.rang, record.talked, record.reason) == (
        "missed", None, ("101",), (), "noanswer")
    assert len(await h.followup.tasks.find()) == 1


async def test_a_request_the_inbox_cannot_keep_is_answered_503_and_taken_when_sent_again(h: Harness) -> None:
    await h.store.write(("ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away", ()))
    async with aiohttp.ClientSession() as http:
        status, text = await post(http, h, MISSED[0])
        assert status == 503 and "store_unavailable" in text
        await h.store.write(("ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox", ()))
        assert (await h.store.read("SELECT count(*) FROM webhook_inbox"))[0][0] == 0
        assert await post(http, h, MISSED[0]) == (200, "")  # Mango's next try
    assert await inbox_count(h) == 1


def lenient(data: bytes) -> bytes:
    """An event as Mango's own manual writes them: "seq":"1", the time as a
    string, "locaton", a missing comma; signed by the test."""
    event = json.loads(fields_of(data)["json"])
    text = json.dumps(event, separators=(",", ":"))
    text = text.replace(f'"seq":{event["seq"]}', f'"seq":"{event["seq"]}"')
    text = text.replace(f'"timestamp":{event["timestamp"]}', f'"timestamp":"{event["timestamp"]}"')
    text = text.replace('"location"', '"locaton"').replace(',"from"', '\n"from"')
    assert text.count('"') - json.dumps(event).count('"') == 4 and "\n" in text
    return signed(text)


FLOWS = {"answered": items(ANSWERED), "missed": items(MISSED), "outbound": items(OUTBOUND), "transfer": TRANSFER}


@pytest.mark.parametrize("flow", sorted(FLOWS))
async def test_shuffled_and_doubled_deliveries_give_the_same_record(tmp_path: Path, flow: str) -> None:
    async def run(order: list[Item], where: Path) -> CallRecord:
        async with harness(where) as h:
            await deliver(h, order)
            records = await h.store.calls()
            assert await inbox_count(h) == len(FLOWS[flow])  # the repeats were absorbed
        assert len(records) == 1, records
        return records[0]

    in_order = await run(FLOWS[flow], tmp_path / "in-order")
    rng = random.Random(7)
    for n in range(3):
        order = FLOWS[flow] + FLOWS[flow]
        rng.shuffle(order)
        other = await run(order, tmp_path / f"shuffled-{n}")
        assert other.to_json() == in_order.to_json(), [label for label, _, _ in order]
        assert other.legs == in_order.legs
    # The legs' events written the way Mango's manual writes them: alone, and
    # shuffled with the samples' own (the same events: absorbed as repeats).
    quirky = [(label, path, lenient(data)) for label, path, data in FLOWS[flow] if path == "events/call"]
    only = await run([item for item in FLOWS[flow] if item[1] != "events/call"] + quirky, tmp_path / "lenient")
    assert only.to_json() == in_order.to_json() and only.legs == in_order.legs
    mixed = FLOWS[flow] + quirky
    rng.shuffle(mixed)
    both = await run(mixed, tmp_path / "mixed")
    assert both.to_json() == in_order.to_json() and both.legs == in_order.legs


def test_a_calls_events_come_in_time_order_and_only_the_summary_ends_it() -> None:
    account = Account("main", {"key": KEY, "salt": SALT}, "http://gw.example.com/webhooks/mango/main")
    mango = MangoConnector([account])
    for flow, flow_items in FLOWS.items():
        history = [Request(path, "", data, SAMPLE_DAY) for _, path, data in flow_items]
        events = mango.call_events("main", history[::-1])
        assert events == mango.call_events("main", history), flow
        assert isinstance(events[0], LegCreated) and events[0].at == min(e.at for e in events if hasattr(e, "at"))
        if flow == "answered":
            assert events[1] == RecordingStarted(events[0].call_id, "caller", events[0].at,
                                                 "mango://main/MToxMDA0NTYwOjQ0NDQ0NDQ0NDow")
        times = [e.at for e in events if hasattr(e, "at")]
        assert times == sorted(times), flow
        origin = events[0].leg_id
        assert isinstance(events[-1], LegHungUp) and events[-1].leg_id == origin
        live = mango.call_events("main", [r for r in history if r.path != "events/summary"])
        assert not any(isinstance(e, LegHungUp) and e.leg_id == origin for e in live), flow
        assert mango.call_events("main", [r for r in history if r.path in ("events/recording", "events/dtmf")]) == []


# -- routing -------------------------------------------------------------------------------


async def test_routing_sends_the_manager_for_a_known_caller_and_nothing_otherwise(
        h: Harness, api: MangoApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await h.contacts.put("+79990001122", {"manager": "boris", "name": "ACME VIP"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    mango = connector(h)
    async with aiohttp.ClientSession() as http, tab(h, "boris"):
        assert await post(http, h, ANSWERED[0]) == (200, "")
        await asyncio.wait_for(mango.drain(), 5)
        ((path, content_type, sent),) = api.received
        assert (path, content_type) == ("/vpbx/commands/route", "application/x-www-form-urlencoded")
        # The same shape as the spec's sample of this command: fields, their order, encoding, compact JSON.
        sample = body(COMMAND_SAMPLE)
        assert urlencode(parse_qsl(sample.decode())).encode() == sample
        assert [k for k, _ in parse_qsl(sent.decode())] == [k for k, _ in parse_qsl(sample.decode())]
        assert urlencode(parse_qsl(sent.decode())).encode() == sent
        fields = fields_of(sent)
        command = json.loads(fields["json"])
        assert list(command) == list(json.loads(fields_of(sample)["json"]))
        assert fields["json"] == json.dumps(command, separators=(",", ":"))
        assert (fields["vpbx_api_key"], fields["sign"]) == (KEY, mango_sign(fields["json"]))
        assert (command["call_id"], command["to_number"]) == (IVR_LEG, "102")  # the IVR leg, to boris
        assert re.fullmatch(r"gw-route-[0-9a-f]{12}", command["command_id"])
        # Mango reports the result later; a repeat of the notification routes nothing again.
        result = signed({"command_id": command["command_id"], "result": 1000})
        assert await post(http, h, "", path="result/route", data=result) == (200, "")
        assert await post(http, h, ANSWERED[0]) == (200, "")
        # An unknown caller: nothing is sent, the IVR follows its own scenario.
        assert await post(http, h, MISSED[0]) == (200, "")
        await asyncio.wait_for(mango.drain(), 5)
        assert len(api.received) == 1
        assert f"route command {command['command_id']}: result 1000 (done)" in caplog.text
        assert "left to the PBX (default)" in caplog.text

        # The known caller again, in a new call, while the store is too slow for the deadline.
        event = json.loads(fields_of(body(ANSWERED[0]))["json"])
        event.update(entry_id="MToxMDA0NTYwOjEwMDE6NDI0MjQyOTk=", call_id="MToxMDA0NTYwOjEwMDE6OTAwMDAwMDk5")
        async with h.store._read_lock:  # every read waits: a stalled disk
            assert await post(http, h, "", path="events/call", data=signed(event)) == (200, "")
            assert mango.routes_in_flight == 1  # the reply did not wait for the decision
            await asyncio.wait_for(mango.drain(), 5)  # the deadline ends it while the store still stalls
        await asyncio.sleep(0.05)
        assert len(api.received) == 1
        assert "no routing for leg MToxMDA0NTYwOjEwMDE6OTAwMDAwMDk5" in caplog.text
    keys = {row[0] for row in await h.store.read("SELECT dedup_key FROM webhook_inbox")}
    assert f"call|{IVR_LEG}|1" in keys and "call|MToxMDA0NTYwOjEwMDE6OTAwMDAwMDk5|1" in keys  # stored all the same
    assert KEY not in caplog.text and SALT not in caplog.text


async def test_a_refused_command_is_logged_and_the_call_goes_on(h: Harness, api: MangoApi,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    await h.contacts.put("+79990001122", {"manager": "boris"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    api.status = 420  # Mango's answer to a command it will not carry out
    async with tab(h, "boris"):
        await deliver(h, ANSWERED[:1])
        await asyncio.wait_for(connector(h).drain(), 5)
    assert len(api.received) == 1
    assert "commands/route gw-route-" in caplog.text and "refused: HTTP 420" in caplog.text
    await deliver(h, ANSWERED[1:])
    assert [r.outcome for r in h.records] == ["answered"]


async def test_routing_can_be_turned_off_and_options_are_checked(tmp_path: Path, api: MangoApi) -> None:
    async with harness(tmp_path, api.url, {"route": "off"}) as h:
        await h.contacts.put("+79990001122", {"manager": "boris"}, set_by="admin")
        await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
        async with tab(h, "boris"):
            await deliver(h, ANSWERED[:1])
            await asyncio.wait_for(connector(h).drain(), 5)
    assert api.received == []
    account = Account("main", {"key": KEY, "salt": SALT}, "http://gw.example.com/webhooks/mango/main")
    for options, wrong in (({"rout": "off"}, "options.rout: unknown option"),
                           ({"route": "no"}, "options.route: expected 'on' or 'off', got 'no'")):
        with pytest.raises(ValueError, match=re.escape(f"[[webhooks.mango]] main: {wrong}")):
            MangoConnector([Account(account.name, account.secrets, account.public_url, options=options)])


async def test_a_request_stored_but_not_processed_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    # The first process stores and acknowledges, and dies before it processes anything.
    async with harness(tmp_path, consume_webhooks=False) as h:
        async with aiohttp.ClientSession() as http:
            for name in MISSED:
                assert await post(http, h, name) == (200, "")
        assert h.records == []
    async with harness(tmp_path) as again:
        await again.webhooks.idle()
        await again.gateway.drain()
        (record,) = again.records
        assert (record.outcome, record.rang, record.started_at, record.ended_at) == (
            "abandoned", ("101",), at(11, 2, 40), at(11, 3, 7))
        pending = await again.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0")
        assert pending[0][0] == 0
        (task,) = await again.followup.tasks.find()
        assert task.phone == "+79990005566"
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        assert [r.call_id for r in await store.calls()] == ["mango:main:MToxMDA0NTYwOjEwMDE6NDI0MjQyNTU="]
    finally:
        await store.close()
