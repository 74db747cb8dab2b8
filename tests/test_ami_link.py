"""The live AMI connection (``AmiLink``) and the service behind it, against the
in-process AMI server on 127.0.0.1:0: drops mid-call, a half-open link, bad
credentials, a silent or closing server, restarts, an Originate in flight, and
one test per failure of panoramisk 1.4 that issue 3 lists:

1. a Cyrillic letter split across TCP reads .... test_a_cyrillic_letter_split_across_two_tcp_writes_arrives_whole
2. a duplicated ``Event:`` header .............. test_a_duplicated_event_header_does_not_kill_the_link
3. an unanswered Originate re-sent ............. test_an_originate_pending_when_the_link_drops_fails_at_once_and_is_not_resent
4. ping replies never checked .................. test_a_half_open_link_is_declared_dead_after_two_unanswered_pings
5. a rejected login that does not raise ........ test_bad_credentials_raise_and_are_retried_slowly
6. close() leaving a reconnect scheduled ....... test_close_while_a_reconnect_is_scheduled_stops_for_good

Timing is shrunk through ``LinkSettings`` and the server's knobs, never by
patching ``asyncio.sleep``; nothing of ours is mocked. Waits poll real state
with a deadline (``until``), so a slow machine makes a test slower, not flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connectors.ami.codec import AmiMessage
from connectors.ami.link import AmiActionError, AmiLink, AmiLinkLost, AmiLoginError, AmiTimeout, LinkSettings
from connectors.ami.normalise import AmiNormaliser
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import AmiServer, encode_message
from crm_bridge.store import Store
from gateway.record import CallRecord
from gateway.service import Gateway
from tests.test_ami_server import Client, capture_messages

# Every deadline short, so that a failure shows in seconds; each test narrows
# the one it is about.
FAST: dict[str, Any] = {
    "connect_timeout": 1.0,
    "banner_timeout": 1.0,
    "login_timeout": 1.0,
    "action_timeout": 2.0,
    "ping_interval": 5.0,
    "ping_timeout": 1.0,
    "backoff_initial": 0.05,
    "backoff_max": 0.4,
    "login_retry": 0.5,
}
SECRET = "gateway-secret"


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    """Poll ``predicate`` every 10 ms; fail the test after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Rig:
    """Server + store + Gateway + AmiLink + the single consumer, wired as in production."""

    server: AmiServer
    link: AmiLink
    gateway: Gateway
    store: Store
    records: list[CallRecord]
    consumer: asyncio.Task[None]

    def actions(self, name: str) -> int:
        """How many ``name`` actions the server received."""
        return sum(1 for a in self.server.actions if a.get("Action") == name)

    async def resynced(self, logins: int) -> None:
        """Wait until the session of login number ``logins`` sent its last resync
        action: everything the server sends from now on comes after its answers."""
        await until(lambda: self.link.connects >= logins, 5.0, f"login #{logins}")
        await until(lambda: self.actions("QueueStatus") >= logins, 5.0, f"the resync of login #{logins}")

    async def wait_records(self, count: int, timeout: float = 5.0) -> list[CallRecord]:
        await until(lambda: len(self.records) >= count, timeout, f"{count} call record(s)")
        await self.gateway.drain()
        return self.records

    def open_call(self, call_id: str) -> CallRecord | None:
        """The core's view of a call still in progress."""
        return next((r for r in self.gateway.tracker.snapshot(time.time()) if r.call_id == call_id), None)

    async def core_sees_answered(self, call_id: str, agent: str) -> None:
        await until(
            lambda: (r := self.open_call(call_id)) is not None and r.answered_by == agent,
            5.0,
            f"the core to see call {call_id} answered by {agent}",
        )


RigFactory = Callable[..., Awaitable[Rig]]


async def _idle() -> None:
    await asyncio.Event().wait()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    """Builds rigs; tears each down in reverse (link, consumer, pending saves,
    store, server), every step run even if an earlier one fails."""
    async with contextlib.AsyncExitStack() as stack:
        count = 0

        async def make(
            *,
            server: dict[str, Any] | None = None,
            secret: str = SECRET,
            connect: bool = True,
            consume: bool = True,
            **settings: Any,
        ) -> Rig:
            nonlocal count
            count += 1
            srv = AmiServer(failed_login_delay=0, secret=SECRET, **(server or {}))
            await srv.start()
            stack.push_async_callback(srv.close)
            store = await Store.open(tmp_path / f"calls-{count}.sqlite3")
            stack.push_async_callback(store.close)
            records: list[CallRecord] = []
            gateway = Gateway(store, on_record=records.append)
            stack.push_async_callback(gateway.drain)
            link = AmiLink(
                LinkSettings("127.0.0.1", srv.port, "gateway", secret, **{**FAST, **settings}),
                rng=random.Random(3),
            )
            # consume=False: the test reads link.events itself.
            consumer = asyncio.create_task(
                gateway.consume_ami(link, AmiNormaliser()) if consume else _idle(), name="test-consumer"
            )
            stack.push_async_callback(_stop, consumer)
            stack.push_async_callback(link.close)
            rig = Rig(srv, link, gateway, store, records, consumer)
            link.start()
            if connect:
                await link.wait_connected(5.0)
                # Events sent from now on come after the resync's answers, never
                # inside them (a cut message sent with send_raw must not be
                # completed by an answer to the link's ListCommands).
                await rig.resynced(1)
            return rig

        yield make


@pytest.fixture
def calls() -> CallFactory:
    return CallFactory(rng=random.Random(11))


def call_id_of(scenario: Scenario) -> str:
    linkedid = scenario[0][1]["Linkedid"]
    assert isinstance(linkedid, str)
    return linkedid


def split_after_last(scenario: Scenario, event: str) -> tuple[Scenario, Scenario]:
    """The scenario up to and including its last ``event``, and the rest."""
    last = max(i for i, (_, msg) in enumerate(scenario) if msg.get("Event") == event)
    return scenario[: last + 1], scenario[last + 1 :]


def interleave(scenarios: Iterable[Scenario], rng: random.Random) -> list[AmiMessage]:
    """Mix the calls' messages as a busy PBX does: runs of 1-8 messages of one
    call, then another call's, each call's own order kept."""
    queues = [[msg for _, msg in s] for s in scenarios]
    merged: list[AmiMessage] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        for _ in range(rng.randint(1, 8)):
            if q:
                merged.append(q.pop(0))
    return merged


# -- drops mid-call -------------------------------------------------------------------


async def test_drop_mid_call_then_the_rest_is_seen(make_rig: RigFactory, calls: CallFactory) -> None:
    rig = await make_rig()
    call = calls.direct_answered("+79161110001", "Иван Петров", "+74950000001", "101", ring=2.0, talk=3.0)
    first, rest = split_after_last(call, "BridgeEnter")
    await rig.server.play(first, speed=0)
    await rig.core_sees_answered(call_id_of(call), "101")

    await rig.server.drop_clients()
    await rig.resynced(2)
    # The PBX still has both legs: the resync lists them, the core keeps the call.
    assert len(rig.server.live.channels) == 2
    assert rig.records == []
    await rig.server.play(rest, speed=0)

    [record] = await rig.wait_records(1)
    await asyncio.sleep(0.2)  # nothing else may follow
    assert len(rig.records) == 1
    assert record.call_id == call_id_of(call)
    assert (record.outcome, record.answered_by, record.talked) == ("answered", "101", ("101",))
    assert record.interrupted is False
    assert record.ended is True
    assert [c.call_id for c in await rig.store.calls()] == [record.call_id]


async def test_drop_mid_call_and_the_call_ends_unseen(make_rig: RigFactory, calls: CallFactory) -> None:
    rig = await make_rig()
    call = calls.direct_answered("+79161110002", "Ольга", "+74950000002", "101", ring=1.0, talk=30.0)
    first, _rest = split_after_last(call, "BridgeEnter")
    await rig.server.play(first, speed=0)
    await rig.core_sees_answered(call_id_of(call), "101")

    # The call ends while nobody listens: the reconnected link's CoreShowChannels
    # no longer lists its legs.
    rig.server.forget_call(call_id_of(call))
    await rig.server.drop_clients()

    [record] = await rig.wait_records(1)
    await rig.resynced(2)
    await asyncio.sleep(0.2)
    assert len(rig.records) == 1
    assert record.interrupted is True
    assert record.ended is True
    assert (record.outcome, record.answered_by) == ("answered", "101")  # best known outcome
    assert record.caller == "+79161110002"
    stored = await rig.store.calls()
    assert [(c.call_id, c.interrupted) for c in stored] == [(record.call_id, True)]


async def test_a_queue_call_that_began_while_away_is_rebuilt_by_the_resync(
    make_rig: RigFactory, calls: CallFactory
) -> None:
    """CoreShowChannels and QueueStatus rebuild a call the gateway never saw
    begin: the caller waits in the queue while 101 rings, then gives up."""
    rig = await make_rig(backoff_initial=0.5)  # the reconnect waits >= 0.25 s
    call = calls.queue("+79161110012", "Очередь", "+74950000003", abandon_after=3.0)
    ringing = next(
        i for i, (_, msg) in enumerate(call) if msg["Event"] == "Newstate" and msg["ChannelStateDesc"] == "Ringing"
    )
    first, rest = call[: ringing + 1], call[ringing + 1 :]
    await rig.server.drop_clients()
    await rig.server.play(first, speed=0)  # nobody is connected: only the PBX knows
    assert len(rig.server.live.channels) == 2 and len(rig.server.live.queues["sales"]) == 1
    await rig.resynced(2)
    await until(lambda: rig.open_call(call_id_of(call)) is not None, 2.0, "the rebuilt call")
    await rig.server.play(rest, speed=0)

    [record] = await rig.wait_records(1)
    assert record.call_id == call_id_of(call)
    assert (record.direction, record.caller, record.caller_name, record.dialled) == (
        "inbound", "+79161110012", "Очередь", "+74950000003"
    )
    assert (record.outcome, record.answered_by, record.rang) == ("abandoned", None, ("101",))
    assert record.interrupted is False


# -- a dead link that does not say so ----------------------------------------------------


async def test_a_half_open_link_is_declared_dead_after_two_unanswered_pings(make_rig: RigFactory) -> None:
    """panoramisk failure 4: it never checks its ping replies."""
    interval = 0.1
    rig = await make_rig(ping_interval=interval, ping_timeout=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    rig.server.freeze()  # no FIN, no RST: the socket just goes quiet

    await until(lambda: rig.link.connects == 2, 5.0, "a new login")
    took = loop.time() - started
    assert rig.link.last_error is not None and "ping" in rig.link.last_error.lower(), rig.link.last_error
    assert took >= 2 * interval  # two ping intervals at least: one missed ping is not enough
    assert rig.server.connections == 2  # a fresh connection, the frozen one left behind
    assert rig.server.logins == 2
    assert rig.link.is_connected
    response = await rig.link.action("Ping", timeout=1.0)
    assert response["Ping"] == "Pong"


# -- connecting and logging in --------------------------------------------------------------


async def test_bad_credentials_raise_and_are_retried_slowly(make_rig: RigFactory) -> None:
    """panoramisk failure 5: a rejected login does not raise."""
    rig = await make_rig(secret="wrong", connect=False, login_retry=0.5)
    with pytest.raises(AmiLoginError):
        await rig.link.wait_connected(3.0)
    assert rig.server.connections == 1
    await asyncio.sleep(0.3)
    assert rig.server.connections == 1  # no retry storm: the next try waits login_retry
    await until(lambda: rig.server.connections >= 2, 3.0, "the slow retry")
    first, second = rig.server.connection_times[:2]
    assert second - first >= 0.45
    assert rig.link.connects == 0 and rig.server.logins == 0
    assert not rig.link.is_connected
    assert rig.link.last_error is not None and "Authentication failed" in rig.link.last_error
    with pytest.raises(AmiLoginError):  # still rejected: still raises
        await rig.link.wait_connected(1.0)


async def test_no_banner_times_out_and_keeps_retrying_with_backoff(make_rig: RigFactory) -> None:
    banner_timeout = 0.2
    rig = await make_rig(server={"banner_delay": None}, connect=False, banner_timeout=banner_timeout)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await until(lambda: rig.link.last_error is not None, 3.0, "the banner timeout")
    assert loop.time() - started >= banner_timeout * 0.9
    assert "banner" in (rig.link.last_error or "").lower()

    await until(lambda: rig.server.connections >= 3, 5.0, "two retries")
    times = rig.server.connection_times
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Each attempt waited for the banner, then a backoff of at least half its base.
    assert all(gap >= banner_timeout + 0.5 * FAST["backoff_initial"] for gap in gaps), gaps
    assert rig.link.connects == 0 and rig.server.logins == 0


async def test_a_server_that_closes_after_the_banner_is_retried_with_backoff(make_rig: RigFactory) -> None:
    rig = await make_rig(server={"close_after_banner": True}, connect=False, login_timeout=3.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await until(lambda: rig.link.last_error is not None, 5.0, "the first failure")
    # Seen as a closed connection at once, not as a Login that timed out.
    assert loop.time() - started < 2.5  # well before the 3 s login timeout, even on a loaded machine
    assert "closed" in (rig.link.last_error or "").lower(), rig.link.last_error

    await until(lambda: rig.server.connections >= 3, 3.0, "retries")
    await asyncio.sleep(1.0)
    times = rig.server.connection_times
    within_a_second = [t for t in times if t - times[0] <= 1.0]
    # Backoff 0.05 s doubling (jitter 0.5-1.5x, capped at 0.4 s) allows at most
    # 8 attempts in the first second; a retry loop without backoff makes hundreds.
    assert 2 <= len(within_a_second) <= 8, len(within_a_second)
    assert rig.link.connects == 0


# -- actions ---------------------------------------------------------------------------------


async def test_an_originate_pending_when_the_link_drops_fails_at_once_and_is_not_resent(make_rig: RigFactory) -> None:
    """panoramisk failure 3: it re-sends an unanswered Originate after a reconnect."""
    rig = await make_rig(action_timeout=5.0)
    rig.server.action_handlers["Originate"] = lambda action: []  # queued, never answered
    loop = asyncio.get_running_loop()
    pending = asyncio.create_task(
        rig.link.action(
            "Originate",
            {"Channel": "PJSIP/101", "Context": "click-to-call", "Exten": "+79161110007", "Priority": "1",
             "Async": "true"},
            timeout=5.0,
        )
    )
    await until(lambda: len(rig.server.originates) == 1, 2.0, "the Originate to reach the PBX")
    dropped_at = loop.time()
    await rig.server.drop_clients()
    with pytest.raises(AmiLinkLost):
        await asyncio.wait_for(pending, 3.0)
    assert loop.time() - dropped_at < 1.0  # at once, not at the 5 s action timeout

    await rig.resynced(2)
    await asyncio.sleep(0.3)
    assert len(rig.server.originates) == 1


@pytest.mark.parametrize("fault", ["drop", "freeze"])
async def test_a_link_that_dies_during_the_resync_is_replaced_at_once(make_rig: RigFactory, fault: str) -> None:
    """The link dies while its post-login ListCommands waits for an answer: by
    a closed socket (drop) or by unanswered pings (freeze). Either is noticed
    at once, not when ListCommands reaches its 5 s action timeout."""
    rig = await make_rig(action_timeout=5.0, ping_interval=0.1, ping_timeout=0.1, connect=False)
    answer = rig.server.action_handlers["ListCommands"]
    rig.server.action_handlers["ListCommands"] = lambda action: []  # never answered
    await rig.link.wait_connected(3.0)
    await until(lambda: rig.actions("ListCommands") == 1, 2.0, "ListCommands")
    rig.server.action_handlers["ListCommands"] = answer  # the next session gets its answer
    loop = asyncio.get_running_loop()
    died_at = loop.time()
    if fault == "drop":
        await rig.server.drop_clients()
    else:
        rig.server.freeze()
    await until(lambda: rig.link.connects == 2, 4.0, "a new login")
    assert loop.time() - died_at < 1.5
    # The first session never got past ListCommands; the second one resyncs.
    await until(lambda: rig.actions("QueueStatus") == 1, 2.0, "the new session's resync")


async def test_actions_time_out_and_errors_raise(make_rig: RigFactory) -> None:
    rig = await make_rig()
    rig.server.action_handlers["Redirect"] = lambda action: []
    with pytest.raises(AmiTimeout):
        await rig.link.action("Redirect", {"Channel": "PJSIP/101-00000001", "Exten": "102"}, timeout=0.2)
    with pytest.raises(AmiActionError, match="Invalid/unknown command"):
        await rig.link.action("NoSuchThing", timeout=1.0)
    assert rig.link.is_connected and rig.link.connects == 1


async def test_close_fails_waiting_actions(make_rig: RigFactory) -> None:
    rig = await make_rig()
    rig.server.action_handlers["Redirect"] = lambda action: []
    pending = asyncio.create_task(rig.link.action("Redirect", {"Channel": "PJSIP/101-00000001"}, timeout=5.0))
    await until(lambda: rig.actions("Redirect") == 1, 2.0, "the Redirect")
    await rig.link.close()
    with pytest.raises(AmiLinkLost):
        await asyncio.wait_for(pending, 1.0)
    with pytest.raises(AmiLinkLost):
        await rig.link.action("Ping")


async def test_close_while_a_reconnect_is_scheduled_stops_for_good() -> None:
    """panoramisk failure 6: close() does not cancel a scheduled reconnect."""
    async with AmiServer(failed_login_delay=0) as probe:
        port = probe.port  # a port that nobody listens on once the probe is closed
    link = AmiLink(LinkSettings("127.0.0.1", port, "gateway", SECRET, **{**FAST, "backoff_initial": 0.1}),
                   rng=random.Random(5))
    server: AmiServer | None = None
    try:
        link.start()
        await until(lambda: link.last_error is not None, 3.0, "the refused connection")
        await link.close()  # the link now sleeps in its backoff: that must end too
        server = AmiServer(failed_login_delay=0, port=port)
        await server.start()
        await asyncio.sleep(0.5)  # several backoff periods
        assert server.connections == 0
        assert not link.is_connected and link.connects == 0
    finally:
        await link.close()
        if server is not None:
            await server.close()


# -- PBX restarts ------------------------------------------------------------------------------


async def test_a_shutdown_finishes_open_calls_then_calls_after_the_restart_are_recorded(
    make_rig: RigFactory, calls: CallFactory
) -> None:
    rig = await make_rig(server={"uptime": 1000})
    before = calls.direct_answered("+79161110003", "Пётр", "+74950000001", "101", ring=1.0, talk=60.0)
    first, _rest = split_after_last(before, "BridgeEnter")
    await rig.server.play(first, speed=0)
    await rig.core_sees_answered(call_id_of(before), "101")

    await rig.server.shutdown_event(restart=True)  # as in the restart capture
    rig.server.uptime = 2  # the PBX that comes back has just booted
    [record] = await rig.wait_records(1)
    assert record.call_id == call_id_of(before)
    assert record.interrupted is True and record.ended is True
    assert (record.outcome, record.answered_by) == ("answered", "101")

    await rig.resynced(2)
    after = calls.direct_answered("+79161110004", "Анна", "+74950000002", "102", ring=1.0, talk=2.0)
    await rig.server.play(after, speed=0)
    records = await rig.wait_records(2)
    await asyncio.sleep(0.2)
    assert len(records) == 2
    second = records[1]
    assert second.call_id == call_id_of(after)
    assert (second.outcome, second.answered_by, second.interrupted) == ("answered", "102", False)


async def test_a_smaller_uptime_at_login_finishes_open_calls(make_rig: RigFactory, calls: CallFactory) -> None:
    """No Shutdown event (the PBX crashed and came back): the FullyBooted of the
    new login reports a smaller Uptime. The server's table still lists the
    call's legs, so only the Uptime can tell that the call is gone."""
    rig = await make_rig(server={"uptime": 1000})
    call = calls.direct_answered("+79161110005", "Сергей", "+74950000003", "103", ring=1.0, talk=60.0)
    first, _rest = split_after_last(call, "BridgeEnter")
    await rig.server.play(first, speed=0)
    await rig.core_sees_answered(call_id_of(call), "103")

    rig.server.uptime = 3
    await rig.server.drop_clients()
    [record] = await rig.wait_records(1)
    assert record.call_id == call_id_of(call)
    assert record.interrupted is True
    assert (record.outcome, record.answered_by) == ("answered", "103")
    await rig.resynced(2)
    await asyncio.sleep(0.2)
    assert len(rig.records) == 1


async def test_a_reconnect_to_a_pbx_that_did_not_restart_keeps_calls_open(
    make_rig: RigFactory, calls: CallFactory
) -> None:
    """The counterpart of the two tests above: same Uptime, legs still listed,
    nothing is finished."""
    rig = await make_rig(server={"uptime": 1000})
    call = calls.direct_answered("+79161110006", "Мария", "+74950000004", "104", ring=1.0, talk=60.0)
    first, rest = split_after_last(call, "BridgeEnter")
    await rig.server.play(first, speed=0)
    await rig.core_sees_answered(call_id_of(call), "104")
    await rig.server.drop_clients()
    await rig.resynced(2)
    await asyncio.sleep(0.2)
    assert rig.records == []
    assert rig.open_call(call_id_of(call)) is not None
    await rig.server.play(rest, speed=0)
    [record] = await rig.wait_records(1)
    assert (record.answered_by, record.interrupted) == ("104", False)


# -- panoramisk's parsing failures -----------------------------------------------------------


async def test_a_cyrillic_letter_split_across_two_tcp_writes_arrives_whole(
    make_rig: RigFactory, calls: CallFactory
) -> None:
    """panoramisk failure 1: it drops a multi-byte letter split across reads."""
    rig = await make_rig()
    name = "Иван Петров"
    call = calls.direct_answered("+79161110007", name, "+74950000001", "101", ring=1.0, talk=2.0)
    at = next(i for i, (_, msg) in enumerate(call) if msg["Event"] == "Newchannel")
    await rig.server.play(call[:at], speed=0)
    data = encode_message(call[at][1])
    cut = data.index(name.encode("utf-8")) + 1  # inside "И" (two bytes in UTF-8)
    assert data[cut - 1 : cut + 1] == "И".encode("utf-8")
    await rig.server.send_raw(data[:cut])
    await asyncio.sleep(0.05)  # TCP_NODELAY on the server: two segments, two reads
    await rig.server.send_raw(data[cut:])
    await rig.server.play(call[at + 1 :], speed=0)

    [record] = await rig.wait_records(1)
    assert record.caller_name == name
    assert record.caller == "+79161110007"
    assert rig.link.connects == 1


async def test_a_duplicated_event_header_does_not_kill_the_link(make_rig: RigFactory, calls: CallFactory) -> None:
    """panoramisk failure 2: it dies on a message with two ``Event:`` headers."""
    rig = await make_rig()
    first_call = calls.direct_answered("+79161110008", "Дмитрий", "+74950000001", "101", ring=1.0, talk=2.0)
    at = next(i for i, (_, msg) in enumerate(first_call) if msg["Event"] == "Newstate")
    await rig.server.play(first_call[:at], speed=0)
    newstate = encode_message(first_call[at][1])
    assert newstate.startswith(b"Event: Newstate\r\n")
    await rig.server.send_raw(b"Event: Newstate\r\n" + newstate)  # the same header twice
    await rig.server.send_raw(  # two different values, on a channel nobody knows
        b"Event: Newstate\r\nEvent: Hangup\r\nPrivilege: call,all\r\nChannel: PJSIP/999-00000000\r\n"
        b"Uniqueid: dup.1\r\nLinkedid: dup.1\r\n\r\n"
    )
    await rig.server.play(first_call[at + 1 :], speed=0)
    second_call = calls.direct_answered("+79161110009", "Елена", "+74950000002", "102", ring=1.0, talk=2.0)
    await rig.server.play(second_call, speed=0)

    records = await rig.wait_records(2)
    assert [(r.call_id, r.outcome, r.answered_by) for r in records] == [
        (call_id_of(first_call), "answered", "101"),
        (call_id_of(second_call), "answered", "102"),
    ]
    assert rig.link.connects == 1 and rig.link.is_connected


# -- rights ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("write_perms", "dangerous"),
    [
        # manager.conf write classes -> the dangerous ones the gateway must report
        (None, set()),  # the server's default: originate,call
        ({"originate", "call", "reporting"}, set()),  # reporting lists CoreShowChannels (system,reporting)
        ({"originate", "call", "command"}, {"command"}),
        ({"originate", "config"}, {"config"}),  # lists GetConfig and Reload (system,config) too
        ({"originate", "system"}, {"system"}),
        ({"system", "command", "config", "originate", "call", "reporting"}, {"system", "command", "config"}),
    ],
)
async def test_write_rights_are_read_from_list_commands(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture, write_perms: set[str] | None, dangerous: set[str]
) -> None:
    caplog.set_level(logging.WARNING)
    rig = await make_rig(server={} if write_perms is None else {"write_perms": write_perms})
    await until(lambda: rig.actions("ListCommands") == 1, 1.0, "ListCommands")
    assert rig.link.write_rights == frozenset(dangerous)
    warnings = [
        r.getMessage() for r in caplog.records
        if r.levelno == logging.WARNING and r.name.startswith("connectors.ami") and "right" in r.getMessage()
    ]
    if dangerous:
        assert warnings and all(cls in warnings[0] for cls in dangerous), warnings
    else:
        assert warnings == []


# -- order and back-pressure ---------------------------------------------------------------------


async def test_events_leave_a_small_queue_in_arrival_order_and_none_is_lost(make_rig: RigFactory) -> None:
    rig = await make_rig(queue_size=5, consume=False, connect=False)
    while True:  # the login's and the resync's events, read as they come
        message, _received_at = await asyncio.wait_for(rig.link.events.get(), 5.0)
        if message.get("Event") == "CoreShowChannelsComplete":
            break
    await until(lambda: rig.actions("QueueStatus") == 1, 2.0, "the resync")
    await asyncio.sleep(0.05)
    while not rig.link.events.empty():
        rig.link.events.get_nowait()
    # Newstate of channels nobody knows: events the link keeps, that change no call.
    burst = b"".join(
        encode_message({"Event": "Newstate", "Privilege": "call,all", "Channel": f"PJSIP/9{n:03d}-00000000",
                        "ChannelStateDesc": "Up", "Uniqueid": f"seq.{n}", "Linkedid": f"seq.{n}"})
        for n in range(200)
    )
    await rig.server.send_raw(burst)  # one write: the link reads far more than 5 events at once
    seen: list[str] = []
    while len(seen) < 200:
        message, _received_at = await asyncio.wait_for(rig.link.events.get(), 2.0)
        seen.append(str(message["Uniqueid"]))
        if len(seen) % 10 == 0:
            await asyncio.sleep(0.001)  # a consumer slower than the socket
    assert seen == [f"seq.{n}" for n in range(200)]
    assert rig.link.queue_full_count > 0
    assert rig.link.connects == 1


async def test_a_burst_of_calls_through_a_small_queue_is_recorded_whole(
    make_rig: RigFactory, calls: CallFactory
) -> None:
    """One consumer applies every call's events in order: nothing lost when the
    queue fills, and who rang first stays first."""
    rig = await make_rig(queue_size=5)
    agents = ("101", "102", "103", "104")
    scenarios: list[tuple[Scenario, str, tuple[str, str]]] = []
    kept = 0
    while kept < 200:
        n = len(scenarios)
        number, pair = f"+7916222{n:04d}", (agents[n % 4], agents[(n + 1) % 4])
        scenario = calls.ring_group(number, f"Клиент {n}", "+74950000001", pair, answering=pair[0], ring=1.0,
                                    talk=2.0)
        scenarios.append((scenario, number, pair))
        kept += sum(1 for _, msg in scenario if msg["Event"] in AmiNormaliser.HANDLED_EVENTS)
    mixed = interleave((s for s, _, _ in scenarios), random.Random(7))
    await rig.server.send_raw(b"".join(encode_message(msg) for msg in mixed))

    records = await rig.wait_records(len(scenarios), timeout=15.0)
    await asyncio.sleep(0.2)
    assert len(records) == len(scenarios)
    by_id = {r.call_id: r for r in records}
    for scenario, number, pair in scenarios:
        record = by_id[call_id_of(scenario)]
        assert (record.caller, record.outcome, record.answered_by, record.rang, record.talked) == (
            number, "answered", pair[0], pair, (pair[0],)
        )
        assert record.interrupted is False
    assert rig.link.queue_full_count > 0
    assert rig.link.connects == 1


# -- the fake PBX answers like Asterisk 22 -----------------------------------------------------------


async def test_server_lists_live_channels_like_the_resync_capture(calls: CallFactory) -> None:
    captured = [m for m in capture_messages("resync_snapshot") if m.get("Event") == "CoreShowChannel"]
    async with AmiServer(failed_login_delay=0) as server:
        call = calls.direct_answered("+79161110010", "Тест", "+74950000001", "101", ring=1.0, talk=5.0)
        first, rest = split_after_last(call, "BridgeEnter")
        await server.play(first, speed=0)
        client = await Client.connect(server.port)
        await client.login()
        action_id = client.send("CoreShowChannels")
        response = await client.read()
        assert list(response) == ["Response", "ActionID", "EventList", "Message"]
        items = [await client.read(), await client.read()]
        complete = await client.read()
        assert [list(m) for m in items] == [list(captured[0])] * 2  # same headers, same order
        assert {m["Uniqueid"] for m in items} == {msg["Uniqueid"] for _, msg in first if msg["Event"] == "Newchannel"}
        assert items[0]["BridgeId"] == items[1]["BridgeId"] != ""
        assert all(m["ActionID"] == action_id and m["ChannelStateDesc"] == "Up" for m in items)
        assert complete == {"Event": "CoreShowChannelsComplete", "ActionID": action_id, "EventList": "Complete",
                            "ListItems": "2"}
        await server.play(rest, speed=0)
        assert server.live.channels == {}
        await client.close()


async def test_server_queue_status_and_list_commands(calls: CallFactory) -> None:
    async with AmiServer(failed_login_delay=0, write_perms={"originate", "call", "command"}) as server:
        call = calls.queue("+79161110011", "Очередь", "+74950000003")
        at = next(i for i, (_, msg) in enumerate(call) if msg["Event"] == "QueueCallerJoin")
        await server.play(call[: at + 1], speed=0)
        client = await Client.connect(server.port)
        await client.login()
        action_id = client.send("QueueStatus")
        assert (await client.read())["Message"] == "Queue status will follow"
        params, entry, complete = await client.read(), await client.read(), await client.read()
        assert params["Event"] == "QueueParams" and params["Calls"] == "1"
        assert list(entry) == ["Event", "Queue", "Position", "Channel", "Uniqueid", "CallerIDNum", "CallerIDName",
                               "ConnectedLineNum", "ConnectedLineName", "Wait", "Priority", "ActionID"]
        assert (entry["Queue"], entry["Position"], entry["CallerIDNum"]) == ("sales", "1", "+79161110011")
        assert complete["ListItems"] == "2" and complete["ActionID"] == action_id

        client.send("ListCommands")
        listing = await client.read()
        assert listing["Ping"] == "Keepalive command.  (Priv: <none>)"
        assert listing["Originate"] == "Originate a call.  (Priv: originate,all)"
        assert listing["Command"] == "Execute Asterisk CLI Command.  (Priv: command,all)"
        assert "UpdateConfig" not in listing and "ModuleLoad" not in listing
        await client.close()



async def test_server_shutdown_event_is_the_captured_one_then_the_socket_closes() -> None:
    expected_shutdown = next(m for m in capture_messages("restart") if m.get("Event") == "Shutdown")
    async with AmiServer(failed_login_delay=0) as server:
        client = await Client.connect(server.port)
        await client.login()
        await server.shutdown_event()
        assert await client.read() == expected_shutdown
        assert await client.closed_by_server()
        await client.close()
