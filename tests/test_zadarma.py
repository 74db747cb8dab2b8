"""Zadarma through the whole gateway: the real aiohttp app, signed sample
bodies (tests/webhook_samples, from shared/webhooks), the inbox on SQLite,
the core, pops on the websocket, leads and missed-call tasks."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from crm_bridge.store import Store
from gateway.config import Secret, WebhookAccount, WebhooksConfig
from gateway.numberplan import PlanBook
from gateway.record import CallRecord
from tests.harness import Harness
from tests.test_hub import FakeClock, tab
from tests.test_numberplan import example_plan

SAMPLES = Path(__file__).parent / "webhook_samples"
SECRET = "test-zadarma-secret-0123456789ab"
ZADARMA = WebhooksConfig(accounts=(WebhookAccount("zadarma", "main", {"secret": Secret(SECRET)}),))
MSK = ZoneInfo("Europe/Moscow")
# The samples' calls happen on Monday 2026-03-02 around 10:15 Moscow time; the
# gateway's clock (the time it receives each request) is set just after them.
SAMPLE_DAY = datetime(2026, 3, 2, 10, 17, tzinfo=MSK).timestamp()


def sample_clock() -> FakeClock:
    clock = FakeClock()
    clock.now = SAMPLE_DAY
    return clock

ANSWERED = ["zadarma_notify_start__inbound_answered", "zadarma_notify_internal__inbound_answered",
            "zadarma_notify_answer__inbound_answered", "zadarma_notify_end__inbound_answered",
            "zadarma_notify_record__inbound_answered"]
MISSED = ["zadarma_notify_start__inbound_missed", "zadarma_notify_internal__inbound_missed_ext101",
          "zadarma_notify_internal__inbound_missed_ext102", "zadarma_notify_end__inbound_missed"]
OUTBOUND = ["zadarma_notify_out_start__outbound", "zadarma_notify_out_end__outbound",
            "zadarma_notify_record__outbound"]


def expected_signatures() -> dict[str, str]:
    """File -> signature, from the samples' README (computed by the spec's own tool, not by us)."""
    text = (SAMPLES / "README.md").read_text()
    return {m[1].removesuffix(".txt"): m[2]
            for m in re.finditer(r"^\| `(zadarma_[^`]+\.txt)` \| zadarma \|.*\| `([^`]+)` \|$", text, re.M)}


SIGNATURES = expected_signatures()


def body(name: str) -> bytes:
    return (SAMPLES / f"{name}.txt").read_bytes().rstrip(b"\n")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA) as harness:
        yield harness


async def post(http: aiohttp.ClientSession, h: Harness, name: str, *, data: bytes | None = None,
               signature: str | None = None, account: str = "main") -> tuple[int, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "Signature": signature if signature is not None else SIGNATURES[name]}
    async with http.post(f"{h.url}/webhooks/zadarma/{account}", data=data if data is not None else body(name),
                         headers=headers) as response:
        return response.status, await response.text()


async def deliver(h: Harness, names: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        for name in names:
            status, text = await post(http, h, name)
            assert status == 200, (name, text)
    await h.webhooks.idle()
    await h.gateway.drain()


def test_every_sample_has_its_expected_signature() -> None:
    assert len(SIGNATURES) == 13 and set(ANSWERED + MISSED + OUTBOUND) <= set(SIGNATURES)


async def test_each_sample_is_accepted_and_refused_with_one_byte_changed(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        for name in sorted(SIGNATURES):
            good = body(name)
            for flip in (good.index(b"call_start=") + 13 if b"call_start=" in good else len(good) - 2,):
                bad = good[:flip] + bytes([good[flip] ^ 0x01]) + good[flip + 1:]
                status, text = await post(http, h, name, data=bad)
                assert (status, '"bad_signature"' in text) == (401, True), (name, text)
            sig = SIGNATURES[name]
            status, _ = await post(http, h, name, signature=sig[:-3] + ("A" if sig[-3] != "A" else "B") + sig[-2:])
            assert status == 401, name
            status, text = await post(http, h, name)
            assert status == 200, (name, text)
    rows = await h.store.read("SELECT count(*) FROM webhook_inbox")
    assert rows[0][0] == len(SIGNATURES)  # every accepted sample once, none of the refused ones


async def test_echo_and_bad_requests(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{h.url}/webhooks/zadarma/main?zd_echo=a1b2c3") as response:
            assert (response.status, await response.text()) == (200, "a1b2c3")
        assert (await post(http, h, ANSWERED[0], account="other"))[0] == 404
        assert (await post(http, h, ANSWERED[0], signature=""))[0] == 401
        status, text = await post(http, h, ANSWERED[0], data=b"event=NOTIFY_START&pbx_call_id=x")
        assert status == 400 and "without caller_id" in text
        big = b"event=NOTIFY_START&x=" + b"a" * 70_000
        assert (await post(http, h, ANSWERED[0], data=big))[0] == 413
    assert (await h.store.read("SELECT count(*) FROM webhook_inbox"))[0][0] == 0


def _times(record: CallRecord) -> tuple[Any, ...]:
    return (record.started_at, record.answered_at, record.ended_at, record.ring_seconds, record.talk_seconds)


async def test_inbound_answered_pops_logs_and_makes_a_lead(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        await deliver(h, ANSWERED[:2])
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == "+79990001122" and pop["call_id"] == "zadarma:main:in_6a1f0c9e2d4b"
        await deliver(h, ANSWERED[2:])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "ended")
    (record,) = h.records
    assert (record.direction, record.outcome, record.answered_by, record.rang, record.talked) == (
        "inbound", "answered", "101", ("101",), ("101",))
    assert (record.customer, record.dialled, record.shop, record.channel) == ("+79990001122", "+74950000100", "A",
                                                                             "unknown")
    assert record.started_at == datetime(2026, 3, 2, 10, 15, 7, tzinfo=MSK).timestamp()
    assert record.talk_seconds == 94 and record.recording_path == "zadarma://main/1772435707.2981"
    contact = await h.contacts.get("+79990001122")
    assert contact is not None and (contact.status, contact.manager) == ("lead", "anna")
    assert await h.followup.tasks.find(status="all") == []


async def test_inbound_missed_opens_a_task_and_outbound_closes_it(h: Harness) -> None:
    await deliver(h, MISSED)
    (missed,) = h.records
    assert (missed.outcome, missed.rang, missed.answered_by, missed.reason) == (
        "abandoned", ("101", "102"), None, "caller_hung_up")  # disposition "cancel": the caller gave up
    (task,) = await h.followup.tasks.find()
    assert (task.phone, task.owner, task.attempts) == ("+79990005566", "anna", 1)
    assert isinstance(h.clock, FakeClock)
    h.clock.now = datetime(2026, 3, 2, 12, 31, 0, tzinfo=MSK).timestamp()  # the outbound call ends at 12:31
    await deliver(h, OUTBOUND)
    outbound = h.records[-1]
    assert (outbound.direction, outbound.caller, outbound.dialled, outbound.outcome, outbound.talk_seconds) == (
        "outbound", "101", "+79990003344", "answered", 41)
    assert outbound.recording_path == "zadarma://main/1772443800.3107"
    assert (outbound.started_at, outbound.ended_at) == (datetime(2026, 3, 2, 12, 30, tzinfo=MSK).timestamp(),
                                                        h.clock.now)
    assert [t.status for t in await h.followup.tasks.find(status="all")] == ["open"]  # another number


@pytest.mark.parametrize("flow", [ANSWERED, MISSED, OUTBOUND], ids=["answered", "missed", "outbound"])
async def test_shuffled_and_doubled_deliveries_give_the_same_record(tmp_path: Path, flow: list[str]) -> None:
    async def run(order: list[str], where: Path) -> CallRecord:
        async with Harness(where, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA) as h:
            await deliver(h, order)
            records = await h.store.calls()
        assert len(records) == 1, records
        return records[0]

    in_order = await run(flow, tmp_path / "in-order")
    rng = random.Random(5)
    for n in range(3):
        order = flow + flow
        rng.shuffle(order)
        other = await run(order, tmp_path / f"shuffled-{n}")
        assert other.to_json() == in_order.to_json(), order
        assert _times(other) == _times(in_order)


async def test_routing_reply_names_the_assigned_manager_within_the_deadline(h: Harness) -> None:
    start = body(ANSWERED[0])
    await h.contacts.put("+79990001122", {"manager": "boris", "name": "ACME VIP"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    async with aiohttp.ClientSession() as http, tab(h, "boris"):
        status, text = await post(http, h, ANSWERED[0], data=start)
        assert (status, text) == (200, '{"redirect": "102", "return_timeout": 20, "caller_name": "ACME VIP"}')
        # An unknown caller: no routing; the PBX follows its own scenario.
        status, text = await post(http, h, MISSED[0])
        assert (status, text) == (200, "")
        # A store slower than the deadline: no route, and the event is still stored.
        async with h.store._read_lock:  # every read waits: a stalled disk
            started = asyncio.get_running_loop().time()
            status, text = await post(http, h, ANSWERED[0], data=start)
            assert (status, text) == (200, "")
            assert asyncio.get_running_loop().time() - started < 2.0
    rows = await h.store.read("SELECT dedup_key FROM webhook_inbox")
    assert len(rows) == 2  # the start was delivered twice: one row


async def test_a_request_stored_but_not_processed_is_rebuilt_after_a_restart(tmp_path: Path) -> None:
    # The first process stores and acknowledges, and dies before it processes anything.
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA,
                       consume_webhooks=False) as h:
        async with aiohttp.ClientSession() as http:
            for name in MISSED:
                assert (await post(http, h, name))[0] == 200
        assert h.records == []
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=ZADARMA) as again:
        await again.webhooks.idle()
        await again.gateway.drain()
        (record,) = again.records
        assert (record.outcome, record.rang) == ("abandoned", ("101", "102"))
        pending = await again.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0")
        assert pending[0][0] == 0
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        assert [r.call_id for r in await store.calls()] == ["zadarma:main:in_7b2e1d0f3c5a"]
    finally:
        await store.close()


async def test_a_call_whose_end_never_comes_is_ended_as_interrupted(h: Harness) -> None:
    assert isinstance(h.clock, FakeClock)
    h.clock.now = datetime(2026, 3, 2, 11, 2, 45, tzinfo=MSK).timestamp()  # the missed sample rings at 11:02:40
    heard = h.clock.now
    async with tab(h, "anna") as anna:
        await deliver(h, MISSED[:2])  # START and the ring of 101; NOTIFY_END is lost
        await anna.until(lambda f: f["type"] == "pop")
        h.clock.now += 3 * 3600
        assert await h.webhooks.sweep() == 0  # three hours of silence: maybe still a long call
        h.clock.now += 3600
        assert await h.webhooks.sweep() == 1
        await h.gateway.drain()
        gone = await anna.until(lambda f: f["type"] == "withdraw")  # no ghost pop left on her page
        assert (gone["call_id"], gone["reason"]) == ("zadarma:main:in_7b2e1d0f3c5a", "stopped_ringing")
    (record,) = h.records
    assert (record.interrupted, record.outcome, record.rang) == (True, "missed", ("101",))
    assert record.ended_at == heard  # when the provider was last heard of
    pending = await h.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0")
    assert pending[0][0] == 0
