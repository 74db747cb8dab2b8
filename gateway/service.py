"""The gateway service: feeds the core from a connector and carries out its
effects. The one place where the pure tracker meets I/O.

Events are applied by a single consumer, in arrival order. A finished call is
handed to the store without making the next event wait for the disk; a failed
write is logged with the call id (the store keeps the error for the caller).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from connectors.ami.link import AmiLink
from connectors.ami.normalise import AmiNormaliser
from crm_bridge import events as crm_events
from crm_bridge.bridge import Bridge
from crm_bridge.contacts import Contacts, customer_of, e164
from crm_bridge.store import Store, StoreError
from gateway.card import Card, build_card, spellings, with_history
from gateway.click_to_call import CHANNEL as CLICK_TO_CALL_CHANNEL
from gateway.click_to_call import CallRequest, ClickToCall
from gateway.effects import AgentAnswered, AgentLegEnded, AgentRingStarted, AgentRingStopped, CallFinished, Effect
from gateway.events import CallEvent
from gateway.followup import Followup
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.numberplan import Line, NumberPlan, PlanBook
from gateway.presence import Presence
from gateway.record import CallRecord
from gateway.tracker import CallTracker
from dashboards.rollups import Rollups
from recordings.collector import Collector
from recordings.storage import job_statements
from gateway.users import Directory

log = logging.getLogger(__name__)

RecordListener = Callable[[CallRecord], None]
Statement = tuple[str, tuple[Any, ...]]


HISTORY_TIMEOUT = 2.0  # a slow store delays the card's history, never the pop


class Gateway:
    """Tracker + store + hub, fed by any connector through ``apply``."""

    def __init__(
        self,
        store: Store,
        *,
        hub: Hub | None = None,
        metrics: Metrics | None = None,
        region: str = "RU",
        crm_url_template: str | None = None,
        plans: PlanBook | None = None,
        contacts: Contacts | None = None,
        directory: Directory | None = None,
        presence: Presence | None = None,
        click_to_call: ClickToCall | None = None,
        followup: Followup | None = None,
        collector: Collector | None = None,
        rollups: Rollups | None = None,
        bridge: Bridge | None = None,
        on_record: RecordListener | None = None,
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.rollups = rollups
        self.collector = collector
        self.followup = followup
        self.click_to_call = click_to_call
        self.presence = presence
        self.contacts = contacts
        self.directory = directory or (hub.directory if hub else Directory())
        self.plans = plans or PlanBook(NumberPlan())
        self.hub = hub
        self.metrics = metrics or (hub.metrics if hub else Metrics())
        self.tracker = CallTracker()
        self.region = region
        self.crm_url_template = crm_url_template
        self._on_record = on_record
        self._tasks: set[asyncio.Task[None]] = set()
        self.metrics.live_calls.set_function(lambda: self.tracker.live_call_count)

    def apply(self, event: CallEvent) -> None:
        """An event of a source that delivers in order (AMI), through the gateway's tracker."""
        for effect in self.tracker.feed(event):
            self.carry_out(effect)

    def carry_out(self, effect: Effect, *, also: Sequence[Statement] = ()) -> None:
        """Do what the core decided. ``also``: statements to store with a
        finished call's record (a webhook inbox marking its requests done)."""
        hub = self.hub
        if isinstance(effect, CallFinished):
            record = self._with_line(replace(effect.record, customer=e164(customer_of(effect.record), self.region)))
            # "none": no line for the number in the plan, an internal call, a
            # click-to-call whose request is only found in the store (``_save``).
            self.metrics.calls_finished.labels(record.outcome, record.shop or "none", record.channel or "none").inc()
            self._spawn(self._save(record, also), f"save-{record.call_id}")
            if hub is not None:
                hub.call_finished(effect.record.call_id)
            return
        if self.bridge is not None:
            self._report(effect)
        if hub is None:
            return
        if isinstance(effect, AgentRingStarted):
            line = self._line_of(effect)
            card = build_card(direction=effect.direction, caller=effect.caller, caller_name=effect.caller_name,
                              dialled=effect.dialled, region=self.region, crm_url_template=self.crm_url_template,
                              line=line)
            pop = hub.ring_started(effect, card)
            customer = effect.dialled if effect.direction == "outbound" else effect.caller
            numbers = spellings(customer, self.region) if customer else []
            if pop is not None and numbers:  # a withheld number has no history to show
                self._spawn(self._history(pop.pop_id, card, numbers, effect.call_id), f"history-{pop.pop_id}")
        elif isinstance(effect, AgentRingStopped):
            hub.ring_stopped(effect)
        elif isinstance(effect, AgentAnswered):
            hub.answered(effect)
        elif isinstance(effect, AgentLegEnded):
            hub.leg_ended(effect)
            login = self._login_of(effect.extension)
            if self.presence is not None and login is not None:
                self.presence.call_ended_for(login)  # after-call wrap-up

    def _line_of(self, effect: AgentRingStarted) -> Line | None:
        if effect.direction != "inbound":
            return None
        return self.plans.at(effect.call_started_at).line(effect.dialled)

    def _report(self, effect: Effect) -> None:
        """A live event for the CRMs (queued on its own; the pop does not wait).
        Nothing is built for an event no sink takes."""
        assert self.bridge is not None
        wanted = self.bridge.outbox.wanted
        if isinstance(effect, AgentRingStarted) and wanted("call.ringing"):
            line = self._line_of(effect)
            customer = effect.dialled if effect.direction == "outbound" else effect.caller
            self.bridge.report(crm_events.ringing(
                effect, agent=self._login_of(effect.extension), customer=e164(customer, self.region),
                shop=line.shop.shop_id if line else None, channel=line.channel if line else None))
        elif isinstance(effect, AgentRingStopped) and wanted("call.ring_stopped"):
            self.bridge.report(crm_events.ring_stopped(effect, agent=self._login_of(effect.extension)))
        elif isinstance(effect, AgentAnswered) and wanted("call.answered"):
            self.bridge.report(crm_events.answered(effect, agent=self._login_of(effect.extension)))

    def _login_of(self, extension: str) -> str | None:
        user = self.directory.by_extension(extension)
        return user.login if user else None

    def _with_line(self, record: CallRecord) -> CallRecord:
        """The record with the shop and channel of its dialled number, by the
        plan in force when the call started (inbound calls); an outbound call
        placed by click-to-call gets its request's shop (from memory here; a
        request from before a restart is looked up in ``_save``)."""
        if record.direction == "outbound":
            known = self.click_to_call.known_call(record.call_id) if self.click_to_call else None
            return _with_request(record, known)
        if record.direction != "inbound":
            return record
        line = self.plans.at(record.started_at).line(record.dialled)
        if line is None:
            return record
        return replace(record, shop=line.shop.shop_id, channel=line.channel)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _history(self, pop_id: str, card: Card, numbers: list[str], call_id: str) -> None:
        try:
            calls = await asyncio.wait_for(self.store.calls_with_number(numbers, exclude=call_id), HISTORY_TIMEOUT)
            phone = e164(numbers[0], self.region)
            missed = await self.followup.tasks.open_count(phone) if self.followup and phone else 0
        except Exception as exc:  # the pop went out already; the card just lacks its history
            log.warning("history for a pop of call %s not loaded: %s", call_id, exc or type(exc).__name__)
            return
        if self.hub is not None:
            self.hub.card_updated(pop_id, with_history(card, calls, missed))

    async def _save(self, record: CallRecord, extra: Sequence[Statement] = ()) -> None:
        if record.direction == "outbound" and record.channel is None and self.click_to_call is not None:
            try:
                record = _with_request(record, await self.click_to_call.find_call(record.call_id))
            except Exception as exc:  # stored without its shop rather than not at all
                log.warning("click-to-call request of call %s not read: %s", record.call_id, exc)
        # What follows from the call (its contact, callback task, KPI points) is
        # written in the call's own transaction.
        try:
            also = list(extra) + self._follow_up(record)
        except Exception:  # a value no rule expected: the call is stored all the same
            log.exception("call %s: what follows from it could not be worked out; storing the call alone",
                          record.call_id)
            also = list(extra)
        try:
            await self.store.save_call(record, also=also)
        except StoreError as exc:
            if not also:
                log.error("call %s could not be stored: %s", record.call_id, exc)
                return
            # Never lose the call for what follows from it: store it alone.
            log.error("call %s with its contact, task and points could not be stored (%s); storing the call alone",
                      record.call_id, exc)
            try:
                await self.store.save_call(record)
            except StoreError as again:
                log.error("call %s could not be stored: %s", record.call_id, again)
                return
        if self.collector is not None and record.recording_path:
            self.collector.poke()
        if self.bridge is not None:
            self.bridge.poke()
        if self._on_record is not None:
            self._on_record(record)

    def _follow_up(self, record: CallRecord) -> list[Statement]:
        also: list[Statement] = []
        if self.bridge is not None:  # first: the call's own event comes before a task it opens
            placed_by = (record.caller,) if record.direction != "inbound" and record.caller else ()
            people = dict.fromkeys((*placed_by, *record.rang, *record.talked,
                                    *((record.answered_by,) if record.answered_by else ())))
            agents = {ext: login for ext in people if (login := self._login_of(ext)) is not None}
            also += self.bridge.statements(crm_events.finished(record, agents=agents))
        if self.contacts is not None and record.customer is not None:
            also += self.contacts.call_statements(record, record.customer, shop=record.shop, channel=record.channel,
                                                  manager_of=self._login_of)
        if self.followup is not None:
            also += self.followup.call_statements(record)
        if self.rollups is not None:
            also += self.rollups.call_statements(record)
        if self.collector is not None and record.recording_path:
            also += job_statements(record.call_id, record.recording_path, self.collector.clock())
        return also

    async def drain(self) -> None:
        """Wait until every finished call handed to the store is written."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def consume_ami(self, link: AmiLink, normaliser: AmiNormaliser) -> None:
        """The single consumer of one AMI link's events."""
        self.metrics.ami_connected.set_function(lambda: int(link.is_connected))
        self.metrics.ami_connects.set_function(lambda: link.connects)
        self.metrics.ami_queue_full.set_function(lambda: link.queue_full_count)
        while True:
            message, received_at = await link.events.get()
            self.metrics.ami_events.inc()
            for event in normaliser.normalise(message, received_at):
                self.apply(event)


def _with_request(record: CallRecord, request: CallRequest | None) -> CallRecord:
    if request is None:
        return record
    return replace(record, shop=request.shop, channel=CLICK_TO_CALL_CHANNEL)
