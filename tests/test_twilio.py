"""Twilio Voice through the whole gateway: the real aiohttp app, signed sample
bodies (tests/webhook_samples, from shared/webhooks), the inbox on SQLite,
the core, pops on the websocket, leads, missed-call tasks and the TwiML the
gateway answers with."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from connectors.twilio import TwilioConnector
from connectors.webhook import Account
from crm_bridge.store import Store
from gateway.config import Secret, WebhookAccount, WebhooksConfig
from gateway.numberplan import PlanBook
from gateway.record import CallRecord
from tests.harness import Harness
from tests.test_hub import FakeClock, tab
from tests.test_numberplan import example_plan

SAMPLES = Path(__file__).parent / "webhook_samples"
TOKEN = "0123456789abcdef0123456789abcdef"
PUBLIC = "https://gw.example.com/twilio"  # the URL prefix the samples were signed with
VOICEMAIL = (SAMPLES / "twilio_dial_action_response__voicemail.xml").read_text()
OPTIONS = {
    "dial": "sip:{extension}@example.sip.twilio.com",
    "endpoints": "101=+14155550142",  # anna's phone is the number the samples' <Dial> rings
    "default_dial": "+14155550199",
    "voicemail_twiml": VOICEMAIL.replace(PUBLIC, "{public_url}"),
}
TWILIO = WebhooksConfig(accounts=(
    WebhookAccount("twilio", "main", {"auth_token": Secret(TOKEN)}, public_url=PUBLIC, options=OPTIONS),
    WebhookAccount("twilio", "locked", {"auth_token": Secret(TOKEN)}, allowed_ips=("192.0.2.0/24",),
                   public_url="https://gw.example.com/locked", options=OPTIONS),
))
UTC = timezone.utc
MSK = ZoneInfo("Europe/Moscow")
# The samples' calls happen on Monday 2026-03-02 from 18:15 UTC (21:15 in
# Moscow, just after shop A closes); the gateway's clock is set to the first
# call's start. Routing is tested at noon, within the shop's hours.
SAMPLE_START = datetime(2026, 3, 2, 18, 15, 7, tzinfo=UTC).timestamp()
NOON = datetime(2026, 3, 2, 12, 0, tzinfo=MSK).timestamp()

ANSWERED = ["twilio_voice_incoming__inbound_answered",
            "twilio_status_callback__inbound_answered_child_initiated",
            "twilio_status_callback__inbound_answered_child_ringing",
            "twilio_status_callback__inbound_answered_child_answered",
            "twilio_status_callback__inbound_answered_child_completed",
            "twilio_dial_action__inbound_answered",
            "twilio_recording_status__inbound_answered",
            "twilio_status_callback__inbound_answered_parent_completed"]
MISSED = ["twilio_voice_incoming__inbound_missed",
          "twilio_status_callback__inbound_missed_child_no_answer",
          "twilio_dial_action__inbound_missed",
          "twilio_status_callback__inbound_missed_parent_completed"]
OUTBOUND = ["twilio_status_callback__outbound_initiated", "twilio_status_callback__outbound_ringing",
            "twilio_status_callback__outbound_answered", "twilio_status_callback__outbound_completed"]


def sample_clock(at: float = SAMPLE_START) -> FakeClock:
    clock = FakeClock()
    clock.now = at
    return clock


def expected_signatures() -> dict[str, tuple[str, str]]:
    """File -> (signed URL, signature), from the samples' README (computed by the
    spec's own tool, not by the code under test)."""
    text = (SAMPLES / "README.md").read_text()
    pattern = (r"^\| `(twilio_[^`]+\.txt)` \| twilio \| X-Twilio-Signature over URL (\S+) \+ sorted params"
               r" \| `([^`]+)` \|$")
    return {m[1].removesuffix(".txt"): (m[2], m[3]) for m in re.finditer(pattern, text, re.M)}


SIGNATURES = expected_signatures()


def target(name: str) -> str:
    """The sample's path (and query) below the account's prefix: "status?leg=out"."""
    url = SIGNATURES[name][0]
    assert url.startswith(PUBLIC + "/"), url
    return url.removeprefix(PUBLIC + "/")


def body(name: str) -> bytes:
    return (SAMPLES / f"{name}.txt").read_bytes().rstrip(b"\n")


def sign(url: str, data: bytes) -> str:
    """Twilio's scheme, written here from its documentation (checked against
    the README's signatures below), for requests the samples do not cover."""
    signed = url + "".join(k + v for k, v in sorted(parse_qsl(data.decode(), keep_blank_values=True)))
    return base64.b64encode(hmac.new(TOKEN.encode(), signed.encode(), hashlib.sha1).digest()).decode()


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=TWILIO) as harness:
        yield harness


async def post(http: aiohttp.ClientSession, h: Harness, name: str, *, data: bytes | None = None,
               signature: str | None = None, path: str | None = None, account: str = "main") -> tuple[int, str]:
    """POST a sample (or ``data``) to its URL (or ``path``); ``signature`` ""
    sends no signature header."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    signature = signature if signature is not None else SIGNATURES[name][1]
    if signature:
        headers["X-Twilio-Signature"] = signature
    url = f"{h.url}/webhooks/twilio/{account}/{path if path is not None else target(name)}"
    async with http.post(url, data=data if data is not None else body(name), headers=headers) as response:
        return response.status, await response.text()


async def deliver(h: Harness, names: list[str]) -> dict[str, str]:
    """Post the samples in this order; the replies by sample."""
    replies: dict[str, str] = {}
    async with aiohttp.ClientSession() as http:
        for name in names:
            status, text = await post(http, h, name)
            assert status == 200, (name, text)
            replies[name] = text
    await h.webhooks.idle()
    await h.gateway.drain()
    return replies


async def inbox_count(h: Harness) -> int:
    return int((await h.store.read("SELECT count(*) FROM webhook_inbox"))[0][0])


def _times(record: CallRecord) -> tuple[Any, ...]:
    return (record.started_at, record.answered_at, record.ended_at, record.ring_seconds, record.talk_seconds)


def at(hour: int, minute: int, second: int) -> float:
    return datetime(2026, 3, 2, hour, minute, second, tzinfo=UTC).timestamp()


# -- signatures and bad input ------------------------------------------------------------


def test_every_sample_has_its_expected_signature() -> None:
    assert len(SIGNATURES) == 16 and set(ANSWERED + MISSED + OUTBOUND) == set(SIGNATURES)
    for name, (url, expected) in SIGNATURES.items():
        assert sign(url, body(name)) == expected, name  # the test's own signer agrees with the spec's tool


async def test_each_sample_is_accepted_and_refused_with_one_byte_changed(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        for name in sorted(SIGNATURES):
            good = body(name)
            flip = good.index(b"CallSid=") + 12  # inside the call's id
            bad = good[:flip] + bytes([good[flip] ^ 0x01]) + good[flip + 1:]
            status, text = await post(http, h, name, data=bad)
            assert (status, '"bad_signature"' in text) == (401, True), (name, text)
            sig = SIGNATURES[name][1]
            status, _ = await post(http, h, name, signature=sig[:-3] + ("A" if sig[-3] != "A" else "B") + sig[-2:])
            assert status == 401, name
            # The query string is signed too: the same body at another URL is refused.
            status, _ = await post(http, h, name, path=target(name) + ("&" if "?" in target(name) else "?") + "x=1")
            assert status == 401, name
            status, text = await post(http, h, name)
            assert status == 200, (name, text)
    assert await inbox_count(h) == len(SIGNATURES)  # every accepted sample once, none of the refused ones


async def test_the_url_with_its_default_port_is_accepted(h: Harness) -> None:
    name = ANSWERED[0]
    async with aiohttp.ClientSession() as http:
        status, _ = await post(http, h, name, signature=sign("https://gw.example.com:443/twilio/voice", body(name)))
        assert status == 200
        status, _ = await post(http, h, name, signature=sign("https://gw.example.com:8443/twilio/voice", body(name)))
        assert status == 401
        # Signed with the URL this process sees (behind the proxy): refused.
        status, _ = await post(http, h, name, signature=sign(f"{h.url}/webhooks/twilio/main/voice", body(name)))
        assert status == 401
    assert await inbox_count(h) == 1


async def test_bad_requests_are_refused_and_nothing_is_stored(h: Harness) -> None:
    name = ANSWERED[0]
    async with aiohttp.ClientSession() as http:
        assert (await post(http, h, name, account="other"))[0] == 404
        assert (await post(http, h, name, path="hangup"))[0] == 404
        status, text = await post(http, h, name, account="locked")
        assert (status, '"forbidden"' in text) == (403, True)  # 127.0.0.1 is not in its allowed_ips
        status, text = await post(http, h, name, signature="")
        assert (status, "no X-Twilio-Signature" in text) == (401, True)
        status, text = await post(http, h, name, data=b"CallSid=CA\xff\xfe")
        assert (status, "not UTF-8" in text) == (400, True)
        no_sid = b"AccountSid=AC11111111111111111111111111111111&CallStatus=ringing&From=%2B14155550123"
        status, text = await post(http, h, name, data=no_sid, signature=sign(f"{PUBLIC}/voice", no_sid))
        assert (status, "voice without CallSid" in text) == (400, True)
        no_status = body(OUTBOUND[0]).replace(b"CallStatus=initiated&", b"")
        status, text = await post(http, h, OUTBOUND[0], data=no_status,
                                  signature=sign(f"{PUBLIC}/status?leg=out", no_status))
        assert (status, "status without CallStatus" in text) == (400, True)
        big = b"CallSid=CA1&x=" + b"a" * 70_000
        assert (await post(http, h, name, data=big, signature=sign(f"{PUBLIC}/voice", big)))[0] == 413
        async with http.get(f"{h.url}/webhooks/twilio/main/voice") as response:
            assert response.status == 405
    assert await inbox_count(h) == 0


def test_bad_options_name_their_key() -> None:
    def account(**options: str) -> Account:
        return Account("main", {"auth_token": TOKEN}, PUBLIC, options=options)

    cases = [({"dial": "sip:101@example.sip.twilio.com"}, "options.dial"),
             ({"endpoints": "101"}, "options.endpoints"),
             ({"timeout": "2"}, "options.timeout"),
             ({"record": "yes"}, "options.record"),
             ({"voicemail_twiml": "<Say>hello"}, "options.voicemail_twiml"),
             ({"dail": "sip:{extension}@x"}, "options.dail")]
    for options, key in cases:
        with pytest.raises(ValueError, match=re.escape(f"[[webhooks.twilio]] main: {key}: expected")):
            TwilioConnector([account(**options)])
    TwilioConnector([account(**OPTIONS)])


# -- the flows -------------------------------------------------------------------------------


async def test_inbound_answered_pops_logs_and_makes_a_lead(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await deliver(h, ANSWERED[:3])  # the call comes in, the <Dial> leg to anna's phone rings
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == "+14155550123"
        assert pop["call_id"] == "twilio:main:CAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        assert h.records == []  # live until the parent's final status
        await deliver(h, ANSWERED[3:])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "ended")
        assert [f for f in await boris.quiet() if f["type"] in ("pop", "update")] == []
    (record,) = h.records
    assert (record.direction, record.outcome, record.answered_by, record.rang, record.talked) == (
        "inbound", "answered", "101", ("101",), ("101",))
    assert (record.customer, record.dialled, record.shop, record.channel) == ("+14155550123", "+14155550100", "A",
                                                                             "unknown")
    # Twilio's own times: the parent ended 18:16:51 after 104 s; anna answered at 18:15:16.
    assert _times(record) == (at(18, 15, 7), at(18, 15, 16), at(18, 16, 51), 9.0, 95.0)
    assert record.recording_path == "twilio://main/REffffffffffffffffffffffffffffffff"
    contact = await h.contacts.get("+14155550123")
    assert contact is not None and (contact.status, contact.manager) == ("lead", "anna")
    assert await h.followup.tasks.find(status="all") == []
    assert await h.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0") == [(0,)]


async def test_inbound_missed_gets_voicemail_and_opens_a_task(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        replies = await deliver(h, MISSED)
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["call_id"] == "twilio:main:CAcccccccccccccccccccccccccccccccc"
        withdraw = await anna.until(lambda f: f["type"] == "withdraw")
        assert withdraw["pop_id"] == pop["pop_id"]
    assert replies[MISSED[2]] == VOICEMAIL  # the <Dial action> after "no-answer": the configured voicemail
    (record,) = h.records
    assert (record.direction, record.outcome, record.reason, record.rang, record.answered_by) == (
        "inbound", "missed", "noanswer", ("101",), None)
    assert (record.customer, record.dialled, record.shop, record.channel) == ("+14155550188", "+14155550100", "A",
                                                                             "unknown")
    assert _times(record) == (at(19, 2, 39), None, at(19, 3, 2), 23.0, 0.0)
    (task,) = await h.followup.tasks.find()
    assert (task.phone, task.owner, task.attempts) == ("+14155550188", "anna", 1)


def child_callback(status: str, seq: int, clock_time: str) -> bytes:
    """The missed call's <Dial> leg in another state (the samples show only its no-answer)."""
    data = body(MISSED[1]).replace(b"CallStatus=no-answer", f"CallStatus={status}".encode())
    data = data.replace(b"SequenceNumber=2", f"SequenceNumber={seq}".encode())
    data = data.replace(b"19%3A03%3A01", clock_time.replace(":", "%3A").encode())
    if status == "ringing":
        data = data.replace(b"&CallDuration=0&Duration=0&SipResponseCode=487", b"")
    return data


@pytest.mark.parametrize("ending", ["canceled", "still_ringing"])
async def test_caller_who_hangs_up_while_the_agent_rings_abandoned_the_call(h: Harness, ending: str) -> None:
    ringing = child_callback("ringing", 1, "19:02:45")
    canceled = child_callback("canceled", 2, "19:02:50")
    async with aiohttp.ClientSession() as http, tab(h, "anna") as anna:
        assert (await post(http, h, MISSED[0]))[0] == 200
        for data in [ringing] + ([canceled] if ending == "canceled" else []):
            status, _ = await post(http, h, MISSED[1], data=data, signature=sign(f"{PUBLIC}/child-status", data))
            assert status == 200
        await anna.until(lambda f: f["type"] == "pop")
        assert h.records == []
        await deliver(h, [MISSED[3]])  # the parent's final status
        await anna.until(lambda f: f["type"] == "withdraw")
    (record,) = h.records
    assert (record.outcome, record.reason, record.rang, record.answered_by) == (
        "abandoned", "caller_hung_up", ("101",), None)
    assert _times(record) == (at(19, 2, 39), None, at(19, 3, 2), 23.0, 0.0)
    (task,) = await h.followup.tasks.find()
    assert (task.phone, task.owner) == ("+14155550188", "anna")


async def test_outbound_rest_call_is_one_leg(h: Harness) -> None:
    await deliver(h, OUTBOUND)
    (record,) = h.records
    assert (record.direction, record.caller, record.dialled, record.customer, record.outcome) == (
        "outbound", "+14155550100", "+14155550177", "+14155550177", "answered")
    assert (record.rang, record.answered_by, record.recording_path) == ((), None, None)
    assert _times(record) == (at(20, 30, 0), at(20, 30, 9), at(20, 30, 50), 9.0, 41.0)


async def test_outbound_status_url_may_name_the_agent_who_placed_it(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        for name in OUTBOUND:
            url = f"{PUBLIC}/status?extension=102"
            status, _ = await post(http, h, name, signature=sign(url, body(name)), path="status?extension=102")
            assert status == 200
    await h.webhooks.idle()
    await h.gateway.drain()
    (record,) = h.records
    assert (record.direction, record.caller, record.dialled, record.outcome) == (
        "outbound", "102", "+14155550177", "answered")


async def test_click_to_call_rings_the_agent_then_dials_the_customer(h: Harness) -> None:
    # A REST call to anna's SIP phone (To matches options.dial), whose TwiML
    # then <Dial>s the customer: the outbound samples, re-addressed and signed here.
    agent = "sip%3A101%40example.sip.twilio.com"
    parent = [body(name).replace(b"Called=%2B14155550177", f"Called={agent}".encode())
              .replace(b"To=%2B14155550177", f"To={agent}".encode()) for name in OUTBOUND]
    dial_leg = b"Direction=outbound-dial&ParentCallSid=CA" + b"e" * 32
    child = [body(name).replace(b"CAeeee", b"CAffff").replace(b"Direction=outbound-api", dial_leg)
             .replace(b"20%3A30%3A0", b"20%3A30%3A1") for name in OUTBOUND[2:]]  # answers 20:30:19, ends 20:30:50
    async with aiohttp.ClientSession() as http:
        for path, data in [("status", d) for d in parent[:3]] + [("child-status", d) for d in child] + [
                ("status", parent[3])]:
            status, _ = await post(http, h, OUTBOUND[0], data=data, signature=sign(f"{PUBLIC}/{path}", data),
                                   path=path)
            assert status == 200
    await h.webhooks.idle()
    await h.gateway.drain()
    (record,) = h.records
    assert (record.direction, record.caller, record.dialled, record.customer, record.outcome, record.rang) == (
        "outbound", "101", "+14155550177", "+14155550177", "answered", ())
    assert (record.answered_at, record.ended_at) == (at(20, 30, 19), at(20, 30, 50))


@pytest.mark.parametrize("flow", [ANSWERED, MISSED, OUTBOUND], ids=["answered", "missed", "outbound"])
async def test_shuffled_and_doubled_deliveries_give_the_same_record(tmp_path: Path, flow: list[str]) -> None:
    async def run(order: list[str], where: Path) -> CallRecord:
        async with Harness(where, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=TWILIO) as h:
            await deliver(h, order)
            records = await h.store.calls()
        assert len(records) == 1, records
        return records[0]

    in_order = await run(flow, tmp_path / "in-order")
    rng = random.Random(7)
    orders = [list(reversed(flow + flow))]
    for _ in range(3):
        order = flow + flow
        rng.shuffle(order)
        orders.append(order)
    for n, order in enumerate(orders):
        other = await run(order, tmp_path / f"shuffled-{n}")
        assert other.to_json() == in_order.to_json(), order
        assert _times(other) == _times(in_order)


# -- routing -----------------------------------------------------------------------------------


def _dial(twiml: str) -> tuple[dict[str, str], str, dict[str, str], str]:
    """The <Dial>'s attributes, its noun's tag, attributes and text."""
    root = ElementTree.fromstring(twiml.encode())
    assert root.tag == "Response" and len(root) == 1, twiml
    dial = root[0]
    assert dial.tag == "Dial" and len(dial) == 1, twiml
    noun = dial[0]
    return dict(dial.attrib), noun.tag, dict(noun.attrib), (noun.text or "").strip()


async def test_voice_reply_dials_the_assigned_manager_within_the_deadline(h: Harness) -> None:
    assert isinstance(h.clock, FakeClock)
    h.clock.now = NOON  # within shop A's hours
    sample = _dial((SAMPLES / "twilio_voice_response__dial_manager.xml").read_text())
    await h.contacts.put("+14155550123", {"manager": "anna", "name": "ACME VIP"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    async with aiohttp.ClientSession() as http, tab(h, "anna"), tab(h, "boris"):
        status, text = await post(http, h, ANSWERED[0])
        assert status == 200
        dial, noun, attributes, endpoint = _dial(text)
        # The sample's shape; the action hands an unanswered manager's call to the default.
        assert dial == {**sample[0], "action": sample[0]["action"] + "?then=default"}
        assert (noun, attributes, endpoint) == sample[1:] == ("Number", sample[2], "+14155550142")

        # An unknown caller: the default.
        status, text = await post(http, h, MISSED[0])
        assert status == 200
        dial, noun, attributes, endpoint = _dial(text)
        assert (dial["action"], noun, attributes, endpoint) == (f"{PUBLIC}/dial-action", "Number", sample[2],
                                                                "+14155550199")

        # A manager reached by the SIP template.
        await h.contacts.put("+14155550188", {"manager": "boris"}, set_by="admin")
        await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
        status, text = await post(http, h, MISSED[0])
        assert _dial(text)[1:] == ("Sip", sample[2], "sip:102@example.sip.twilio.com")

        # A store slower than the deadline: the default, in time, and the call is still stored.
        async with h.store._read_lock:  # every read waits: a stalled disk
            started = asyncio.get_running_loop().time()
            status, text = await post(http, h, ANSWERED[0])
            assert (status, _dial(text)[3]) == (200, "+14155550199")
            assert asyncio.get_running_loop().time() - started < 2.0
    rows = await h.store.read("SELECT dedup_key FROM webhook_inbox ORDER BY dedup_key")
    assert rows == [("voice|CAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",), ("voice|CAcccccccccccccccccccccccccccccccc",)]


async def test_after_hours_and_unavailable_managers_get_the_default(h: Harness) -> None:
    await h.contacts.put("+14155550123", {"manager": "anna"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    async with aiohttp.ClientSession() as http:
        async with tab(h, "anna"):
            status, text = await post(http, h, ANSWERED[0])  # 21:15 in Moscow: shop A is closed
            assert (status, _dial(text)[3]) == (200, "+14155550199")
        assert isinstance(h.clock, FakeClock)
        h.clock.now = NOON
        status, text = await post(http, h, ANSWERED[0])  # open, but anna is not connected
        assert (status, _dial(text)[3]) == (200, "+14155550199")


async def test_dial_action_replies(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        status, text = await post(http, h, ANSWERED[5])  # anna answered: the call ends when she hangs up
        assert (status, ElementTree.fromstring(text.encode()).tag, len(ElementTree.fromstring(text.encode()))) == (
            200, "Response", 0)
        # The manager did not answer: on to the default, whose own action ends in voicemail.
        name = MISSED[2]
        url = f"{PUBLIC}/dial-action?then=default"
        status, text = await post(http, h, name, signature=sign(url, body(name)), path="dial-action?then=default")
        assert status == 200
        dial, noun, _, endpoint = _dial(text)
        assert (dial["action"], noun, endpoint) == (f"{PUBLIC}/dial-action", "Number", "+14155550199")
        status, text = await post(http, h, name)
        assert (status, text) == (200, VOICEMAIL)


# -- restart ------------------------------------------------------------------------------------


async def test_a_request_stored_but_not_processed_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    # The first process stores and acknowledges, and dies before it processes anything.
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=TWILIO,
                       consume_webhooks=False) as h:
        async with aiohttp.ClientSession() as http:
            for name in MISSED:
                assert (await post(http, h, name))[0] == 200
        assert h.records == []
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=TWILIO) as again:
        await again.webhooks.idle()
        await again.gateway.drain()
        (record,) = again.records
        assert (record.outcome, record.rang, record.reason) == ("missed", ("101",), "noanswer")
        pending = await again.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0")
        assert pending[0][0] == 0
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        assert [r.call_id for r in await store.calls()] == ["twilio:main:CAcccccccccccccccccccccccccccccccc"]
    finally:
        await store.close()
