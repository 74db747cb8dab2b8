"""Cloud-PBX webhooks: the durable inbox between the connectors and the core.

A connector verifies a request and calls ``deliver``: the request is written
to the inbox (committed, so the provider's 2xx means "on disk") and queued.
One consumer takes requests in arrival order: it adds each to its call's
history (a duplicate event key changes nothing), asks the connector for the
call's normalised events, rebuilds the call (``gateway.histories``) and
carries out what is new. A finished call's record is stored together with
"these requests are done", so on start ``recover`` finds exactly the calls a
crash left half-done and rebuilds them from the inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from aiohttp import web

from connectors.webhook import Accepted, Account, Connector, Decide, Request
from connectors.mango import MangoConnector
from connectors.sipuni import SipuniConnector
from connectors.twilio import TwilioConnector
from connectors.zadarma import ZadarmaConnector
from crm_bridge.inbox import CallRef, Inbox
from gateway.config import WebhookAccount, WebhooksConfig
from gateway.effects import CallFinished
from gateway.histories import CallHistories
from gateway.service import Gateway

log = logging.getLogger(__name__)

CACHED_CALLS = 5_000  # calls whose history stays in memory (others are read from the inbox)


def connectors_for(config: WebhooksConfig, *, own_url: str) -> dict[str, Connector]:
    """A connector per provider that has accounts in the config. ``own_url``:
    the gateway's address when no public_base_url is configured."""
    base = config.public_base_url or own_url
    by_provider: dict[str, list[Account]] = {}
    for account in config.accounts:
        by_provider.setdefault(account.provider, []).append(_account(account, base))
    factories: dict[str, Callable[[list[Account], str], Connector]] = {
        "zadarma": ZadarmaConnector,
        "novofon": ZadarmaConnector,
        "mango": MangoConnector,
        "sipuni": SipuniConnector,
        "twilio": TwilioConnector,
    }
    return {provider: factories[provider](accounts, provider) for provider, accounts in by_provider.items()}


def _account(account: WebhookAccount, base: str) -> Account:
    return Account(
        name=account.name,
        secrets={key: secret.value for key, secret in account.secrets.items()},
        public_url=account.public_url or f"{base}/webhooks/{account.provider}/{account.name}",
        allowed_ips=account.allowed_ips,
        timezone=account.timezone,
        api_base_url=account.api_base_url,
        route_deadline=account.route_deadline_ms / 1000,
        options=account.options,
    )


class Webhooks:
    """The ``Intake`` every connector delivers to, and the consumer behind it."""

    def __init__(self, gateway: Gateway, inbox: Inbox, connectors: Mapping[str, Connector],
                 clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.clock = clock
        self.inbox = inbox
        self.connectors = dict(connectors)
        self.histories = CallHistories()
        self._queue: asyncio.Queue[tuple[CallRef, str, Request] | CallRef] = asyncio.Queue()
        self._cache: OrderedDict[CallRef, dict[str, Request]] = OrderedDict()  # call -> {dedup key: request}
        self.processed = 0  # requests turned into effects (tests and metrics)
        self._idle = asyncio.Event()
        self._idle.set()
        self._writes: set[asyncio.Task[None]] = set()

    def add_routes(self, app: web.Application, decide: Decide | None) -> None:
        for connector in self.connectors.values():
            connector.add_routes(app, self, decide, self.clock)

    async def deliver(self, provider: str, account: str, request: Request, accepted: Accepted) -> None:
        await self.inbox.put(provider, account, accepted.dedup_key, accepted.call_key, request)
        if accepted.call_key is not None:
            self._idle.clear()
            self._queue.put_nowait((CallRef(provider, account, accepted.call_key), accepted.dedup_key, request))

    async def recover(self) -> int:
        """Queue every call the inbox holds unfinished (after a crash); how many."""
        calls = await self.inbox.pending_calls()
        for call in calls:
            self._idle.clear()
            self._queue.put_nowait(call)
        if calls:
            log.info("webhooks: rebuilding %d call(s) left unfinished in the inbox", len(calls))
        return len(calls)

    async def run(self) -> None:
        """The single consumer; runs until cancelled."""
        while True:
            item = await self._queue.get()
            try:
                await self._process(item)
            except Exception:  # one bad request must not stop the others; it stays in the inbox
                log.exception("webhooks: a request could not be processed")
            finally:
                if self._queue.empty():
                    self._idle.set()

    async def idle(self) -> None:
        """Wait until every queued request has been processed (tests, shutdown)."""
        await self._idle.wait()
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhooks: requests not marked done (rebuilt again at the next start): %s", task.exception())

    async def _process(self, item: tuple[CallRef, str, Request] | CallRef) -> None:
        call = item if isinstance(item, CallRef) else item[0]
        history = await self._history(call)
        if not isinstance(item, CallRef):
            _, key, request = item
            history.setdefault(key, request)  # a duplicate delivery adds nothing (and rebuilds to no effect)
        connector = self.connectors[call.provider]
        events = connector.call_events(call.account, list(history.values()))
        call_id = f"{call.provider}:{call.account}:{call.call_key}"
        effects = self.histories.update(call_id, events)
        for effect in effects:
            also = self.inbox.done_statements(call) if isinstance(effect, CallFinished) else ()
            self.gateway.carry_out(effect, also=also)
        if self.histories.finished(call_id) and not any(isinstance(e, CallFinished) for e in effects):
            # A late event that changes nothing in the stored record: done too
            # (written in the background: the consumer never waits for the disk).
            task = asyncio.create_task(self.inbox.mark_done(call), name="inbox-done")
            self._writes.add(task)
            task.add_done_callback(self._written)
        self.processed += 1

    async def _history(self, call: CallRef) -> dict[str, Request]:
        history = self._cache.get(call)
        if history is None:
            history = {stored.dedup_key: stored.request for stored in await self.inbox.history(call)}
            self._cache[call] = history
            while len(self._cache) > CACHED_CALLS:
                self._cache.popitem(last=False)
        self._cache.move_to_end(call)
        return history
