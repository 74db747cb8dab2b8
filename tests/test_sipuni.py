"""Sipuni through the whole gateway: the real aiohttp app, the sample events
(tests/webhook_samples, from shared/webhooks) sent by GET and by POST to the
account's secret URL, the inbox on SQLite, the core, pops on the websocket,
leads and missed-call tasks."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from yarl import URL

from connectors.sipuni import SipuniConnector
from connectors.webhook import Account, Request
from crm_bridge.store import Store
from gateway.config import Secret, WebhookAccount, WebhooksConfig
from gateway.numberplan import PlanBook
from gateway.record import CallRecord
from tests.harness import Harness
from tests.test_hub import QUIET, FakeClock, tab
from tests.test_numberplan import example_plan

SAMPLES = Path(__file__).parent / "webhook_samples"
TOKEN = "sipuni-url-token-0123456789abcdef"  # Sipuni signs nothing: the secret is in the URL
SIPUNI = WebhooksConfig(accounts=(
    WebhookAccount("sipuni", "main", {"url_token": Secret(TOKEN)}),
    WebhookAccount("sipuni", "office", {"url_token": Secret(TOKEN)}, allowed_ips=("192.0.2.0/24",)),
    WebhookAccount("sipuni", "weak", {"url_token": Secret("short")}),
))
MSK = ZoneInfo("Europe/Moscow")
# The samples' calls happen on Monday 2026-03-02 from 10:15 Moscow time (shop A
# is open 09:00-21:00); the gateway's clock is set just after the first one.
SAMPLE_DAY = datetime(2026, 3, 2, 10, 17, tzinfo=MSK).timestamp()

ANSWERED = ["sipuni_event_1_call__inbound_answered", "sipuni_event_3_answer__inbound_answered",
            "sipuni_event_2_hangup__inbound_answered"]
MISSED = ["sipuni_event_2_hangup__inbound_missed"]
OUTBOUND = ["sipuni_event_2_hangup__outbound"]


def sample_clock() -> FakeClock:
    clock = FakeClock()
    clock.now = SAMPLE_DAY
    return clock


def readme_rows() -> dict[str, tuple[str, str]]:
    """Sipuni's rows of the samples' README: file -> (notes, expected signature)."""
    text = (SAMPLES / "README.md").read_text()
    return {m[1].removesuffix(".txt"): (m[2], m[3])
            for m in re.finditer(r"^\| `(sipuni_[^`]+\.txt)` \| sipuni \| (.*) \| `([^`]+)` \|$", text, re.M)}


ROWS = readme_rows()


def query(name: str) -> str:
    return (SAMPLES / f"{name}.txt").read_text().rstrip("\n")


def edited(name: str, **changes: str) -> str:
    """A sample with some fields changed (for cases the samples do not show)."""
    fields = dict(parse_qsl(query(name), keep_blank_values=True))
    fields.update(changes)
    return urlencode(fields)


def abandoned_flow() -> list[str]:
    """Not in the samples: two extensions ring, the caller hangs up (status CANCEL)."""
    base = dict(call_id="1772439000.118950", src_num="79990007788", user_id="015856")
    ring = [edited(ANSWERED[0], **base, dst_num=f"015856110{n}", short_dst_num=f"10{n}", timestamp="1772439000")
            for n in (1, 2)]
    return ring + [edited(MISSED[0], **base, status="CANCEL", call_start_timestamp="1772439000",
                          timestamp="1772439012")]


TRANSFER_AT = 1772440000


def transfer_flow() -> list[str]:
    """Not in the samples: 101 answers and transfers to 102 (event 4 ends 101's leg)."""
    t = TRANSFER_AT
    base = dict(call_id=f"{t}.1", src_num="79990009900", src_type="1", dst_type="2", user_id="015856")
    ext = {n: dict(dst_num=f"015856110{n}", short_dst_num=f"10{n}") for n in (1, 2)}
    return [urlencode(dict(base, event="1", timestamp=str(t), **ext[1])),
            urlencode(dict(base, event="3", timestamp=str(t + 5), **ext[1])),
            urlencode(dict(base, event="1", timestamp=str(t + 60), transfer_from="101", **ext[2])),
            urlencode(dict(base, event="4", timestamp=str(t + 70), status="ANSWER", **ext[1])),
            urlencode(dict(base, event="3", timestamp=str(t + 70), **ext[2])),
            urlencode(dict(base, event="2", timestamp=str(t + 200), status="ANSWER", call_start_timestamp=str(t),
                           call_answer_timestamp=str(t + 5), last_called="101&102", **ext[2]))]


ABANDONED, TRANSFER = abandoned_flow(), transfer_flow()


def msk(hour: int, minute: int, second: int) -> float:
    return datetime(2026, 3, 2, hour, minute, second, tzinfo=MSK).timestamp()


def harness(where: Path, config: WebhooksConfig = SIPUNI, **kwargs: Any) -> Harness:
    return Harness(where, plans=PlanBook(example_plan()), clock=sample_clock(), webhooks=config, **kwargs)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as running:
        yield running


async def send(http: aiohttp.ClientSession, h: Harness, fields: str, *, method: str = "GET",
               token: str | None = TOKEN, account: str = "main", body: bytes | None = None) -> tuple[int, Any]:
    """One event as Sipuni sends it: GET with the query string as is, or POST with it as the body."""
    url = f"{h.url}/webhooks/sipuni/{account}" + (f"/{token}" if token is not None else "")
    if method == "GET":
        async with http.get(URL(f"{url}?{fields}" if fields else url, encoded=True)) as response:
            return response.status, await response.json()
    async with http.post(URL(url, encoded=True), data=body if body is not None else fields.encode(),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}) as response:
        return response.status, await response.json()


async def deliver(h: Harness, events: list[str], *, methods: list[str] | None = None) -> None:
    """Events (sample names or query strings), each answered success, then processed."""
    async with aiohttp.ClientSession() as http:
        for n, event in enumerate(events):
            fields = query(event) if event.startswith("sipuni_") else event
            method = methods[n % len(methods)] if methods else "GET"
            assert await send(http, h, fields, method=method) == (200, {"success": True}), event
    await h.webhooks.idle()
    await h.gateway.drain()


async def inbox_rows(h: Harness) -> list[tuple[Any, ...]]:
    rows = await h.store.read("SELECT path, query, body, dedup_key, call_key FROM webhook_inbox ORDER BY inbox_id")
    return [tuple(row) for row in rows]


def _times(record: CallRecord) -> tuple[Any, ...]:
    return (record.started_at, record.answered_at, record.ended_at, record.ring_seconds, record.talk_seconds)


# -- the URL token -------------------------------------------------------------------


def test_the_readme_lists_every_sipuni_sample_and_no_signature() -> None:
    on_disk = {p.stem for p in SAMPLES.glob("sipuni_*.txt")}
    assert set(ROWS) == on_disk == set(ANSWERED + MISSED + OUTBOUND)
    for notes, signature in ROWS.values():
        assert signature == "-" and "secret path token" in notes  # what this connector checks instead


async def test_each_sample_is_accepted_with_the_url_token_and_refused_without_it(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    wrong = [TOKEN[:5] + chr(ord(TOKEN[5]) ^ 0x01) + TOKEN[6:], TOKEN[:-1], TOKEN + "0", TOKEN.upper(), ""]
    async with aiohttp.ClientSession() as http:
        for name in sorted(ROWS):
            for method in ("GET", "POST"):
                for token in [*wrong, None]:
                    status, answer = await send(http, h, query(name), method=method, token=token)
                    assert (status, answer["success"], answer["error"]) == (401, False, "bad_token"), (name, token)
            assert await send(http, h, query(name)) == (200, {"success": True}), name
            assert await send(http, h, query(name), token=TOKEN + "/") == (200, {"success": True}), name
            assert await send(http, h, query(name), method="POST") == (200, {"success": True}), name  # a repeat
    rows = await inbox_rows(h)
    assert len(rows) == len(ROWS)  # every sample once, none of the refused ones
    for (path, stored_query, body, _, _), name in zip(rows, sorted(ROWS)):
        # The GET kept its query string exactly as sent; the token is not kept.
        assert (path, stored_query, bytes(body)) == ("", query(name), b"")
    assert not any(TOKEN in str(column) for row in rows for column in row)
    assert "bad_token" not in caplog.text and "URL token is wrong or missing" in caplog.text  # refusals logged
    assert TOKEN[:12].lower() not in caplog.text.lower()  # ...without the token, right or wrong


async def test_bad_requests_are_refused_and_nothing_is_stored(h: Harness) -> None:
    sample = query(ANSWERED[0])
    async with aiohttp.ClientSession() as http:
        assert (await send(http, h, sample, account="other"))[0] == 404
        assert (await send(http, h, sample, account="office"))[0] == 403  # 127.0.0.1 is not in allowed_ips
        status, answer = await send(http, h, sample, account="weak", token="short")
        assert (status, answer["error"]) == (401, "bad_token")  # a short token is as good as none
        big = b"event=1&call_id=1&timestamp=1&x=" + b"a" * 70_000
        assert (await send(http, h, "", method="POST", body=big))[0] == 413
        for fields, body, reason in [
            ("", b"event=1&call_id=\xff&timestamp=1", "the body is not UTF-8"),
            ("event=1&call_id=%FF&timestamp=1", None, "a %-escape is not UTF-8"),
            ("call_id=1772435707.118822&timestamp=1772435707", None, "no event field"),
            ("event=1&src_num=79990001122&timestamp=1772435707", None, "event 1 without call_id"),
            ("event=3&call_id=1&timestamp=2026-03-02+10:15:07", None, "event 3: timestamp is not unix seconds"),
            ("event=2&call_id=1&timestamp=1&call_start_timestamp=%C2%B2", None,
             "event 2: call_start_timestamp is not unix seconds"),
            ("event=2&call_id=1&timestamp=1772435707000", None, "event 2: timestamp is not unix seconds"),
        ]:
            status, answer = await send(http, h, fields, method="POST" if body else "GET", body=body)
            assert (status, answer["success"], answer["message"]) == (400, False, reason), fields
        # Answered success (or Sipuni stops sending) but not kept: an event this
        # gateway does not use, and an empty request (a check of the URL).
        assert await send(http, h, "event=7&call_id=1&timestamp=1") == (200, {"success": True})
        assert await send(http, h, "") == (200, {"success": True})
        assert await send(http, h, "", method="POST") == (200, {"success": True})
    assert await inbox_rows(h) == []


async def test_an_event_that_cannot_be_stored_is_answered_503_so_sipuni_sends_it_again(h: Harness) -> None:
    await h.store.close()  # the disk is gone
    async with aiohttp.ClientSession() as http:
        status, answer = await send(http, h, query(ANSWERED[0]))
    assert (status, answer["success"], answer["error"]) == (503, False, "store_unavailable")


# -- the flows of the samples --------------------------------------------------------


async def test_inbound_answered_pops_logs_and_makes_a_lead(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await deliver(h, ANSWERED[:1])
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == "+79990001122"
        assert pop["call_id"] == "sipuni:main:1772435707.118822"
        await deliver(h, ANSWERED[1:2])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "talking")
        assert h.records == []  # live until its hangup
        await deliver(h, ANSWERED[2:])
        await anna.until(lambda f: f["type"] == "update" and f["state"] == "ended")
        assert [f for f in await boris.quiet(QUIET) if f["type"] == "pop"] == []  # his phone did not ring
    (record,) = h.records
    assert (record.direction, record.outcome, record.answered_by, record.rang, record.talked) == (
        "inbound", "answered", "101", ("101",), ("101",))
    # The events name the agent's extension, not the DID: the plan's default line.
    assert (record.customer, record.dialled, record.shop, record.channel) == ("+79990001122", None, "A", "unknown")
    assert _times(record) == (msk(10, 15, 7), msk(10, 15, 21), msk(10, 16, 55), 14, 94)
    assert record.recording_path == "sipuni://main/https://sipuni.example.invalid/record/abc.mp3"
    contact = await h.contacts.get("+79990001122")
    assert contact is not None and (contact.status, contact.manager) == ("lead", "anna")
    assert await h.followup.tasks.find(status="all") == []


async def test_inbound_missed_opens_a_task_and_a_call_back_closes_it(h: Harness) -> None:
    await deliver(h, MISSED)
    (missed,) = h.records
    assert (missed.direction, missed.outcome, missed.rang, missed.answered_by) == ("inbound", "missed", (), None)
    assert (missed.customer, missed.dialled, missed.shop, missed.channel) == ("+79990005566", "+74950000100", "A",
                                                                              "unknown")
    assert _times(missed) == (msk(11, 2, 40), None, msk(11, 3, 7), 27, 0)
    assert missed.recording_path is None  # call_record_link is empty
    contact = await h.contacts.get("+79990005566")
    assert contact is not None and contact.status == "lead"
    (task,) = await h.followup.tasks.find()
    assert (task.phone, task.owner) == ("+79990005566", "anna")  # shop A's default owner
    assert isinstance(h.clock, FakeClock)
    h.clock.now = msk(12, 31, 0)
    await deliver(h, OUTBOUND)
    outbound = h.records[-1]
    assert (outbound.direction, outbound.caller, outbound.dialled, outbound.customer, outbound.outcome) == (
        "outbound", "101", "+79990003344", "+79990003344", "answered")
    assert (outbound.answered_by, outbound.rang, outbound.talked) == (None, (), ())  # the agent is its caller
    assert _times(outbound) == (msk(12, 30, 0), msk(12, 30, 9), msk(12, 30, 50), 9, 41)
    assert outbound.recording_path == "sipuni://main/https://sipuni.example.invalid/record/def.mp3"
    assert [t.status for t in await h.followup.tasks.find(status="all")] == ["open"]  # another number
    # The agent calls the missed customer back (Sipuni writes his number with 8...): the task closes.
    await deliver(h, [edited(OUTBOUND[0], call_id="1772443900.119020", dst_num="89990005566")])
    assert h.records[-1].customer == "+79990005566"
    assert [t.status for t in await h.followup.tasks.find(status="all")] != ["open"]


async def test_an_outbound_call_not_answered_failed_or_was_busy(h: Harness) -> None:
    unanswered = dict(call_answer_timestamp="0", call_record_link="")
    await deliver(h, [edited(OUTBOUND[0], call_id="1772443800.2", status="NOANSWER", **unanswered),
                      edited(OUTBOUND[0], call_id="1772443800.3", status="BUSY", **unanswered)])
    noanswer, busy = sorted(await h.store.calls(), key=lambda r: r.call_id)
    assert (noanswer.direction, noanswer.outcome, noanswer.reason, noanswer.dialled) == (
        "outbound", "failed", "noanswer", "+79990003344")
    assert (busy.outcome, busy.reason, busy.talk_seconds, busy.ring_seconds) == ("busy", "busy", 0, 50)


async def test_a_caller_who_hangs_up_while_two_extensions_ring_abandoned_the_call(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await deliver(h, ABANDONED[:2])
        for agent in (anna, boris):
            await agent.until(lambda f: f["type"] == "pop")
        await deliver(h, ABANDONED[2:])
        for agent in (anna, boris):
            withdraw = await agent.until(lambda f: f["type"] == "withdraw")
            assert withdraw["reason"] == "caller_hung_up"
    (record,) = h.records
    assert (record.outcome, record.reason, record.rang, record.ring_seconds) == (
        "abandoned", "caller_hung_up", ("101", "102"), 12)
    (task,) = await h.followup.tasks.find()
    assert task.phone == "+79990007788"


async def test_a_transfer_keeps_one_record_with_both_agents(h: Harness) -> None:
    t = TRANSFER_AT
    await deliver(h, TRANSFER[::-1])  # the end first: the record is rebuilt as the rest comes in
    (record,) = await h.store.calls()
    assert (record.outcome, record.answered_by, record.rang, record.talked) == (
        "answered", "101", ("101", "102"), ("101", "102"))
    assert (record.started_at, record.answered_at, record.ended_at) == (t, t + 5, t + 200)


async def test_the_account_number_option_gives_answered_calls_their_line(tmp_path: Path) -> None:
    config = WebhooksConfig(accounts=(WebhookAccount("sipuni", "main", {"url_token": Secret(TOKEN)},
                                                     options={"number": "84950000003"}),))
    async with harness(tmp_path, config) as h:
        await deliver(h, ANSWERED + MISSED)
        answered, missed = sorted(h.records, key=lambda r: r.started_at)
    assert (answered.dialled, answered.shop, answered.channel) == ("+74950000003", "A", "yandex")
    assert (missed.dialled, missed.channel) == ("+74950000100", "unknown")  # the event names its DID: it wins


@pytest.mark.parametrize("flow", [ANSWERED, MISSED, OUTBOUND, ABANDONED, TRANSFER],
                         ids=["answered", "missed", "outbound", "abandoned", "transfer"])
async def test_shuffled_and_doubled_deliveries_give_the_same_record(tmp_path: Path, flow: list[str]) -> None:
    async def run(order: list[str], where: Path) -> CallRecord:
        async with harness(where) as h:
            await deliver(h, order)
            records = await h.store.calls()
        assert len(records) == 1, records
        return records[0]

    in_order = await run(flow, tmp_path / "in-order")
    rng = random.Random(7)
    for n in range(4):
        order = flow + flow
        rng.shuffle(order)
        other = await run(order, tmp_path / f"shuffled-{n}")
        assert other.to_json() == in_order.to_json(), order
        assert _times(other) == _times(in_order)


@pytest.mark.parametrize("flow", [ANSWERED, ABANDONED, TRANSFER], ids=["answered", "abandoned", "transfer"])
def test_the_events_of_a_call_do_not_depend_on_arrival_order(flow: list[str]) -> None:
    connector = SipuniConnector([Account("main", {"url_token": TOKEN}, "https://gw.example.com/webhooks/sipuni/main")])
    fields = [query(event) if event.startswith("sipuni_") else event for event in flow]
    orders = list(itertools.permutations(fields))
    results = {tuple(connector.call_events("main", [Request("", q, b"", SAMPLE_DAY + n) for n, q in enumerate(order)]))
               for order in orders}
    assert len(orders) > 1 and len(results) == 1


async def test_get_and_post_deliveries_give_the_same_record(tmp_path: Path) -> None:
    records = {}
    for methods in (["GET"], ["POST"], ["POST", "GET"]):
        async with harness(tmp_path / "-".join(methods)) as h:
            await deliver(h, ANSWERED + ANSWERED, methods=methods)  # each event by both when mixed
            rows = await inbox_rows(h)
            assert len(rows) == len(ANSWERED)  # GET and POST of one event: one key
            (record,) = await h.store.calls()
        records["-".join(methods)] = record.to_json()
        if methods == ["POST"]:
            assert [(r[1], bytes(r[2])) for r in rows] == [("", query(name).encode()) for name in ANSWERED]
    assert records["GET"] == records["POST"] == records["POST-GET"]
    assert records["GET"]["outcome"] == "answered"


# -- routing: Sipuni has none --------------------------------------------------------


async def test_the_reply_carries_no_routing_and_never_waits_for_it(h: Harness) -> None:
    # A known caller whose manager (boris) is connected and within shop A's hours:
    # Sipuni has no routing callback, so the reply is the bare success and the
    # call rings whoever Sipuni's scenario rings (anna).
    await h.contacts.put("+79990001122", {"manager": "boris", "name": "ACME VIP"}, set_by="admin")
    await h.store.write(("UPDATE contacts SET last_call_at = ?", (h.clock() - 86400,)))
    async with aiohttp.ClientSession() as http, tab(h, "boris") as boris, tab(h, "anna") as anna:
        decision = await h.router.decide("+79990001122", None)
        assert (decision.reason, decision.extension) == ("assigned_manager", "102")  # routing would pick boris
        async with h.store._read_lock:  # every read waits (a stalled disk): the reply does not
            started = asyncio.get_running_loop().time()
            assert await send(http, h, query(ANSWERED[0])) == (200, {"success": True})
            assert asyncio.get_running_loop().time() - started < 2.0
        assert await send(http, h, query(MISSED[0])) == (200, {"success": True})  # an unknown caller
        await h.webhooks.idle()
        await anna.until(lambda f: f["type"] == "pop")
        assert [f for f in await boris.quiet(QUIET) if f["type"] == "pop"] == []
    assert len(await inbox_rows(h)) == 2


# -- restart ---------------------------------------------------------------------------


async def test_requests_stored_but_not_processed_are_rebuilt_after_a_restart(tmp_path: Path) -> None:
    # The first process stores and acknowledges, and dies before it processes anything.
    async with harness(tmp_path, consume_webhooks=False) as h:
        async with aiohttp.ClientSession() as http:
            for name in ANSWERED:
                assert await send(http, h, query(name), method="POST") == (200, {"success": True})
        assert h.records == []
    async with harness(tmp_path) as again:
        await again.webhooks.idle()
        await again.gateway.drain()
        (record,) = again.records
        assert (record.outcome, record.answered_by, record.talk_seconds) == ("answered", "101", 94)
        pending = await again.store.read("SELECT count(*) FROM webhook_inbox WHERE done = 0")
        assert pending[0][0] == 0
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        assert [r.call_id for r in await store.calls()] == ["sipuni:main:1772435707.118822"]
    finally:
        await store.close()
