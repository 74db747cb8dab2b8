"""The hub's websocket protocol (docs/websocket-protocol.md), end to end.

A whole gateway runs in the test's loop (tests/harness.py); calls are driven
from the PBX side, as raw bytes of the real Asterisk 22 captures or as scenarios
of the factory, sent whole or one message at a time to stop at a point of the
call; agents are real websocket clients (the ``websockets`` library) on
127.0.0.1. Nothing of the gateway is replaced.

"Nothing arrives" is shown by listening for a short while after the call's
record is stored: every frame of a call is queued before its record is saved.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from connectors.ami.link import RESYNC_ACTIONS
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import capture_stream
from gateway.auth import Signer
from gateway.config import HttpConfig
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, Harness

Frame = dict[str, Any]
Headers = Mapping[str, str | list[str]]

CRM_ORIGIN = "http://crm.example.com"  # in the harness's allow-list
CALLER = "+79161110042"
DID = "+74950000001"
QUIET = 0.3  # how long a client listens to show that nothing comes
EXTENSION = {"anna": "101", "boris": "102", "vera": "103"}


@asynccontextmanager
async def running(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Harness]:
    """A started Harness whose AMI link has finished its start-up actions.

    The link logs in, then sends ListCommands and the resync actions, each with
    ``asyncio.wait_for``; on Python 3.11 a cancel that lands as a response
    arrives is swallowed by wait_for, and ``AmiLink.close()`` then waits for
    ever (reported). A test that ends within milliseconds of the start would
    close the link in that window, so every test waits until the resync is
    answered: one Ping sent after the last resync action.
    """
    async with Harness(tmp_path, **kwargs) as harness:
        for _ in range(500):
            if any(action.get("Action") == RESYNC_ACTIONS[-1] for action in harness.ami.actions):
                break
            await asyncio.sleep(0.01)
        await harness.link.action("Ping", timeout=5)
        yield harness


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as harness:
        yield harness


# -- clients ---------------------------------------------------------------------


class Tab:
    """One browser tab of an agent: an authenticated websocket and what it received."""

    def __init__(self, ws: ClientConnection, ready: Frame) -> None:
        self.ws = ws
        self.ready = ready
        self.frames: list[Frame] = []

    async def next(self, timeout: float = 5.0) -> Frame:
        frame: Frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.frames.append(frame)
        return frame

    async def until(self, wanted: Callable[[Frame], bool], timeout: float = 5.0) -> Frame:
        """Read frames until one is ``wanted``; return it."""
        while True:
            frame = await self.next(timeout)
            if wanted(frame):
                return frame

    async def quiet(self, timeout: float = QUIET) -> list[Frame]:
        """Whatever arrives until nothing has for ``timeout`` seconds."""
        got: list[Frame] = []
        try:
            while True:
                got.append(await self.next(timeout))
        except TimeoutError:
            return got

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))


async def open_ws(h: Harness, *, origin: str | None = None, **kwargs: Any) -> ClientConnection:
    return await connect(h.ws_url, origin=Origin(origin) if origin else None, proxy=None, compression=None,
                         open_timeout=5, close_timeout=2, **kwargs)


async def auth(ws: ClientConnection, token: str) -> Frame:
    """Send the auth frame; the server's answer (ready or error)."""
    await ws.send(json.dumps({"type": "auth", "token": token}))
    answer: Frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return answer


@asynccontextmanager
async def tab(h: Harness, login: str, *, origin: str | None = None) -> AsyncIterator[Tab]:
    ws = await open_ws(h, origin=origin)
    try:
        ready = await auth(ws, h.token(login))
        assert ready["type"] == "ready", ready
        yield Tab(ws, ready)
    finally:
        await ws.close()


async def refused(ws: ClientConnection, token: str) -> tuple[Frame, int | None]:
    """Authenticate with a token that must fail: the error frame and the close code."""
    error = await auth(ws, token)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    return error, closed.value.rcvd.code if closed.value.rcvd else None


# -- driving calls from the PBX side --------------------------------------------------


def capture_messages(name: str) -> list[bytes]:
    """A capture's events, one message (with its blank line) each."""
    data = capture_stream(CAPTURES / f"{name}.ami")
    return [chunk + b"\r\n\r\n" for chunk in data.split(b"\r\n\r\n") if chunk]


def headers_of(message: bytes) -> dict[str, str]:
    lines = message.decode().split("\r\n")
    return dict(line.split(": ", 1) for line in lines if ": " in line)


def rings(extension: str) -> Callable[[Headers], bool]:
    """The message in which this extension's phone starts ringing."""
    def match(msg: Headers) -> bool:
        channel = msg.get("Channel", "")
        return (msg.get("Event") == "Newstate" and msg.get("ChannelStateDesc") == "Ringing"
                and isinstance(channel, str) and channel.startswith(f"PJSIP/{extension}-"))
    return match


def event_on(event: str, extension: str) -> Callable[[Headers], bool]:
    def match(msg: Headers) -> bool:
        channel = msg.get("Channel", "")
        return msg.get("Event") == event and isinstance(channel, str) and channel.startswith(f"PJSIP/{extension}-")
    return match


async def send_capture_until(h: Harness, messages: list[bytes], stop: Callable[[Headers], bool]) -> list[bytes]:
    """Send messages up to and including the first that ``stop`` matches; the rest."""
    for index, message in enumerate(messages):
        if stop(headers_of(message)):
            await h.ami.send_raw(b"".join(messages[: index + 1]))
            return messages[index + 1:]
    raise AssertionError("no message matched")


async def play_until(h: Harness, scenario: Scenario, stop: Callable[[Headers], bool]) -> Scenario:
    """Send a scenario's messages one at a time up to and including the first that
    ``stop`` matches; the rest."""
    for index, (_, message) in enumerate(scenario):
        await h.ami.send_event(message)
        if stop(message):
            return scenario[index + 1:]
    raise AssertionError("no message matched")


# -- reading what agents got -------------------------------------------------------------


def story(frames: Sequence[Frame]) -> list[tuple[str, str]]:
    """What a page shows, step by step: ("pop", state), ("update", state) or
    ("withdraw", reason). An update that only brings history (the state is
    unchanged) is left out: when it comes depends on the store's speed."""
    steps: list[tuple[str, str]] = []
    state: dict[str, str] = {}
    for frame in frames:
        pop_id = frame.get("pop_id", "")
        if frame["type"] == "pop":
            steps.append(("pop", frame["state"]))
            state[pop_id] = frame["state"]
        elif frame["type"] == "update" and state.get(pop_id) != frame["state"]:
            steps.append(("update", frame["state"]))
            state[pop_id] = frame["state"]
        elif frame["type"] == "withdraw":
            steps.append(("withdraw", frame["reason"]))
    return steps


def without_history(card: Frame) -> Frame:
    return {k: v for k, v in card.items() if k not in ("recent_calls", "open_missed_calls")}


async def metric(h: Harness, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{h.url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


class FakeClock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: tokens carry their expiry to the millisecond

    def __call__(self) -> float:
        return self.now


TALKED = [("pop", "ringing"), ("update", "talking"), ("update", "ended")]
STOPPED = [("pop", "ringing"), ("withdraw", "stopped_ringing")]


# -- authentication ---------------------------------------------------------------------------


async def test_a_valid_token_gets_ready_with_the_agent(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        assert anna.ready["agent"] == {"login": "anna", "name": "Анна Иванова", "extensions": ["101"]}
        assert abs(datetime.fromisoformat(anna.ready["server_time"]).timestamp() - time.time()) < 60
        assert await anna.quiet() == []  # no call rings: nothing is re-sent


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]


@pytest.mark.parametrize("forge", ["signature", "body", "other_secret"])
async def test_a_forged_token_is_refused(h: Harness, forge: str) -> None:
    token = h.token("anna")
    if forge == "signature":
        token = _flip(token, len(token) - 2)
    elif forge == "body":
        token = _flip(token, 3)
    else:
        token = Signer(b"some-other-secret-0123456789", time.time).issue("ws", "anna", 300)[0]
    ws = await open_ws(h)
    error, code = await refused(ws, token)
    assert error == {"type": "error", "code": "auth_failed", "message": "bad signature"}
    assert code == 4401


@pytest.mark.parametrize("login", ["mark", "nobody"])
async def test_a_token_for_a_marketer_or_nobody_is_refused(h: Harness, login: str) -> None:
    ws = await open_ws(h)
    error, code = await refused(ws, h.token(login))
    assert (error["code"], code) == ("auth_failed", 4401)
    assert error["message"] == "no such user, or a role that gets no pops or notices"


@pytest.mark.parametrize("login", ["olga", "admin"])
async def test_managers_and_admins_connect_for_notices_and_get_no_pops(h: Harness, login: str) -> None:
    ws = await open_ws(h)
    ready = await auth(ws, h.token(login))
    assert (ready["type"], ready["agent"]["login"], ready["agent"]["extensions"]) == ("ready", login, [])
    await ws.close()


async def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    clock = FakeClock()
    async with running(tmp_path, clock=clock) as h:
        token = h.token("anna", ttl=60)
        clock.now += 60
        ws = await open_ws(h)
        error, code = await refused(ws, token)
        assert (error["code"], error["message"], code) == ("auth_failed", "token expired", 4401)
        clock.now -= 0.5  # the same token, still valid a moment earlier
        ws = await open_ws(h)
        assert (await auth(ws, token))["type"] == "ready"
        await ws.close()


async def test_a_session_cookie_is_not_a_websocket_token(h: Harness) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{h.url}/api/login", json={"login": "anna", "password": PASSWORD}) as response:
            assert response.status == 200
            cookie = response.cookies["cti_session"].value
    ws = await open_ws(h)
    error, code = await refused(ws, cookie)
    assert (error["code"], error["message"], code) == ("auth_failed", "not a ws token", 4401)


@pytest.mark.parametrize("first", ['{"type": "ping"}', "not json", '["auth"]', '{"type": "auth", "token": 5}'])
async def test_the_first_frame_must_be_auth(h: Harness, first: str) -> None:
    ws = await open_ws(h)
    await ws.send(first)
    error = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert error["type"] == "error" and error["code"] == "bad_frame"
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def test_a_token_with_non_ascii_characters_is_refused_cleanly(h: Harness) -> None:
    """Regression: hmac.compare_digest(str, str) raised TypeError and the handler crashed."""
    ws = await open_ws(h)
    error, code = await refused(ws, h.token("anna")[:-1] + "é")
    assert (error["code"], code) == ("auth_failed", 4401)


@pytest.mark.parametrize("origin", ["http://evil.example.com", "https://crm.example.com",
                                    "http://crm.example.com.evil.example.com", "http://crm.example.com:8080",
                                    "null"])
async def test_a_foreign_origin_is_refused_at_the_upgrade(h: Harness, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused_upgrade:
        await open_ws(h, origin=origin)
    assert refused_upgrade.value.response.status_code == 403
    assert h.hub.online() == {}


@pytest.mark.parametrize("origin", [CRM_ORIGIN, "own", None])
async def test_allowed_origins_and_no_origin_connect(h: Harness, origin: str | None) -> None:
    async with tab(h, "anna", origin=h.url if origin == "own" else origin) as anna:
        assert anna.ready["agent"]["login"] == "anna"
        assert h.hub.online() == {"anna": 1}


# -- pops, updates and withdraws -------------------------------------------------------------


# capture -> what each agent's page shows; agents not named get nothing at all.
CAPTURE_STORIES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "a_answered": {"anna": TALKED},
    "b_missed": {"anna": STOPPED},
    "c_abandoned_ringing": {"anna": [("pop", "ringing"), ("withdraw", "caller_hung_up")]},
    "e_queue_answered": {"anna": STOPPED, "boris": TALKED},
    "f_queue_abandoned": {"anna": STOPPED, "boris": [("pop", "ringing"), ("withdraw", "caller_hung_up")]},
    "g_click_to_call": {},  # anna places the call: her own phone ringing first is no offer
    "h1_blind_transfer": {"anna": TALKED, "boris": TALKED},
    "i_busy": {},  # 101 answers busy at once: it never rings
    "j_agi_route": {"vera": TALKED},
    "k_agi_fallback": {"anna": TALKED, "boris": [("pop", "ringing"), ("withdraw", "answered_elsewhere")]},
}


@pytest.mark.parametrize("capture", sorted(CAPTURE_STORIES))
async def test_each_capture_pops_exactly_the_agents_whose_phones_rang(h: Harness, capture: str) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris, tab(h, "vera") as vera:
        await h.ami.send_raw(capture_stream(CAPTURES / f"{capture}.ami"))
        [record] = await h.wait_records(1)
        tabs = {"anna": anna, "boris": boris, "vera": vera}
        for login, client in tabs.items():
            await client.quiet()
            assert story(client.frames) == CAPTURE_STORIES[capture].get(login, []), login
            # Every frame is about this call and this agent's own phone; one pop per pop id.
            pop_id = f"{record.call_id}/{EXTENSION[login]}"
            assert {(f["call_id"], f["pop_id"]) for f in client.frames} <= {(record.call_id, pop_id)}
            assert Counter(f["pop_id"] for f in client.frames if f["type"] == "pop")[pop_id] <= 1


async def test_a_direct_call_pops_only_the_ringing_agent(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris, tab(h, "vera") as vera:
        await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
        await h.wait_records(1)
        await anna.until(lambda f: f.get("state") == "ended")
        assert story(anna.frames) == TALKED
        assert {f["pop_id"] for f in anna.frames} == {"1795736348.0/101"}
        assert await boris.quiet() == []
        assert await vera.quiet() == []


async def test_a_colleague_answering_withdraws_the_pop_as_answered_elsewhere(h: Harness) -> None:
    """k_agi_fallback: Dial(101&102); 102's CANCEL comes a moment before 101's ANSWER."""
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        rest = await send_capture_until(h, capture_messages("k_agi_fallback"), rings("102"))
        assert (await anna.next())["type"] == "pop"
        assert (await boris.next())["type"] == "pop"
        rest = await send_capture_until(h, rest, event_on("Hangup", "102"))  # cause 26
        withdraw = await boris.until(lambda f: f["type"] != "update")
        assert withdraw == {"type": "withdraw", "pop_id": "1795736538.32/102", "call_id": "1795736538.32",
                            "reason": "answered_elsewhere"}
        await anna.until(lambda f: f.get("state") == "talking")
        await h.ami.send_raw(b"".join(rest))
        await h.wait_records(1)
        assert await boris.quiet() == []  # nothing more after the withdraw


async def test_the_queue_moving_on_withdraws_with_stopped_ringing(h: Harness) -> None:
    """e_queue_answered: 101 rings, the queue moves on to 102, who answers."""
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        rest = await send_capture_until(h, capture_messages("e_queue_answered"), rings("101"))
        assert (await anna.next())["type"] == "pop"
        rest = await send_capture_until(h, rest, event_on("Hangup", "101"))
        assert await boris.quiet() == []  # 102 has not rung yet
        rest = await send_capture_until(h, rest, rings("102"))
        assert (await boris.next())["type"] == "pop"
        await h.ami.send_raw(b"".join(rest))
        await h.wait_records(1)
        await anna.quiet()
        await boris.quiet()
        assert story(anna.frames) == STOPPED
        assert story(boris.frames) == TALKED


async def test_a_blind_transfer_pops_the_target_when_his_phone_rings(h: Harness) -> None:
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        rest = await send_capture_until(h, capture_messages("h1_blind_transfer"),
                                        lambda m: m.get("Event") == "BlindTransfer")
        await anna.until(lambda f: f.get("state") == "talking")
        rest = await send_capture_until(h, rest, event_on("Newchannel", "102"))
        assert await boris.quiet() == []  # his channel exists, his phone does not ring yet
        rest = await send_capture_until(h, rest, rings("102"))
        pop = await boris.next()
        assert (pop["type"], pop["pop_id"], pop["state"]) == ("pop", "1795736459.17/102", "ringing")
        assert pop["card"]["caller"]["e164"] == "+79161110008"
        await h.ami.send_raw(b"".join(rest))
        await h.wait_records(1)
        await boris.quiet()
        await anna.quiet()
        assert story(boris.frames) == TALKED
        assert story(anna.frames) == TALKED


async def test_answering_keeps_the_card(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
        pop = await anna.until(lambda f: f["type"] == "pop")
        talking = await anna.until(lambda f: f.get("state") == "talking")
        ended = await anna.until(lambda f: f.get("state") == "ended")
        for update in (talking, ended):
            assert update["type"] == "update"
            assert (update["pop_id"], update["call_id"]) == (pop["pop_id"], pop["call_id"])
            assert without_history(update["card"]) == without_history(pop["card"])


async def test_history_follows_the_pop_as_an_update(h: Harness) -> None:
    f = CallFactory()
    async with tab(h, "anna") as anna:
        # The first call from this number: the history is empty, and says so.
        rest = await play_until(h, f.direct_answered(CALLER, "Иван", DID, "101"), rings("101"))
        pop = await anna.next()
        assert pop["type"] == "pop" and pop["card"]["recent_calls"] is None
        assert pop["card"]["open_missed_calls"] is None
        update = await anna.next()
        assert (update["type"], update["state"], update["pop_id"]) == ("update", "ringing", pop["pop_id"])
        assert (update["card"]["recent_calls"], update["card"]["open_missed_calls"]) == ([], 0)
        assert without_history(update["card"]) == without_history(pop["card"])
        await h.ami.play(rest, speed=0)
        await h.wait_records(1)
        # Six more calls from the number; the eighth pop lists the latest five, newest first.
        for n in range(2, 8):
            await h.ami.play(f.direct_missed(CALLER, "Иван", DID, "101"), speed=0)
            await h.wait_records(n)
        await anna.quiet()
        anna.frames.clear()
        await play_until(h, f.direct_answered(CALLER, "Иван", DID, "101"), rings("101"))
        pop = await anna.until(lambda f: f["type"] == "pop")
        update = await anna.next()
        assert (update["type"], update["state"], update["pop_id"]) == ("update", "ringing", pop["pop_id"])
        recent = update["card"]["recent_calls"]
        expected = [r.call_id for r in sorted(h.records, key=lambda r: r.started_at, reverse=True)[:5]]
        assert [c["call_id"] for c in recent] == expected
        assert pop["call_id"] not in expected
        assert recent[0] == {"call_id": h.records[-1].call_id, "started_at": recent[0]["started_at"],
                             "direction": "inbound", "outcome": "missed", "answered_by": None, "result": None,
                             "note": None}
        assert update["card"]["open_missed_calls"] == 1  # six missed calls: one callback task


async def test_history_lists_the_previous_call_of_the_number(h: Harness) -> None:
    f = CallFactory()
    async with tab(h, "anna") as anna:
        await h.ami.play(f.direct_answered(CALLER, "Иван", DID, "101"), speed=0)
        [first] = await h.wait_records(1)
        await anna.quiet()
        await play_until(h, f.direct_answered(CALLER, "Иван", DID, "101"), rings("101"))
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["call_id"] != first.call_id
        update = await anna.next()
        assert update["type"] == "update" and update["state"] == "ringing"
        [previous] = update["card"]["recent_calls"]
        assert (previous["call_id"], previous["outcome"], previous["answered_by"]) == (first.call_id, "answered", "101")
        assert update["card"]["open_missed_calls"] == 0


async def test_history_finds_the_number_however_the_trunk_wrote_it(h: Harness) -> None:
    """Regression: history was looked up by the raw caller id, so 8916... never found +7916..."""
    f = CallFactory()
    async with tab(h, "anna") as anna:
        await h.ami.play(f.direct_answered("89161110042", "Иван", DID, "101"), speed=0)
        [first] = await h.wait_records(1)
        await anna.quiet()
        await play_until(h, f.direct_answered(CALLER, "Иван", DID, "101"), rings("101"))
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["caller"]["e164"] == CALLER
        update = await anna.next()
        assert [c["call_id"] for c in update["card"]["recent_calls"]] == [first.call_id]


async def test_a_withheld_number_has_no_history(h: Harness) -> None:
    """Regression: every 'anonymous' caller got the previous anonymous callers' calls as history."""
    f = CallFactory()
    async with tab(h, "anna") as anna:
        await h.ami.play(f.direct_answered("anonymous", "Someone", DID, "101"), speed=0)
        await h.wait_records(1)
        await anna.quiet()
        anna.frames.clear()
        await play_until(h, f.direct_answered("anonymous", "Someone else", DID, "101"), rings("101"))
        pop = await anna.next()
        assert pop["card"]["caller"]["e164"] is None and pop["card"]["caller"]["display"] == "anonymous"
        for frame in await anna.quiet():
            assert not frame["card"]["recent_calls"], "another caller's calls shown as this caller's history"


# -- reconnects, tabs and duplicates ------------------------------------------------------


async def test_a_reconnecting_tab_gets_its_live_pops_again(h: Harness) -> None:
    rest = capture_messages("a_answered")
    async with tab(h, "anna") as first:
        rest = await send_capture_until(h, rest, rings("101"))
        pop = await first.until(lambda f: f["type"] == "pop")
        await first.quiet()  # the history update, if any
    async with tab(h, "anna") as second:
        again = await second.next()
        assert (again["type"], again["pop_id"], again["call_id"], again["state"]) == (
            "pop", pop["pop_id"], pop["call_id"], "ringing")
        assert without_history(again["card"]) == without_history(pop["card"])
        assert await second.quiet() == []
        rest = await send_capture_until(h, rest, lambda m: m.get("Event") == "BridgeEnter")
        assert (await second.next())["state"] == "talking"
    async with tab(h, "anna") as third:  # talking pops are re-sent too
        again = await third.next()
        assert (again["type"], again["pop_id"], again["state"]) == ("pop", pop["pop_id"], "talking")
        await h.ami.send_raw(b"".join(rest))
        await h.wait_records(1)
        await third.until(lambda f: f.get("state") == "ended")
    async with tab(h, "anna") as fourth:
        assert await fourth.quiet() == []  # the call ended: nothing to re-send


async def test_two_tabs_of_one_agent_both_get_every_frame(h: Harness) -> None:
    async with tab(h, "anna") as one, tab(h, "anna") as two, tab(h, "boris") as boris:
        assert h.hub.online() == {"anna": 2, "boris": 1}
        await h.ami.send_raw(capture_stream(CAPTURES / "k_agi_fallback.ami"))
        await h.wait_records(1)
        await one.quiet()
        await two.quiet()
        assert story(one.frames) == TALKED
        assert one.frames == two.frames
        await boris.quiet()
        assert story(boris.frames) == [("pop", "ringing"), ("withdraw", "answered_elsewhere")]


async def test_no_pop_id_is_popped_twice_over_several_calls(h: Harness) -> None:
    f = CallFactory()
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        for scenario in (f.ring_group(CALLER, "A", DID, ("101", "102"), answering="102"),
                         f.ring_group(CALLER, "B", DID, ("101", "102"), answering="101"),
                         f.queue(CALLER, "C", DID, members=("101", "102"), answering="102"),
                         f.abandoned_ringing(CALLER, "D", DID, "102")):
            await h.ami.play(scenario, speed=0)
        records = await h.wait_records(4)
        await anna.quiet()
        await boris.quiet()
        for client in (anna, boris):
            pops = Counter(frame["pop_id"] for frame in client.frames if frame["type"] == "pop")
            assert pops and max(pops.values()) == 1
        assert not {f["pop_id"] for f in anna.frames} & {f["pop_id"] for f in boris.frames}
        assert len({r.call_id for r in records}) == 4


async def test_a_queue_that_comes_back_to_an_agent_pops_the_same_id_again(h: Harness) -> None:
    """Queue 101, 102 (linear, 8 s each): 101 rings, 102 rings, 101 rings again, then the
    queue times out. The protocol: a new pop with the same pop_id follows the withdraw."""
    f = CallFactory()
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await h.ami.play(f.queue(CALLER, "Q", DID, members=("101", "102"), answering=None, timeout=20), speed=0)
        [record] = await h.wait_records(1)
        assert [leg.extension for leg in record.legs[1:]] == ["101", "102", "101"]
        await anna.quiet()
        await boris.quiet()
        assert story(anna.frames) == STOPPED + STOPPED
        assert {f["pop_id"] for f in anna.frames} == {f"{record.call_id}/101"}
        assert story(boris.frames) == STOPPED


# -- slow clients ---------------------------------------------------------------------------------


@asynccontextmanager
async def never_reading_tab(h: Harness, login: str) -> AsyncIterator[ClientConnection]:
    """A tab that authenticates, then never reads: a small receive buffer and a
    client queue of one frame, so the server's socket fills up soon."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", h.port))
    ws = await connect(h.ws_url, sock=sock, proxy=None, compression=None, max_queue=1, open_timeout=5)
    try:
        assert (await auth(ws, h.token(login)))["type"] == "ready"
        yield ws
    finally:
        ws.transport.abort()


async def test_a_slow_tab_is_dropped_and_never_delays_the_others(tmp_path: Path) -> None:
    # Large cards (a long CRM link) fill the slow tab's socket buffers in a few calls.
    http = HttpConfig(host="127.0.0.1", port=0, allowed_origins=(CRM_ORIGIN,),
                      crm_url_template="https://crm.example.com/contacts?phone={phone}&pad=" + "x" * 100_000)
    async with running(tmp_path, http=http) as h:
        h.hub.queue_size = 8
        f = CallFactory()
        async with never_reading_tab(h, "anna") as slow, tab(h, "anna") as normal, tab(h, "boris") as boris:
            calls = 0
            while await metric(h, "cti_hub_slow_clients_dropped_total") == 0:
                assert calls < 60, "the tab that never reads was never dropped"
                await h.ami.play(f.direct_answered(CALLER, "Slow", DID, "101", ring=0, talk=0), speed=0)
                calls += 1
                # The other tab of the same agent gets the whole call while the slow one is stuck.
                await normal.until(lambda fr: fr.get("state") == "ended")
                await h.wait_records(calls)
            assert calls > 1  # it was dropped for falling behind, not at once
            # Everyone else goes on: the normal tab, another agent.
            await h.ami.play(f.ring_group(CALLER, "After", DID, ("101", "102"), answering="102"), speed=0)
            await normal.until(lambda fr: fr["type"] == "withdraw")
            await boris.until(lambda fr: fr.get("state") == "ended")
            await normal.send({"type": "ping"})
            await normal.until(lambda fr: fr["type"] == "pong")
            assert await metric(h, "cti_hub_slow_clients_dropped_total") == 1
            # The slow tab, once it reads, finds the server closed it as too slow.
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(slow.recv(), 15)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4408, "too slow")
            assert h.hub.online() == {"anna": 1, "boris": 1}


async def test_a_burst_of_pings_from_a_reading_tab_is_answered(h: Harness) -> None:
    """Regression: the handler read a burst of frames without yielding, so the pongs overflowed
    the send queue before the sender ran and a tab that reads promptly was dropped as too slow."""
    h.hub.queue_size = 8
    async with tab(h, "anna") as anna:
        await asyncio.gather(*(anna.send({"type": "ping"}) for _ in range(20)))
        pongs = [await anna.next() for _ in range(20)]
        assert pongs == [{"type": "pong"}] * 20


# -- the card --------------------------------------------------------------------------------------


async def test_the_card_of_a_russian_number(h: Harness) -> None:
    f = CallFactory()
    async with tab(h, "anna") as anna:
        await play_until(h, f.direct_answered("89161110042", "Иван Петров", "+74950000002", "101"), rings("101"))
        pop = await anna.next()
    assert pop["card"] == {
        "direction": "inbound",
        "caller": {"e164": "+79161110042", "display": "+7 916 111-00-42", "raw": "89161110042",
                   "name": "Иван Петров"},
        "dialled": {"e164": "+74950000002", "display": "+7 495 000-00-02", "raw": "+74950000002"},
        "shop": "+74950000002",  # the DID stands in for shop and channel without a number plan
        "shop_id": None,
        "channel": "+74950000002",
        "campaign": None,
        "contact": None,
        "assigned_manager": None,
        "vip": False,
        "recent_calls": None,
        "open_missed_calls": None,
        "crm_url": None,  # no template configured
    }
    assert pop["pop_id"] == f"{pop['call_id']}/101"
    assert abs(datetime.fromisoformat(pop["at"]).timestamp() - time.time()) < 60


async def test_the_crm_link_comes_from_the_http_config(tmp_path: Path) -> None:
    http = HttpConfig(host="127.0.0.1", port=0, allowed_origins=(CRM_ORIGIN,),
                      crm_url_template="https://crm.example.com/contacts?phone={phone}")
    async with running(tmp_path, http=http) as h, tab(h, "anna") as anna:
        await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
        pop = await anna.until(lambda f: f["type"] == "pop")
        assert pop["card"]["crm_url"] == "https://crm.example.com/contacts?phone=%2B79161110001"


# -- client frames ------------------------------------------------------------------------------------


async def test_ping_gets_pong(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        await anna.send({"type": "ping"})
        assert await anna.next() == {"type": "pong"}


@pytest.mark.parametrize(("frame", "code"), [('{"type": "dance"}', "unknown_type"), ("{}", "unknown_type"),
                                             ("not json", "bad_frame"), ("[1, 2]", "bad_frame")])
async def test_a_frame_the_server_cannot_use_gets_an_error_and_the_socket_stays(
        h: Harness, frame: str, code: str) -> None:
    async with tab(h, "anna") as anna:
        await anna.send(frame)
        error = await anna.next()
        assert (error["type"], error["code"]) == ("error", code)
        await anna.send({"type": "ack", "pop_id": "1.0/101"})  # accepted silently
        await anna.send({"type": "ping"})
        assert await anna.next() == {"type": "pong"}


async def test_a_frame_over_4_kib_closes_the_socket(h: Harness) -> None:
    async with tab(h, "anna") as anna:
        padded = '{"type": "ping"}'
        await anna.send(padded[:-1] + " " * (4095 - len(padded)) + "}")  # just under 4 KiB: fine
        assert await anna.next() == {"type": "pong"}
        await anna.send(padded[:-1] + " " * (4097 - len(padded)) + "}")
        with pytest.raises(ConnectionClosed) as closed:
            await anna.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    for _ in range(50):  # the server side detaches
        if not h.hub.online():
            break
        await asyncio.sleep(0.02)
    assert h.hub.online() == {}
