"""Missed calls through the whole gateway: real captures and generated calls
over the AMI server, the store on a SQLite file, the API and the hub.

Calls carry the AMI ``Timestamp`` header (the .jsonl captures' times, or a
time the test chooses for generated calls), so the SLA arithmetic does not
depend on when the test runs. The reference plan (config/example.toml): shop A
(+74950000001, Moscow, 09:00-21:00) gives missed calls to anna within 30
minutes of working time; olga supervises it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from connectors.ami.capture import read_capture
from connectors.ami.codec import AmiMessage
from connectors.ami.scenarios import CallFactory
from crm_bridge.callback_tasks import CallbackTask
from gateway.numberplan import PlanBook
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, Harness
from tests.test_hub import FakeClock, play_until, rings, tab
from tests.test_numberplan import example_plan

MISSED_CALLER = "+79161110002"  # b_missed: rings 101 for 23 s, nobody answers
SHOP_A = "+74950000001"
MSK = ZoneInfo("Europe/Moscow")
# b_missed.jsonl ends at 2026-11-26T23:39:41Z, 02:39 in Moscow: shop A is closed
# until 09:00, so 30 minutes of working time end at 09:30 Moscow time.
B_MISSED_DUE = datetime(2026, 11, 27, 9, 30, tzinfo=MSK).timestamp()


def jsonl_stream(name: str) -> bytes:
    """A .jsonl capture's events as AMI bytes, each stamped with its capture time."""
    return b"".join(m for m in read_capture(CAPTURES / f"{name}.jsonl")
                    if not m.startswith((b"Asterisk Call Manager", b"Response:")))


def stamped(scenario: Iterable[tuple[float, AmiMessage]], start: float) -> list[tuple[float, AmiMessage]]:
    """A generated call as if it happened at ``start`` (Timestamp headers, as
    Asterisk sends with timestampevents=yes)."""
    t, out = start, []
    for delay, message in scenario:
        t += delay
        out.append((delay, {**message, "Timestamp": f"{t:.6f}"}))
    return out


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=FakeClock()) as harness:
        yield harness


async def play(h: Harness, scenario: Iterable[tuple[float, AmiMessage]], at: float) -> None:
    count = len(h.records)
    await h.ami.play(stamped(scenario, at), speed=0)
    await h.wait_records(count + 1)
    await h.gateway.drain()


async def capture(h: Harness, name: str) -> None:
    count = len(h.records)
    await h.ami.send_raw(jsonl_stream(name))
    await h.wait_records(count + 1)
    await h.gateway.drain()


async def tasks(h: Harness, status: str = "all") -> list[CallbackTask]:
    return await h.followup.tasks.find(status=status)


async def test_missed_then_called_back_by_another_agent(h: Harness) -> None:
    await capture(h, "b_missed")
    (task,) = await tasks(h)
    missed = h.records[-1]
    assert missed.outcome == "missed" and missed.customer == MISSED_CALLER and missed.shop == "A"
    assert (task.phone, task.status, task.owner, task.attempts, task.shop) == (MISSED_CALLER, "open", "anna", 1, "A")
    assert task.first_attempt_at == task.last_attempt_at == missed.ended_at
    assert task.due_at == pytest.approx(B_MISSED_DUE)
    # Boris (102) calls the customer back at 09:10 Moscow time; he answers.
    callback_at = datetime(2026, 11, 27, 9, 10, tzinfo=MSK).timestamp()
    await play(h, CallFactory().click_to_call("102", MISSED_CALLER, SHOP_A, channel_id="c2c-back-1", answered=True), callback_at)
    back = h.records[-1]
    assert (back.direction, back.outcome, back.customer) == ("outbound", "answered", MISSED_CALLER)
    (task,) = await tasks(h)
    assert (task.status, task.closed_by, task.close_reason, task.closed_call_id) == (
        "reached", "boris", "called_back", back.call_id)
    assert back.answered_at is not None and missed.ended_at is not None
    assert task.closed_at == pytest.approx(back.answered_at)
    assert task.callback_seconds == pytest.approx(back.answered_at - missed.ended_at)
    assert task.within_sla is True
    points = await h.followup.interactions.between(0, 2e9)
    assert sorted((i.login, i.kind) for i in points) == [("boris", "callback_in_sla"), ("boris", "outbound_call")]


async def test_a_callback_stored_before_the_missed_call_still_closes_its_task(h: Harness) -> None:
    # Records can come in late (webhooks, a replay): the callback at 09:10 first, then the miss at 02:39.
    callback_at = datetime(2026, 11, 27, 9, 10, tzinfo=MSK).timestamp()
    await play(h, CallFactory().click_to_call("102", MISSED_CALLER, SHOP_A, channel_id="c2c-early", answered=True),
               callback_at)
    assert await tasks(h) == []
    await capture(h, "b_missed")
    back, missed = h.records[-2:]
    (task,) = await tasks(h)
    assert (task.status, task.closed_by, task.closed_call_id, task.within_sla) == ("reached", "boris", back.call_id,
                                                                                  True)
    assert back.answered_at is not None and missed.ended_at is not None
    assert task.callback_seconds == pytest.approx(back.answered_at - missed.ended_at)
    kinds = sorted(i.kind for i in await h.followup.interactions.between(0, 2e9))
    assert kinds == ["callback_in_sla", "outbound_call"]


async def test_missed_twice_is_one_task_with_two_attempts(h: Harness) -> None:
    await capture(h, "b_missed")
    second_at = datetime(2026, 11, 27, 8, 0, tzinfo=MSK).timestamp()
    await play(h, CallFactory().direct_missed(MISSED_CALLER, "Missed Caller", SHOP_A, "101"), second_at)
    first, second = h.records[-2:]
    (task,) = await tasks(h)
    assert (task.status, task.attempts) == ("open", 2)
    assert (task.first_attempt_at, task.last_attempt_at) == (first.ended_at, second.ended_at)
    assert task.due_at == pytest.approx(B_MISSED_DUE)  # the SLA runs from the first miss
    # The same records handled again (a resync, a replay) count nothing twice.
    for record in (first, second):
        await h.store.save_call(record, also=h.followup.call_statements(record))
    (again,) = await tasks(h)
    assert again.attempts == 2


async def test_a_call_abandoned_in_the_queue_opens_a_task(h: Harness) -> None:
    await capture(h, "f_queue_abandoned")
    record = h.records[-1]
    (task,) = await tasks(h)
    assert record.outcome == "abandoned" and record.customer is not None
    assert (task.phone, task.status, task.attempts, task.channel) == (record.customer, "open", 1, record.channel)
    rows = await h.store.read("SELECT call_id, outcome FROM callback_attempts")
    assert [tuple(r) for r in rows] == [(record.call_id, "abandoned")]


async def test_an_answered_call_opens_no_task(h: Harness) -> None:
    await capture(h, "a_answered")
    assert h.records[-1].outcome == "answered"
    assert await tasks(h) == []


async def test_a_click_to_call_the_customer_does_not_answer_leaves_the_task_open(h: Harness) -> None:
    await capture(h, "b_missed")
    at = datetime(2026, 11, 27, 9, 5, tzinfo=MSK).timestamp()
    await play(h, CallFactory().click_to_call("101", MISSED_CALLER, SHOP_A, channel_id="c2c-back-2", answered=False), at)
    assert h.records[-1].outcome != "answered"
    (task,) = await tasks(h)
    assert (task.status, task.closed_at, task.attempts) == ("open", None, 1)


async def test_the_customer_calling_again_and_answered_closes_the_task(h: Harness) -> None:
    await capture(h, "b_missed")
    at = datetime(2026, 11, 27, 10, 0, tzinfo=MSK).timestamp()  # after the SLA
    await play(h, CallFactory().direct_answered(MISSED_CALLER, "Missed Caller", SHOP_A, "101"), at)
    (task,) = await tasks(h)
    assert (task.status, task.closed_by, task.close_reason, task.within_sla) == ("reached", "anna", "called_in", False)
    kinds = sorted(i.kind for i in await h.followup.interactions.between(0, 2e9))
    assert kinds == ["inbound_call"]  # no callback points: he called us, and late


async def test_a_blacklisted_caller_gets_no_task(h: Harness) -> None:
    await h.contacts.put(MISSED_CALLER, {"blacklisted": True}, set_by="admin")
    await capture(h, "b_missed")
    assert await tasks(h) == []


async def test_sla_breach_escalates_once_to_owner_and_supervisor(h: Harness) -> None:
    clock = h.clock
    assert isinstance(clock, FakeClock)
    await capture(h, "b_missed")
    (task,) = await tasks(h)
    async with tab(h, "anna") as anna, tab(h, "olga") as olga, tab(h, "boris") as boris:
        # 09:29:59 in Moscow: not yet (the night before opening did not count).
        clock.now = B_MISSED_DUE - 1
        assert await h.followup.check_sla() == []
        clock.now = B_MISSED_DUE + 1
        (escalated,) = await h.followup.check_sla()
        assert escalated.task_id == task.task_id
        for person in (anna, olga):
            notice = await person.until(lambda f: f["type"] == "notice")
            assert (notice["kind"], notice["task"]["task_id"], notice["task"]["owner"]) == (
                "callback_overdue", task.task_id, "anna")
            assert notice["task"]["overdue"] is True and notice["task"]["timezone"] == "Europe/Moscow"
        # Once: later checks find nothing to escalate, and nobody else heard of it.
        clock.now += 3600
        assert await h.followup.check_sla() == []
        for person in (anna, olga, boris):
            assert [f for f in await person.quiet() if f["type"] == "notice"] == []
    (flagged,) = await tasks(h)
    assert flagged.escalated_at == B_MISSED_DUE + 1 and flagged.status == "open"
    assert h.metrics.registry.get_sample_value("cti_callbacks_escalated_total") == 1


# -- the API: who sees and closes what --------------------------------------------------


async def _session(http: aiohttp.ClientSession, h: Harness, login: str) -> dict[str, str]:
    async with http.post(f"{h.url}/api/login", json={"login": login, "password": PASSWORD}) as response:
        assert response.status == 200
        return {"Cookie": f"cti_session={response.cookies['cti_session'].value}"}


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.json()


async def test_each_person_sees_the_tasks_of_his_scope_and_closes_only_those(h: Harness) -> None:
    await capture(h, "b_missed")  # anna's (shop A's default owner)
    (task,) = await tasks(h)
    async with aiohttp.ClientSession() as http:
        seen = {}
        for login in ("anna", "boris", "vera", "olga", "pavel", "admin"):
            status, body = await _get(http, f"{h.url}/api/callbacks", await _session(http, h, login))
            assert status == 200
            seen[login] = [t["task_id"] for t in body["tasks"]]
        # anna owns it; olga leads her team and supervises shop A; pavel leads support.
        assert seen == {"anna": [task.task_id], "boris": [], "vera": [], "olga": [task.task_id], "pavel": [],
                        "admin": [task.task_id]}
        status, body = await _get(http, f"{h.url}/api/callbacks?mine=1", await _session(http, h, "olga"))
        assert (status, body["tasks"]) == (200, [])
        close = f"{h.url}/api/callbacks/{task.task_id}/close"
        async with http.post(close, json={"reason": "spam"}, headers=await _session(http, h, "boris")) as response:
            assert (response.status, (await response.json())["error"]) == (404, "no_such_task")
        anna = await _session(http, h, "anna")
        async with http.post(close, json={"reason": "because"}, headers=anna) as response:
            assert (response.status, (await response.json())["error"]) == (400, "bad_reason")
        async with http.post(close, json={"reason": "spam", "note": "робот"}, headers=anna) as response:
            assert response.status == 200
            body = await response.json()
        assert (body["status"], body["closed_by"], body["close_reason"], body["close_note"]) == (
            "closed", "anna", "spam", "робот")
        async with http.post(close, json={"reason": "spam"}, headers=anna) as response:
            assert (response.status, (await response.json())["error"]) == (409, "not_open")
        status, body = await _get(http, f"{h.url}/api/callbacks", anna)
        assert body["tasks"] == []
        status, body = await _get(http, f"{h.url}/api/callbacks?status=closed", anna)
        assert [t["task_id"] for t in body["tasks"]] == [task.task_id]
    # Closed by hand: the next miss from the number opens a new task.
    await play(h, CallFactory().direct_missed(MISSED_CALLER, "Missed Caller", SHOP_A, "101"),
               datetime(2026, 11, 27, 12, 0, tzinfo=MSK).timestamp())
    assert [(t.status, t.attempts) for t in await tasks(h)] == [("open", 1), ("closed", 1)]


async def test_interactions_and_kpi_through_the_api(h: Harness) -> None:
    clock = h.clock
    assert isinstance(clock, FakeClock)
    clock.now = datetime(2026, 11, 27, 15, 0, tzinfo=MSK).timestamp()
    async with aiohttp.ClientSession() as http:
        anna, olga, pavel = [await _session(http, h, login) for login in ("anna", "olga", "pavel")]
        meeting = {"kind": "meeting", "request_id": "m-1", "note": "showroom"}
        async with http.post(f"{h.url}/api/interactions", json=meeting, headers=anna) as response:
            assert response.status == 201
            first = await response.json()
        async with http.post(f"{h.url}/api/interactions", json=meeting, headers=anna) as response:
            assert (response.status, await response.json()) == (200, first)  # a retry records nothing new
        async with http.post(f"{h.url}/api/interactions", json={"kind": "inbound_call", "request_id": "x"},
                             headers=anna) as response:
            assert (response.status, (await response.json())["error"]) == (400, "bad_kind")
        for who, status in ((pavel, 403), (olga, 201)):  # boris is in olga's team, not pavel's
            async with http.post(f"{h.url}/api/interactions", headers=who,
                                 json={"kind": "meeting", "request_id": "m-2", "login": "boris"}) as response:
                assert response.status == status
        status, mine = await _get(http, f"{h.url}/api/kpi?from=2026-11-27&to=2026-11-27", anna)
        assert status == 200 and [a["login"] for a in mine["agents"]] == ["anna"]
        (day,) = mine["agents"][0]["days"]
        assert (day["date"], day["points"], day["counts"], day["target_met"]) == (
            "2026-11-27", 10.0, {"meeting": 1}, False)
        status, team = await _get(http, f"{h.url}/api/kpi?from=2026-11-01&to=2026-11-30", olga)
        assert {a["login"]: a["total"] for a in team["agents"]} == {"anna": 10.0, "boris": 10.0}
        status, other = await _get(http, f"{h.url}/api/kpi?login=anna", pavel)
        assert (status, other["error"]) == (404, "no_such_agent")
        status, bad = await _get(http, f"{h.url}/api/kpi?from=2026-11-30&to=2026-11-01", olga)
        assert (status, bad["error"]) == (400, "bad_period")


async def test_the_caller_card_counts_his_open_missed_calls(h: Harness) -> None:
    await capture(h, "b_missed")
    async with tab(h, "anna") as anna:
        at = datetime(2026, 11, 27, 9, 1, tzinfo=MSK).timestamp()
        scenario = stamped(CallFactory().direct_answered(MISSED_CALLER, "Missed Caller", SHOP_A, "101"), at)
        rest = await play_until(h, scenario, rings("101"))
        update = await anna.until(lambda f: f["type"] == "update" and f["card"]["recent_calls"] is not None)
        assert update["card"]["open_missed_calls"] == 1
        await h.ami.play(rest, speed=0)
        await h.wait_records(2)
        await h.gateway.drain()
    assert [t.status for t in await tasks(h)] == ["reached"]  # he was answered: no longer open


async def test_the_demo_misses_calls_and_calls_them_back(tmp_path: Path) -> None:
    import random

    from connectors.ami.demo_pbx import DemoPbx
    from gateway.cli import demo_plan

    async with Harness(tmp_path, plans=PlanBook(demo_plan())) as h:
        demo = DemoPbx(h.ami, rng=random.Random(3))
        for n in range(1, 81):  # one call after the other, as the demo's 4 s interval mostly plays them
            await asyncio.wait_for(demo.run(interval=0, speed=0, calls=n), 10)
            await h.wait_records(n)
        await h.gateway.drain()
        every = await tasks(h)
        by_call = {r.call_id: r for r in h.records}
    reached = [t for t in every if t.status == "reached"]
    assert every and reached, [(t.phone, t.status) for t in every]
    assert any(t.close_reason == "called_back" for t in reached)
    for task in reached:
        closing = by_call[task.closed_call_id or ""]
        assert (closing.outcome, closing.customer) == ("answered", task.phone)
        assert task.owner in ("anna", "boris")  # the demo shops' default owners (or the caller's manager)
    # Every missed or abandoned inbound call with a number is an attempt of exactly one task.
    missed = {r.call_id for r in h.records if r.direction == "inbound" and r.outcome in ("missed", "abandoned")}
    assert sum(t.attempts for t in every) == len(missed)
