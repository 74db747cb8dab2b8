"""The routing decision over a real store of contacts: the assigned manager
when he can take the call, VIP fallback, blacklist, after hours, the sticky
window, availability (connected, on a call, paused, wrap-up)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from connectors.ami.scenarios import CallFactory
from crm_bridge.contacts import Contacts, e164
from crm_bridge.store import Store
from gateway.numberplan import PlanBook
from gateway.presence import Presence
from gateway.routing import RouteDecision, Router
from gateway.tracker import CallTracker
from gateway.users import Directory
from tests.harness import default_users
from tests.test_numberplan import example_plan
from tests.test_tracker_scenarios import run

MOSCOW = ZoneInfo("Europe/Moscow")
OPEN = datetime(2027, 3, 3, 12, 0, tzinfo=MOSCOW).timestamp()  # a Wednesday noon: shop A open
CLOSED = datetime(2027, 3, 3, 22, 30, tzinfo=MOSCOW).timestamp()
SHOP_A_YANDEX = "+74950000003"


class World:
    """Real contacts, tracker and presence; a settable clock and the set of connected logins."""

    def __init__(self, store: Store) -> None:
        self.now = OPEN
        self.connected = {"anna", "boris", "vera"}
        self.tracker = CallTracker()
        self.directory = Directory(default_users())
        self.contacts = Contacts(store, clock=lambda: self.now)
        self.presence = Presence(
            connected=lambda login: login in self.connected,
            busy_extensions=self.tracker.busy_extensions,
            extensions_of=lambda login: u.extensions if (u := self.directory.by_login(login)) else (),
            clock=lambda: self.now,
            wrap_up_seconds=30.0,
        )
        self.router = Router(
            contacts=self.contacts, plans=PlanBook(example_plan()), directory=self.directory,
            presence=self.presence, clock=lambda: self.now,
            normalise=_e164,
            vip_fallback="vip",
        )

    async def decide(self, caller: str = "+79161110001") -> RouteDecision:
        return await self.router.decide(caller, SHOP_A_YANDEX)


def _e164(raw: str) -> str | None:
    return e164(raw, "RU")


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        w = World(store)
        await w.contacts.put("+79161110001", {"name": "Иван Петров", "manager": "vera"}, set_by="olga")
        yield w
    finally:
        await store.close()


async def _seen(world: World, phone: str, days_ago: float) -> None:
    """Give the contact a last call ``days_ago`` (through a real finished call)."""
    factory = CallFactory(start_epoch=world.now - days_ago * 86400)
    (record,), _ = run(factory.direct_answered(phone, "x", SHOP_A_YANDEX, "103"), CallTracker())
    record = replace(record, started_at=world.now - days_ago * 86400)
    await world.contacts.on_call_finished(record, shop="A", channel="yandex", manager_of=lambda e: None)


async def test_known_caller_goes_to_his_available_manager(world: World) -> None:
    await _seen(world, "+79161110001", days_ago=3)
    decision = await world.decide("89161110001")  # however the trunk writes it
    assert decision.variables() == {"ROUTE": "PJSIP/103", "ROUTE_REASON": "assigned_manager",
                                    "CONTACT_NAME": "Иван Петров", "SHOP": "A", "CHANNEL": "yandex",
                                    "AD_CHANNEL": "yandex"}


async def test_unknown_caller_sets_nothing(world: World) -> None:
    decision = await world.decide("+79169999999")
    assert decision.reason == "default" and decision.variables() == {}


async def test_outside_the_sticky_window_the_pbx_routes(world: World) -> None:
    await _seen(world, "+79161110001", days_ago=91)
    assert (await world.decide()).variables() == {}


async def test_vip_goes_to_manager_then_fallback(world: World) -> None:
    await world.contacts.put("+79161110001", {"vip": True}, set_by="olga")
    assert (await world.decide()).variables() == {
        "ROUTE": "PJSIP/103", "ROUTE_FALLBACK": "vip", "ROUTE_REASON": "vip", "CONTACT_NAME": "Иван Петров",
        "SHOP": "A", "CHANNEL": "yandex", "AD_CHANNEL": "yandex"}
    world.connected.discard("vera")  # manager away: the VIP queue directly
    decision = await world.decide()
    assert (decision.route, decision.fallback, decision.reason) == (None, "vip", "vip")


async def test_blacklisted_caller_gets_no_route(world: World) -> None:
    await _seen(world, "+79161110001", days_ago=1)
    await world.contacts.put("+79161110001", {"blacklisted": True}, set_by="olga")
    decision = await world.decide()
    assert decision.variables()["ROUTE_REASON"] == "blacklist" and "ROUTE" not in decision.variables()


async def test_after_hours_by_the_shops_clock(world: World) -> None:
    world.now = CLOSED
    decision = await world.decide()
    assert decision.variables() == {"ROUTE_REASON": "after_hours", "SHOP": "A", "CHANNEL": "yandex",
                                    "AD_CHANNEL": "yandex"}


async def test_a_manager_who_cannot_take_the_call_is_skipped(world: World) -> None:
    await _seen(world, "+79161110001", days_ago=1)
    world.presence.set_status("vera", "paused")
    assert (await world.decide()).reason == "default"
    world.presence.set_status("vera", "available")
    world.presence.call_ended_for("vera")  # wrap-up 30 s
    assert (await world.decide()).reason == "default"
    world.now += 31
    assert (await world.decide()).reason == "assigned_manager"
    # On another call: vera's phone is bridged in a call the tracker follows.
    scenario = CallFactory(start_epoch=world.now).direct_answered("+79160000000", "x", "+74950000001", "103")
    bridge = next(i for i, (_, m) in enumerate(scenario) if m.get("Event") == "BridgeEnter")
    run(scenario[: bridge + 2], world.tracker)
    assert "103" in world.tracker.busy_extensions()
    assert (await world.decide()).reason == "default"


class WaitingContacts:
    """The real contacts behind a store that answers only after ``delay``: a slow disk."""

    def __init__(self, contacts: Contacts, delay: float) -> None:
        self.contacts, self.delay = contacts, delay

    async def manager_for(self, phone: str) -> object:
        import asyncio

        await asyncio.sleep(self.delay)
        return await self.contacts.manager_for(phone)


async def test_fastagi_answers_with_the_route_of_the_assigned_manager(world: World) -> None:
    """What Asterisk's AGI(agi://.../route,${DID},${CALLERID(num)}) gets (see j_agi_route)."""
    from connectors.ami.fastagi import FastAgiServer
    from gateway.cli import agi_decider
    from tests.test_fastagi import agi_call

    await _seen(world, "+79161110001", days_ago=1)
    async with FastAgiServer(agi_decider(world.router), port=0, deadline=0.3) as server:
        session = await agi_call(server.port, args=("+74950000003", "+79161110001"))
    assert session.variables["ROUTE"] == "PJSIP/103"
    assert session.variables["ROUTE_REASON"] == "assigned_manager"


async def test_fastagi_sets_nothing_when_the_store_is_slower_than_the_deadline(world: World) -> None:
    from connectors.ami.fastagi import FastAgiServer
    from gateway.cli import agi_decider
    from tests.test_fastagi import agi_call

    await _seen(world, "+79161110001", days_ago=1)
    slow = Router(contacts=WaitingContacts(world.contacts, 1.0), plans=PlanBook(example_plan()),  # type: ignore[arg-type]
                  directory=world.directory, presence=world.presence, clock=lambda: world.now, normalise=_e164)
    async with FastAgiServer(agi_decider(slow), port=0, deadline=0.3) as server:
        session = await agi_call(server.port, args=("+74950000003", "+79161110001"))
    assert session.variables == {} and session.closed_after < 1.0
