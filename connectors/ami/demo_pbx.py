"""The built-in demo PBX: an ``AmiServer`` that keeps calls coming.

``DemoPbx.run`` starts a random call every ``interval`` seconds, each one a
scenario from ``CallFactory`` played in its own task (calls overlap; the events
of one call stay in order), until it is cancelled or, given ``calls``, until
that many calls have been played. The mix follows the reference number plan of
``shared/ami-traces``: +74950000001 (shop A) rings agent 101 directly,
+74950000002 (shop B) the ring group 101+102, +74950000003 (yandex) the queue
``sales`` (101, 102, 103), +74950000004 (avito) the AGI route that falls back to
the ring group. Most calls are answered; some are missed, abandoned or busy;
a few are transferred; now and then an agent clicks to call a customer.

While ``run`` is active, an ``Originate`` a client sends (the gateway's
click-to-call) is answered as Asterisk would and followed by the matching
click-to-call events, with the action's ChannelId as the call's Linkedid.

With ``recordings_dir``, the demo also plays MixMonitor: each call that
records gets a short WAV file (two voices taking turns, a few seconds) under
the name its RECFILE gives, in that directory, as Asterisk would write it.

Callers come from a small pool of Russian (Cyrillic) and Latin names with
+7916... numbers, so the same customer calls again: a missed call is later
followed by an answered one, as in real life. Now and then an agent calls a
customer back whose call was missed (the oldest one waiting), so the demo's
missed-call tasks close by themselves. ``rng`` makes the run repeatable.
"""

from __future__ import annotations

import array
import asyncio
import logging
import math
import random
import wave
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Final

from connectors.ami.codec import AmiMessage
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import ActionHandler, AmiServer

__all__ = ["CUSTOMERS", "DemoPbx"]

log = logging.getLogger(__name__)

CUSTOMERS: Final[tuple[tuple[str, str], ...]] = (
    ("+79161234501", "Иван Петров"),
    ("+79161234502", "Ольга Смирнова"),
    ("+79161234503", "Алексей Кузнецов"),
    ("+79161234504", "Мария Иванова"),
    ("+79161234505", "Дмитрий Соколов"),
    ("+79161234506", "Екатерина Попова"),
    ("+79161234507", "Сергей Лебедев"),
    ("+79161234508", "Анна Козлова"),
    ("+79161234509", "Ivan Petrov"),
    ("+79161234510", "Olga Smirnova"),
    ("+79161234511", "John Miller"),
    ("+79161234512", "Anna Schmidt"),
    ("+79161234513", ""),  # no name sent by the network
    ("+79161234514", "Николай Волков"),
)
"""The demo's customers: (number, caller name)."""

SHOP_A: Final = "+74950000001"
SHOP_B: Final = "+74950000002"
YANDEX: Final = "+74950000003"
AVITO: Final = "+74950000004"
AGENTS: Final = ("101", "102", "103")
RING_GROUP: Final = ("101", "102")
QUEUE_MEMBERS: Final = ("101", "102", "103")


class DemoPbx:
    """Random, realistic calls on an ``AmiServer`` (already started by the caller)."""

    def __init__(
        self,
        server: AmiServer,
        *,
        rng: random.Random | None = None,
        factory: CallFactory | None = None,
        max_concurrent_calls: int = 200,
        recordings_dir: Path | None = None,
    ) -> None:
        if max_concurrent_calls < 1:
            raise ValueError("max_concurrent_calls must be positive")
        self.server = server
        self.rng = rng if rng is not None else random.Random()
        self.factory = factory if factory is not None else CallFactory(rng=self.rng)
        self.max_concurrent_calls = max_concurrent_calls
        self.recordings_dir = recordings_dir
        self.calls_started = 0
        """Random calls started by ``run`` (click-to-calls a client asked for not counted)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._missed: deque[str] = deque(maxlen=20)  # customers waiting for a call back, oldest first
        # (weight, builder): the mix of calls a small sales team sees.
        self._kinds: list[tuple[int, Callable[[], Scenario]]] = [
            (28, self._direct_answered),
            (5, self._direct_missed),
            (5, self._abandoned_ringing),
            (3, self._busy),
            (12, self._ring_group_answered),
            (3, self._ring_group_missed),
            (14, self._queue_answered),
            (5, self._queue_abandoned),
            (2, self._queue_timeout),
            (4, self._blind_transfer),
            (3, self._attended_transfer),
            (2, self._redirect),
            (5, self._click_to_call),
            (6, self._call_back),
        ]

    async def run(self, *, interval: float = 6.0, speed: float = 1.0, calls: int | None = None) -> None:
        """Start a call every ``interval`` seconds (real time) and play it at ``speed``
        (0: no sleeping). Runs until cancelled; with ``calls``, returns once that
        many calls have been started and played. Cancelling stops every call."""
        if interval < 0 or speed < 0:
            raise ValueError("interval and speed must be >= 0")
        previous = self.server.action_handlers.get("Originate")
        self.server.action_handlers["Originate"] = self._originate_handler(previous, speed)
        try:
            while calls is None or self.calls_started < calls:
                while len(self._tasks) >= self.max_concurrent_calls:
                    # Bounded: a tiny interval must not pile up unfinished calls.
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
                self.calls_started += 1
                self._start(self._next_call(), speed)
                await asyncio.sleep(interval)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        finally:
            if previous is None:
                self.server.action_handlers.pop("Originate", None)
            else:
                self.server.action_handlers["Originate"] = previous
            await self._stop()

    # -- plumbing ---------------------------------------------------------------

    def _start(self, scenario: Scenario, speed: float) -> None:
        task = asyncio.create_task(self._play(scenario, speed), name="demo-call")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _play(self, scenario: Scenario, speed: float) -> None:
        try:
            if self.recordings_dir is not None:
                await asyncio.to_thread(self._record, scenario)
            await self.server.play(scenario, speed=speed)
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken call must not stop the demo
            log.exception("demo call failed")

    def _record(self, scenario: Scenario) -> None:
        """MixMonitor's file for a call that records (its RECFILE), written as the call starts."""
        assert self.recordings_dir is not None
        name = next((str(m.get("Value", "")) for _, m in scenario
                     if m.get("Event") == "VarSet" and str(m.get("Variable", "")).lstrip("_") == "RECFILE"), "")
        name = name.rsplit("/", 1)[-1]
        if not name or name in (".", ".."):
            return
        self.recordings_dir.mkdir(parents=True, exist_ok=True)
        write_conversation(self.recordings_dir / name, seconds=self._uniform(4.0, 10.0))

    async def _stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _next_call(self) -> Scenario:
        weights = [weight for weight, _ in self._kinds]
        (_, build), = self.rng.choices(self._kinds, weights=weights)
        return build()

    def _originate_handler(self, previous: ActionHandler | None, speed: float) -> ActionHandler:
        def handle(action: AmiMessage) -> list[AmiMessage]:
            replies: list[AmiMessage] = (
                previous(action)
                if previous is not None
                else [{"Response": "Success", "Message": "Originate successfully queued"}]
            )
            if replies and replies[0].get("Response") == "Success":
                scenario = self._scenario_for_originate(action)
                if scenario is not None:
                    self._start(scenario, speed)
            return replies

        return handle

    def _scenario_for_originate(self, action: AmiMessage) -> Scenario | None:
        """The click-to-call an Originate(Channel=PJSIP/<agent>, Exten=<number>) places."""

        def header(name: str) -> str:
            value = next((v for k, v in action.items() if k.lower() == name.lower()), "")
            if isinstance(value, list):
                return value[0] if value else ""
            return value

        channel, customer = header("Channel"), header("Exten")
        if not channel.startswith("PJSIP/") or not customer or header("Application"):
            return None
        variables = action.get("Variable", [])
        values = [variables] if isinstance(variables, str) else variables
        outcid = next((v.split("=", 1)[1] for v in values if v.startswith("OUTCID=")), SHOP_A)
        channel_id = header("ChannelId") or f"c2c-{self.rng.getrandbits(48):012x}"
        return self.factory.click_to_call(
            channel.removeprefix("PJSIP/"),
            customer,
            outcid,
            channel_id=channel_id,
            answered=self.rng.random() < 0.8,
            action_id=header("ActionID") or None,
            account=header("Account"),
            agent_ring=self._uniform(1.0, 3.0),
            ring=self._uniform(2.0, 8.0),
            talk=self._uniform(10.0, 60.0),
        )

    # -- the call mix -------------------------------------------------------------

    def _uniform(self, low: float, high: float) -> float:
        return round(self.rng.uniform(low, high), 3)

    def _customer(self) -> tuple[str, str]:
        return self.rng.choice(CUSTOMERS)

    def _missed_customer(self) -> tuple[str, str]:
        """A customer whose call will not be answered: remembered for a call back."""
        number, name = self._customer()
        if number not in self._missed:
            self._missed.append(number)
        return number, name

    def _talk(self) -> float:
        return self._uniform(8.0, 90.0)

    def _direct_answered(self) -> Scenario:
        number, name = self._customer()
        return self.factory.direct_answered(
            number, name, SHOP_A, "101", ring=self._uniform(1.0, 8.0), talk=self._talk()
        )

    def _direct_missed(self) -> Scenario:
        number, name = self._missed_customer()
        return self.factory.direct_missed(number, name, SHOP_A, "101")

    def _abandoned_ringing(self) -> Scenario:
        number, name = self._missed_customer()
        return self.factory.abandoned_ringing(number, name, SHOP_A, "101", ring=self._uniform(2.0, 15.0))

    def _busy(self) -> Scenario:
        number, name = self._customer()
        return self.factory.busy(number, name, SHOP_A, "101")

    def _ring_group_answered(self) -> Scenario:
        number, name = self._customer()
        did = self.rng.choice((SHOP_B, SHOP_B, AVITO))
        return self.factory.ring_group(
            number, name, did, RING_GROUP, answering=self.rng.choice(RING_GROUP),
            ring=self._uniform(1.0, 10.0), talk=self._talk(),
        )

    def _ring_group_missed(self) -> Scenario:
        number, name = self._missed_customer()
        return self.factory.ring_group(number, name, self.rng.choice((SHOP_B, AVITO)), RING_GROUP, answering=None)

    def _queue_answered(self) -> Scenario:
        number, name = self._customer()
        return self.factory.queue(
            number, name, YANDEX, QUEUE_MEMBERS, answering=self.rng.choice(QUEUE_MEMBERS),
            ring=self._uniform(1.0, 6.0), talk=self._talk(),
        )

    def _queue_abandoned(self) -> Scenario:
        number, name = self._missed_customer()
        return self.factory.queue(number, name, YANDEX, QUEUE_MEMBERS, abandon_after=self._uniform(3.0, 30.0))

    def _queue_timeout(self) -> Scenario:
        number, name = self._missed_customer()
        return self.factory.queue(number, name, YANDEX, QUEUE_MEMBERS, timeout=self._uniform(20.0, 40.0))

    def _transfer_agents(self) -> tuple[str, str]:
        return "101", self.rng.choice(("102", "103"))

    def _blind_transfer(self) -> Scenario:
        number, name = self._customer()
        source, target = self._transfer_agents()
        return self.factory.blind_transfer(
            number, name, SHOP_A, source, target,
            ring=self._uniform(1.0, 5.0), talk=self._uniform(5.0, 20.0),
            ring2=self._uniform(1.0, 6.0), talk2=self._talk(),
        )

    def _attended_transfer(self) -> Scenario:
        number, name = self._customer()
        source, target = self._transfer_agents()
        return self.factory.attended_transfer(
            number, name, SHOP_A, source, target,
            ring=self._uniform(1.0, 5.0), talk=self._uniform(5.0, 20.0),
            ring2=self._uniform(1.0, 6.0), consult=self._uniform(3.0, 15.0), talk2=self._talk(),
        )

    def _redirect(self) -> Scenario:
        number, name = self._customer()
        source, target = self._transfer_agents()
        return self.factory.redirect(
            number, name, SHOP_A, source, target,
            ring=self._uniform(1.0, 5.0), talk=self._uniform(5.0, 20.0),
            ring2=self._uniform(1.0, 6.0), talk2=self._talk(),
        )

    def _click_to_call(self) -> Scenario:
        number, _name = self._customer()
        agent = self.rng.choice(AGENTS)
        outcid = self.rng.choice((SHOP_A, SHOP_B))
        return self.factory.click_to_call(
            agent, number, outcid,
            channel_id=f"c2c-{self.rng.getrandbits(48):012x}",
            answered=self.rng.random() < 0.8,
            agent_ring=self._uniform(1.0, 3.0),
            ring=self._uniform(2.0, 8.0),
            talk=self._talk(),
        )

    def _call_back(self) -> Scenario:
        """An agent calls back the customer missed longest ago; he answers."""
        if not self._missed:
            return self._click_to_call()
        number = self._missed.popleft()
        return self.factory.click_to_call(
            self.rng.choice(AGENTS), number, self.rng.choice((SHOP_A, SHOP_B)),
            channel_id=f"c2c-{self.rng.getrandbits(48):012x}",
            answered=True,
            agent_ring=self._uniform(1.0, 3.0),
            ring=self._uniform(2.0, 8.0),
            talk=self._talk(),
        )


def write_conversation(path: Path, *, seconds: float, rate: int = 8000) -> None:
    """A mono 16-bit WAV of two "voices" (tones) taking turns, like a phone call."""
    samples = array.array("h")
    for n in range(int(seconds * rate)):
        t = n / rate
        turn = int(t / 0.8) % 3  # first voice, second voice, a short silence
        pitch = (220.0, 330.0, 0.0)[turn]
        envelope = math.sin(math.pi * ((t % 0.8) / 0.8))
        samples.append(int(9000 * envelope * math.sin(2 * math.pi * pitch * t)) if pitch else 0)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
