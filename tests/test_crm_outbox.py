"""The outbox's delivery machinery, with the generic webhook as the sink and a
local receiver the test controls (tests/test_crm_webhook.py): backoff by an
injected clock, dead letters and "retry now" through the admin API,
idempotency, order within a call, and the rule that a CRM slow or down never
slows down pops or call logging.

With ``deliver_crm=False`` nothing delivers by itself: the test drives each
round (``Bridge.round``) at the times it sets on a FakeClock.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crm_bridge.bridge import RetryPolicy
from crm_bridge.bridge_config import CrmConfig
from crm_bridge.outbox import Entry
from gateway.config import ConfigError, parse_config
from gateway.numberplan import PlanBook
from tests.harness import PASSWORD, Harness
from tests.test_callbacks_live import capture
from tests.test_crm_webhook import (CAPTURES, PLAIN_SECRET, Received, Receiver, check, receiving, settled, sink,
                                    story, verify)
from tests.test_hub import FakeClock, running, tab
from tests.test_numberplan import example_plan

POLICY = RetryPolicy(first_seconds=10, max_seconds=60)


@asynccontextmanager
async def stepped(tmp_path: Path, receiver: Receiver, policy: RetryPolicy = POLICY) -> AsyncIterator[Harness]:
    """A gateway whose sink "erp" delivers only when the test runs a round."""
    crm = CrmConfig(policy=policy, sinks=(sink("erp", receiver.url()),))
    async with running(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=FakeClock(),
                       deliver_crm=False) as h:
        yield h


def clock_of(h: Harness) -> FakeClock:
    assert isinstance(h.clock, FakeClock)
    return h.clock


async def entries(h: Harness, sink: str = "erp") -> list[Entry]:
    rows = await h.store.read("SELECT entry_id FROM outbox WHERE sink = ? ORDER BY entry_id", (sink,))
    found = [await h.bridge.outbox.get(row[0]) for row in rows]
    return [e for e in found if e is not None]


# When the first pending entry of some call is due (a later entry of a call
# waits for the one before it, whatever its own next_at says).
NEXT_HEAD = ("SELECT min(o.next_at) FROM outbox AS o WHERE o.sink = ? AND o.state = 'pending' AND NOT EXISTS "
             "(SELECT 1 FROM outbox AS p WHERE p.sink = o.sink AND p.stream = o.stream AND p.state = 'pending' "
             "AND p.entry_id < o.entry_id)")


async def until_done(h: Harness, rounds: int = 100) -> None:
    """Run rounds, each at the time the next entry is due, until none is pending."""
    clock = clock_of(h)
    for _ in range(rounds):
        due = (await h.store.read(NEXT_HEAD, ("erp",)))[0][0]
        if due is None:
            return
        clock.now = max(clock.now, due)
        assert await h.bridge.round("erp")
    raise AssertionError("still pending")


# -- the policy -----------------------------------------------------------------------


def test_delays_double_from_the_first_up_to_the_cap_spread_by_key() -> None:
    policy = RetryPolicy(first_seconds=10, max_seconds=3600)
    bases = [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    spread = policy.delay(1, "call-1:finished") / 10
    assert 0.9 <= spread <= 1.1
    for failures, base in enumerate(bases, 1):
        assert policy.delay(failures, "call-1:finished") == pytest.approx(base * spread)
    assert policy.delay(10_000, "call-1:finished") == pytest.approx(3600 * spread)  # no overflow
    # Entries failing together are spread over +-10%, not retried in the same second.
    spreads = [policy.delay(1, f"call-{n}:finished") / 10 for n in range(200)]
    assert all(0.9 <= s <= 1.1 for s in spreads)
    assert min(spreads) < 0.92 and max(spreads) > 1.08 and len(set(spreads)) > 150


# -- backoff, dead letters, retry now --------------------------------------------------


async def test_backoff_follows_the_policy_and_retry_after(tmp_path: Path) -> None:
    async with receiving() as receiver, stepped(tmp_path, receiver) as h:
        receiver.answer = lambda r: 503
        clock = clock_of(h)
        await capture(h, "a_answered")
        await h.bridge.drain()
        ringing = (await entries(h))[0]
        assert ringing.event == "call.ringing" and ringing.next_at == clock.now
        delays = []
        for failures in range(1, 7):
            assert [e.entry_id for e in await h.bridge.round("erp")] == [ringing.entry_id]
            after = await h.bridge.outbox.get(ringing.entry_id)
            assert after is not None and after.attempts == failures and "HTTP 503" in (after.last_error or "")
            delays.append(after.next_at - clock.now)
            clock.now = after.next_at - 0.5
            assert await h.bridge.round("erp") == []  # not before its time
            clock.now = after.next_at
        assert delays == [pytest.approx(POLICY.delay(n, ringing.key)) for n in range(1, 7)]
        for delay, base in zip(delays, [10, 20, 40, 60, 60, 60]):
            assert base * 0.9 <= delay <= base * 1.1
        # The other side asks for more time than the backoff would give: granted.
        receiver.retry_after = "300"
        await h.bridge.round("erp")
        after = await h.bridge.outbox.get(ringing.entry_id)
        assert after is not None and after.next_at - clock.now == 300
        # ...and for less: the backoff still applies.
        clock.now, receiver.retry_after = after.next_at, "1"
        await h.bridge.round("erp")
        after = await h.bridge.outbox.get(ringing.entry_id)
        assert after is not None and after.next_at - clock.now == pytest.approx(POLICY.delay(8, ringing.key))
    # Every attempt was the ringing one, under its one webhook-id: the call's later events waited.
    assert {r.event["type"] for r in receiver.requests} == {"call.ringing"}
    assert {r.webhook_id for r in receiver.requests} == {ringing.key} and len(receiver.requests) == 8


async def _login(http: aiohttp.ClientSession, h: Harness, login: str) -> dict[str, str]:
    async with http.post(f"{h.url}/api/login", json={"login": login, "password": PASSWORD}) as response:
        assert response.status == 200
        return {"Cookie": f"cti_session={response.cookies['cti_session'].value}"}


async def test_dead_letters_after_give_up_or_a_refusal_and_retry_now(tmp_path: Path) -> None:
    policy = RetryPolicy(first_seconds=10, give_up_seconds=100)
    async with receiving() as receiver, stepped(tmp_path, receiver, policy) as h:
        receiver.answer = lambda r: 400 if r.event["type"] == "call.answered" else 503
        clock = clock_of(h)
        start = clock.now
        await capture(h, "a_answered")
        await h.bridge.drain()
        ringing, answered, finished = await entries(h)
        # Attempts until the next one would come after give_up_seconds.
        expected, at = 1, start
        while at + policy.delay(expected, ringing.key) <= start + 100:
            at += policy.delay(expected, ringing.key)
            expected += 1
        for _ in range(expected):
            state = await h.bridge.outbox.get(ringing.entry_id)
            assert state is not None and state.state == "pending"
            clock.now = state.next_at
            await h.bridge.round("erp")
        dead = await h.bridge.outbox.get(ringing.entry_id)
        assert dead is not None and (dead.state, dead.attempts) == ("dead", expected)
        # A dead entry no longer holds up its call; a 400 is dead at once.
        assert [e.entry_id for e in await h.bridge.round("erp")] == [answered.entry_id]
        refused = await h.bridge.outbox.get(answered.entry_id)
        assert refused is not None and (refused.state, refused.attempts) == ("dead", 1)
        assert "HTTP 400" in (refused.last_error or "")
        samples = h.metrics.registry.get_sample_value
        assert samples("cti_crm_deliveries_total", {"sink": "erp", "result": "dead"}) == 2
        assert samples("cti_crm_deliveries_total", {"sink": "erp", "result": "retried"}) == expected - 1

        url = f"{h.url}/api/admin/outbox"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 401
            olga = await _login(http, h, "olga")  # a manager
            async with http.get(url, headers=olga) as response:
                assert response.status == 403
            async with http.post(f"{url}/retry", json={"all_dead": True}, headers=olga) as response:
                assert response.status == 403
            admin = await _login(http, h, "admin")
            async with http.get(url, headers=admin) as response:
                assert response.status == 200
                listed = await response.json()
            assert [(e["entry_id"], e["event"], e["state"]) for e in listed["entries"]] == [
                (answered.entry_id, "call.answered", "dead"), (ringing.entry_id, "call.ringing", "dead")]
            assert listed["sinks"] == [{"name": "erp", "kind": "webhook", "pending": 1.0, "dead": 2.0,
                                        "oldest_seconds": pytest.approx(clock.now - finished.created_at)}]
            assert "+7916" not in await response.text()  # no payloads: they hold customers' numbers
            receiver.answer = lambda r: 204
            async with http.post(f"{url}/retry", json={"entry_ids": [ringing.entry_id]}, headers=admin) as response:
                assert (response.status, await response.json()) == (200, {"retried": 1})
            again = await h.bridge.outbox.get(ringing.entry_id)
            assert again is not None and (again.state, again.next_at) == ("pending", clock.now)
            assert again.give_up_at == clock.now + 100  # a fresh window
            await h.bridge.round("erp")
            async with http.post(f"{url}/retry", json={"all_dead": True}, headers=admin) as response:
                assert (response.status, await response.json()) == (200, {"retried": 1})
            await until_done(h)
            async with http.get(url, headers=admin) as response:
                assert (await response.json())["entries"] == []
    # Retried in the order of the call: the finished event waited for the two before it.
    assert [r.event["type"] for r in receiver.delivered()] == ["call.ringing", "call.answered", "call.finished"]


# -- idempotency and order ------------------------------------------------------------


async def test_a_retry_after_the_other_side_stored_the_event_carries_the_same_id(tmp_path: Path) -> None:
    stored: dict[str, dict[str, Any]] = {}  # the receiver's table, unique by webhook-id

    def store_then_fail(r: Received) -> int:
        first = r.webhook_id not in stored
        stored.setdefault(r.webhook_id, r.event)
        return 500 if first else 200  # stored, but the answer is lost the first time

    async with receiving() as receiver, stepped(tmp_path, receiver) as h:
        receiver.answer = store_then_fail
        await capture(h, "b_missed")
        await h.bridge.drain()
        await until_done(h)
        done = await entries(h)
    assert [(e.state, e.attempts) for e in done] == [("done", 2)] * 4
    assert sorted(stored) == sorted(e.key for e in done)  # one event each on the other side
    by_id: dict[str, list[Received]] = {}
    for r in receiver.requests:
        by_id.setdefault(r.webhook_id, []).append(r)
    for attempts in by_id.values():
        first, second = attempts
        assert (first.status, second.status, first.body) == (500, 200, second.body)
        assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
        assert all(verify(PLAIN_SECRET, r.headers, r.body) for r in attempts)


async def test_a_call_s_events_wait_for_the_one_before_them(tmp_path: Path) -> None:
    failures = Counter[str]()

    def ringing_fails_three_times(r: Received) -> int:
        if r.event["type"] == "call.ringing" and failures["ringing"] < 3:
            failures["ringing"] += 1
            return 503
        return 204

    async with receiving() as receiver, stepped(tmp_path, receiver) as h:
        receiver.answer = ringing_fails_three_times
        await capture(h, "e_queue_answered")
        await h.bridge.drain()
        # Everything of the call is due now; only its first event is attempted.
        for _ in range(3):
            attempted = await h.bridge.round("erp")
            assert [e.event for e in attempted] == ["call.ringing"]
            clock_of(h).now += 3600
        await until_done(h)
        (record,) = h.records
    assert [r.event["type"] for r in receiver.requests[:4]] == ["call.ringing"] * 4
    assert story(check(receiver.delivered()), record.call_id) == [
        ("call.ringing", "101"), ("call.ring_stopped", "101"), ("call.ringing", "102"), ("call.answered", "102"),
        ("call.finished", "answered")]



async def test_the_loop_s_next_wake_up_is_when_an_entry_can_be_attempted(tmp_path: Path) -> None:
    async with receiving() as receiver, stepped(tmp_path, receiver) as h:
        receiver.answer = lambda r: 503
        await capture(h, "a_answered")
        await h.bridge.drain()
        (ringing,) = await h.bridge.round("erp")
        failed = await h.bridge.outbox.get(ringing.entry_id)
        assert failed is not None and await h.bridge.round("erp") == []  # nothing can go before the retry
        assert await h.bridge.outbox.next_due_at("erp") == failed.next_at

# -- a CRM down ------------------------------------------------------------------------


def free_port() -> int:
    """A port nothing listens on (the test's receiver starts there later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def scrape(h: Harness) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as http, http.get(f"{h.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_crms_hanging_or_refusing_never_hold_up_pops_or_call_logging(tmp_path: Path) -> None:
    port = free_port()
    policy = RetryPolicy(first_seconds=0.05, max_seconds=0.2, timeout_seconds=0.2)
    calls = ("a_answered", "b_missed", "e_queue_answered", "c_abandoned_ringing")  # each rings anna (101)
    async with receiving() as hanging:
        hanging.hanging = True
        crm = CrmConfig(policy=policy, sinks=(sink("hang", hanging.url()),
                                              sink("down", f"http://127.0.0.1:{port}/hook")))
        async with running(tmp_path, plans=PlanBook(example_plan()), crm=crm) as h, tab(h, "anna") as anna:
            for name in calls:
                await capture(h, name)
                call_id = h.records[-1].call_id
                await anna.until(lambda f: f["type"] == "pop" and f["call_id"] == call_id)
            await h.bridge.drain()
            assert (await h.store.read("SELECT count(*) FROM calls"))[0][0] == len(calls)
            rows = await h.store.read("SELECT sink, count(*), sum(state = 'pending') FROM outbox GROUP BY sink")
            counts = {sink: (total, pending) for sink, total, pending in rows}
            total = counts["hang"][0]
            # Each call's events (tests/test_crm_webhook.py), and the tasks of the missed and the abandoned one.
            assert total == sum(len(CAPTURES[name]) for name in calls) + 2
            assert counts == {"hang": (total, total), "down": (total, total)}
            for _ in range(500):  # both sinks have failed at least once
                tried = await h.store.read("SELECT count(DISTINCT sink) FROM outbox WHERE attempts > 0")
                if tried[0][0] == 2 and hanging.arrived:
                    break
                await asyncio.sleep(0.02)
            assert hanging.arrived and hanging.requests == []  # it took them in and never answered
            await h.metrics.count_backlogs(h.store)
            during = await scrape(h)
            for name in ("hang", "down"):
                assert metric(during, "cti_outbox_depth", sink=name) == total
                assert metric(during, "cti_outbox_dead", sink=name) == 0
                assert metric(during, "cti_crm_deliveries_total", sink=name, result="retried") >= 1
                assert metric(during, "cti_crm_deliveries_total", sink=name, result="delivered") == 0
            # Both come back.
            async with receiving(port) as back:
                hanging.come_back()
                await settled(h)
                await h.metrics.count_backlogs(h.store)
                after = await scrape(h)
                keys = [row[0] for row in await h.store.read("SELECT key FROM outbox WHERE sink = 'hang'")]
        for receiver in (hanging, back):
            delivered = Counter(r.webhook_id for r in receiver.delivered())
            assert sorted(delivered) == sorted(keys) and set(delivered.values()) == {1}
            check(receiver.delivered())
        for name in ("hang", "down"):
            assert metric(after, "cti_outbox_depth", sink=name) == 0
            assert metric(after, "cti_crm_deliveries_total", sink=name, result="delivered") == total


# -- the config ------------------------------------------------------------------------


async def test_a_sink_removed_from_the_config_gets_no_new_entries(tmp_path: Path) -> None:
    async with receiving() as receiver:
        both = CrmConfig(sinks=(sink("erp", receiver.url()), sink("old", receiver.url("old"))))
        async with running(tmp_path, plans=PlanBook(example_plan()), crm=both, deliver_crm=False) as h:
            await capture(h, "a_answered")
            await h.bridge.drain()
        async with running(tmp_path, plans=PlanBook(example_plan()), crm=CrmConfig(sinks=both.sinks[:1]),
                           deliver_crm=False) as h:
            await capture(h, "b_missed")  # its task is written by a trigger: it knows the sinks too
            await h.bridge.drain()
            rows = await h.store.read("SELECT sink, event FROM outbox ORDER BY entry_id")
            counts = await h.bridge.outbox.counts(h.clock())
    old = [event for name, event in rows if name == "old"]
    assert old == ["call.ringing", "call.answered", "call.finished"]  # a_answered's, still listed
    assert sorted(event for name, event in rows if name == "erp") == sorted(
        old + ["call.ringing", "call.ring_stopped", "call.finished", "task.opened"])
    assert counts["old"]["pending"] == 3 and counts["erp"]["pending"] == 7


GOOD = {"name": "erp", "url": "https://erp.example.com/cti-events", "secret_env": "ERP_SECRET"}


@pytest.mark.parametrize(("crm", "expected"), [
    ({"webhook": [{**GOOD, "url": "ftp://erp.example.com/x"}]}, "[[crm.webhook]] #1 url: expected the receiver's URL"),
    ({"webhook": [{**GOOD, "secret_env": "SHORT"}]}, "[[crm.webhook]] #1 secret_env: expected a secret of at least 16"),
    ({"webhook": [{**GOOD, "secret_env": "NOT_BASE64"}]}, "[[crm.webhook]] #1 secret_env: expected a secret"),
    ({"webhook": [{**GOOD, "secret_env": "UNSET"}]}, "[[crm.webhook]] #1 secret_env: expected an environment variable"),
    ({"webhook": [{**GOOD, "secret": "in-the-file"}]}, "[[crm.webhook]] #1 secret: secrets are not kept in the file"),
    ({"webhook": [{**GOOD, "events": ["call.started"]}]}, "[[crm.webhook]] #1 events: expected a non-empty list"),
    ({"webhook": [{**GOOD, "events": []}]}, "[[crm.webhook]] #1 events: expected a non-empty list"),
    ({"webhook": [GOOD, {**GOOD, "url": "https://other.example.com/"}]},
     "[[crm.webhook]] #2 name: expected a name no other CRM sink has, got 'erp'"),
    ({"webhook": [{**GOOD, "name": "erp one"}]}, "[[crm.webhook]] #1 name: expected a name of letters"),
    ({"webhook": [{**GOOD, "evnets": ["call.finished"]}]}, "[[crm.webhook]] #1 evnets: expected one of"),
    ({"give_up_hours": 0}, "[crm] give_up_hours: expected hours > 0"),
    ({"webhook": {"name": "erp"}}, "[crm] webhook: expected an array of tables [[crm.webhook]]"),
])
def test_crm_config_errors_name_the_file_table_and_key(crm: dict[str, Any], expected: str) -> None:
    environ = {"ERP_SECRET": "x" * 24, "SHORT": "short", "NOT_BASE64": "whsec_not*base64"}
    with pytest.raises(ConfigError) as info:
        parse_config({"crm": crm}, source=Path("/etc/cti/gw.toml"), environ=environ)
    assert str(info.value).startswith("/etc/cti/gw.toml: ") and expected in str(info.value)
    assert "x" * 24 not in str(info.value)


def test_a_good_crm_section() -> None:
    config = parse_config({"crm": {"give_up_hours": 2, "retry_first_seconds": 5, "webhook": [
        {**GOOD, "events": ["call.finished", "task.opened"]}]}}, source=Path("/etc/cti/gw.toml"),
        environ={"ERP_SECRET": "whsec_" + "QUJDREVGR0hJSktMTU5PUA=="})
    (erp,) = config.crm.sinks
    assert (erp.kind, erp.name, erp.config.url, erp.config.events) == (
        "webhook", "erp", GOOD["url"], frozenset({"call.finished", "task.opened"}))
    assert (config.crm.policy.give_up_seconds, config.crm.policy.first_seconds) == (7200, 5)
    assert "QUJD" not in repr(config)
