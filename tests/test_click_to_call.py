"""Click-to-call end to end: ``POST /api/calls`` through the real link to the
in-process AMI server, which records the Originate it receives.

The Originate must be the captured one (g_click_to_call) with the gateway's
call id and the right shop's caller ID; a request id is placed once however
often, and however concurrently, it is sent, also across a restart; a refused
Originate or a link that is down reaches the agent as an error, and the
request stays failed; the call the PBX then makes is recorded as outbound with
the request's shop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.ami.codec import AmiCodec, AmiMessage
from connectors.ami.dialer import OriginateError, caller_id_text
from connectors.ami.scenarios import CallFactory
from gateway.click_to_call import REFUSED, UNAVAILABLE, UNCERTAIN
from gateway.numberplan import PlanBook
from tests.conftest import CAPTURES
from tests.harness import Harness
from tests.test_hub import running
from tests.test_numberplan import example_plan
from tests.test_web_api import call, log_in

CUSTOMER = "+79161110007"
SHOP_A, SHOP_B = "+74950000001", "+74950000002"  # the reference plan's caller IDs


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def plan() -> PlanBook:
    return PlanBook(example_plan())


async def place(http: aiohttp.ClientSession, h: Harness, cookie: str | None, **body: Any) -> tuple[int, Any]:
    return await call(http, h, "POST", "/api/calls", cookie, json=body)


async def rows(h: Harness) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in await h.store.read(
        "SELECT login, request_id, call_id, number, shop, caller_id, status, error_code, error "
        "FROM click_to_call ORDER BY created_at")]


async def customer_called(h: Harness, caller: str, did: str, count: int) -> None:
    """The customer calls ``did`` (shop by the plan); wait for its record."""
    await h.ami.play(CallFactory().direct_answered(caller, "Иван Петров", did, "102"), speed=0)
    await h.wait_records(count)
    await h.gateway.drain()


def captured_originate() -> AmiMessage:
    """The Originate a real gateway sent in the g_click_to_call capture."""
    codec = AmiCodec()
    codec.receive_data((CAPTURES / "g_click_to_call.sent").read_bytes())
    return next(m for m in codec.messages() if m.get("Action") == "Originate")


# -- the Originate ------------------------------------------------------------------------


async def test_the_originate_is_the_captured_one_with_our_call_id_and_the_shops_number(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        await h.contacts.put(CUSTOMER, {"name": 'Иван "Ваня"\r\nПетров'}, set_by="admin")
        cookie = await log_in(http, h, "anna")
        status, body = await place(http, h, cookie, number="8 (916) 111-00-07", request_id="req-42")

        assert status == 201, body
        assert body["call_id"].startswith("c2c-") and len(body["call_id"]) == 36
        assert body == {"call_id": body["call_id"], "request_id": "req-42", "status": "placed",
                        "number": CUSTOMER, "shop": "A", "caller_id": SHOP_A}  # no calls yet: the default shop
        (originate,) = h.ami.originates
        assert {k: v for k, v in originate.items() if k != "ActionID"} == {
            "Action": "Originate",
            "Channel": "PJSIP/101",  # anna's phone rings first
            "Context": "click-to-call",
            "Exten": CUSTOMER,
            "Priority": "1",
            "CallerID": f'"Иван Ваня Петров" <{CUSTOMER}>',  # what anna's phone shows
            "Timeout": "30000",
            "Async": "true",
            "ChannelId": body["call_id"],
            "Variable": [f"OUTCID={SHOP_A}", "__C2C_REQUEST=req-42"],
            "Account": "click2call",
        }
        assert list(originate) == list(captured_originate())  # the same headers in the same order
        assert await rows(h) == [("anna", "req-42", body["call_id"], CUSTOMER, "A", SHOP_A, "placed", None, None)]


async def test_the_shop_is_the_one_the_customer_last_called(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        await customer_called(h, "89161110007", "+74950000003", 1)  # shop A, long ago
        await customer_called(h, "89161110007", SHOP_B, 2)  # then shop B, written the national way
        cookie = await log_in(http, h, "anna")

        status, body = await place(http, h, cookie, number=CUSTOMER, request_id="r1")
        assert (status, body["shop"], body["caller_id"]) == (201, "B", SHOP_B)
        assert h.ami.originates[-1]["Variable"] == [f"OUTCID={SHOP_B}", "__C2C_REQUEST=r1"]

        status, body = await place(http, h, cookie, number=CUSTOMER, shop="A", request_id="r2")  # the agent's choice
        assert (status, body["shop"], body["caller_id"]) == (201, "A", SHOP_A)
        assert h.ami.originates[-1]["Variable"] == [f"OUTCID={SHOP_A}", "__C2C_REQUEST=r2"]

        status, body = await place(http, h, cookie, number="+79161110099", request_id="r3")  # never called
        assert (status, body["shop"]) == (201, "A")  # the plan's default
        assert len(h.ami.originates) == 3


async def test_bad_requests_are_refused_and_nothing_is_sent(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        anna, olga = await log_in(http, h, "anna"), await log_in(http, h, "olga")
        cases: list[tuple[str | None, dict[str, Any], int, str]] = [
            (anna, {"number": "12", "request_id": "a"}, 400, "bad_number"),  # an extension, not a customer
            (anna, {"number": "not a number", "request_id": "a"}, 400, "bad_number"),
            (anna, {"request_id": "a"}, 400, "bad_number"),
            (anna, {"number": CUSTOMER, "shop": "Z", "request_id": "a"}, 400, "bad_shop"),
            (anna, {"number": CUSTOMER, "shop": 1, "request_id": "a"}, 400, "bad_shop"),
            (anna, {"number": CUSTOMER}, 400, "bad_request_id"),
            (anna, {"number": CUSTOMER, "request_id": "x" * 65}, 400, "bad_request_id"),
            (anna, {"number": CUSTOMER, "request_id": "a\r\nAction: Command"}, 400, "bad_request_id"),
            (olga, {"number": CUSTOMER, "request_id": "a"}, 403, "forbidden"),  # managers do not place calls
            (None, {"number": CUSTOMER, "request_id": "a"}, 401, "login_required"),
        ]
        for cookie, body, expected, error in cases:
            status, answer = await place(http, h, cookie, **body)
            assert (status, answer["error"]) == (expected, error), body
        assert h.ami.originates == [] and await rows(h) == []


def test_the_name_on_the_agents_phone_cannot_break_the_header() -> None:
    assert caller_id_text('A "B" <c>\\\n\x00', CUSTOMER) == f'"A B c" <{CUSTOMER}>'
    assert caller_id_text(None, CUSTOMER) == f'"{CUSTOMER}" <{CUSTOMER}>'
    assert caller_id_text('"" <>', CUSTOMER) == f'"{CUSTOMER}" <{CUSTOMER}>'
    assert caller_id_text("Я" * 100, CUSTOMER) == f'"{"Я" * 40}" <{CUSTOMER}>'


def test_the_ami_dialers_failures_speak_the_dialer_contract() -> None:
    # Connectors do not import the service: the contract is the ``kind`` words.
    assert (OriginateError.REFUSED, OriginateError.UNAVAILABLE, OriginateError.UNCERTAIN) == (
        REFUSED, UNAVAILABLE, UNCERTAIN)


# -- once per request id -------------------------------------------------------------------


async def test_a_repeated_request_id_originates_once(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        anna, boris = await log_in(http, h, "anna"), await log_in(http, h, "boris")
        first = await place(http, h, anna, number=CUSTOMER, request_id="same")
        again = await place(http, h, anna, number=CUSTOMER, request_id="same")
        assert first[0] == 201 and again == (200, first[1])
        assert len(h.ami.originates) == 1

        # Sent many times at once (a double click, a retrying proxy): one call.
        answers = await asyncio.gather(*(place(http, h, anna, number=CUSTOMER, request_id="burst")
                                         for _ in range(8)))
        assert sorted(status for status, _ in answers) == [200] * 7 + [201]
        assert len({body["call_id"] for _, body in answers}) == 1
        assert len(h.ami.originates) == 2

        # A request id is the agent's own: boris's "same" is another call.
        status, body = await place(http, h, boris, number=CUSTOMER, request_id="same")
        assert status == 201 and body["call_id"] != first[1]["call_id"]
        assert h.ami.originates[-1]["Channel"] == "PJSIP/102"
        assert len(h.ami.originates) == 3


async def test_a_request_id_is_not_placed_again_after_a_restart(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        status, first = await place(http, h, await log_in(http, h, "anna"), number=CUSTOMER, request_id="r")
        assert status == 201
    async with running(tmp_path, plans=plan()) as h:  # the same database, a new process and PBX session
        assert await place(http, h, await log_in(http, h, "anna"), number=CUSTOMER, request_id="r") == (200, first)
        assert h.ami.originates == []


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("refusal", ["handler", "read_only_account"])
async def test_a_refused_originate_reaches_the_agent_and_the_request_stays_failed(
        tmp_path: Path, http: aiohttp.ClientSession, refusal: str) -> None:
    async with running(tmp_path, plans=plan()) as h:
        if refusal == "handler":
            h.ami.action_handlers["Originate"] = lambda action: [
                {"Response": "Error", "Message": "Extension does not exist."}]
            said = "Extension does not exist."
        else:
            h.ami.write_allowed = False  # manager.conf without `write = originate`
            said = "Permission denied"
        cookie = await log_in(http, h, "anna")
        status, body = await place(http, h, cookie, number=CUSTOMER, request_id="r")

        assert (status, body) == (502, {"error": "originate_failed", "message": said})
        ((*_, state, code, error),) = await rows(h)
        assert (state, code, error) == ("failed", "originate_failed", said)
        # A retry of the same request gets the same answer; the PBX is not asked again.
        assert await place(http, h, cookie, number=CUSTOMER, request_id="r") == (status, body)
        assert len(h.ami.originates) == 1


async def test_link_down_is_503_and_nothing_is_sent_later(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        cookie = await log_in(http, h, "anna")
        h.ami.close_after_banner = True  # the PBX is there but will not talk to us
        await h.ami.drop_clients()
        for _ in range(200):
            if not h.link.is_connected:
                break
            await asyncio.sleep(0.01)

        status, body = await place(http, h, cookie, number=CUSTOMER, request_id="r")
        assert (status, body["error"]) == (503, "pbx_unavailable")
        ((*_, state, code, _error),) = await rows(h)
        assert (state, code) == ("failed", "pbx_unavailable")

        h.ami.close_after_banner = False
        await h.link.wait_connected(15)
        await h.link.action("Ping", timeout=5)  # the resync is over: anything queued would be out by now
        assert h.ami.originates == []
        assert (await place(http, h, cookie, number=CUSTOMER, request_id="r"))[0] == 503  # that request stays failed
        assert (await place(http, h, cookie, number=CUSTOMER, request_id="r2"))[0] == 201  # a new click works
        assert len(h.ami.originates) == 1


async def test_an_unanswered_originate_is_uncertain_and_not_resent(tmp_path: Path,
                                                                    http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        h.ami.action_handlers["Originate"] = lambda action: []  # queued by the PBX, never confirmed
        cookie = await log_in(http, h, "anna")
        placing = asyncio.create_task(place(http, h, cookie, number=CUSTOMER, request_id="r"))
        for _ in range(500):
            if h.ami.originates:
                break
            await asyncio.sleep(0.01)
        await h.ami.drop_clients()  # the link dies while the Originate waits for its answer
        status, body = await placing
        assert (status, body["error"]) == (504, "originate_uncertain")
        await h.link.wait_connected(15)
        await h.link.action("Ping", timeout=5)
        assert await place(http, h, cookie, number=CUSTOMER, request_id="r") == (status, body)
        assert len(h.ami.originates) == 1


# -- the call's record -----------------------------------------------------------------------


async def test_the_call_is_recorded_as_outbound_with_the_requests_shop(tmp_path: Path,
                                                                       http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        await customer_called(h, CUSTOMER, "+74950000004", 1)  # shop B, channel avito
        status, body = await place(http, h, await log_in(http, h, "anna"), number=CUSTOMER, request_id="r")
        assert (status, body["shop"]) == (201, "B")

        await h.ami.play(CallFactory().click_to_call("101", CUSTOMER, SHOP_B, channel_id=body["call_id"],
                                                     account="click2call"), speed=0)
        records = await h.wait_records(2)
        await h.gateway.drain()
        record = records[-1]
        assert (record.call_id, record.direction, record.caller, record.dialled, record.outcome) == (
            body["call_id"], "outbound", "101", CUSTOMER, "answered")
        assert (record.shop, record.channel) == ("B", "click-to-call")
        stored = {r.call_id: (r.shop, r.channel) for r in await h.store.calls()}
        assert stored[body["call_id"]] == ("B", "click-to-call")
        assert [c.call_id for c in await h.store.calls_of_agent(("101",))][0] == body["call_id"]


async def test_a_call_placed_before_a_restart_still_gets_its_shop(tmp_path: Path,
                                                                  http: aiohttp.ClientSession) -> None:
    async with running(tmp_path, plans=plan()) as h:
        status, body = await place(http, h, await log_in(http, h, "anna"), number=CUSTOMER, shop="B",
                                   request_id="r")
        assert status == 201
    async with running(tmp_path, plans=plan()) as h:  # the call's events reach the new process
        await h.ami.play(CallFactory().click_to_call("101", CUSTOMER, SHOP_B, channel_id=body["call_id"],
                                                     answered=False), speed=0)
        (record,) = await h.wait_records(1)
        await h.gateway.drain()
        assert (record.direction, record.outcome, record.shop, record.channel) == (
            "outbound", "failed", "B", "click-to-call")
        # An outbound call nobody asked the gateway for keeps no shop.
        await h.ami.play(CallFactory().click_to_call("102", CUSTOMER, SHOP_A, channel_id=f"pbx-{time.time()}"),
                         speed=0)
        other = (await h.wait_records(2))[-1]
        assert (other.direction, other.shop, other.channel) == ("outbound", None, None)
