"""Cloud-PBX webhooks: the durable inbox between the connectors and the core.

A connector verifies a request and calls ``deliver``: the request is written
to the inbox (committed, so the provider's 2xx means "on disk") and queued.
One consumer takes requests in arrival order: it adds each to its call's
history (a duplicate event key changes nothing), asks the connector for the
call's normalised events, rebuilds the call (``gateway.histories``) and
carries out what is new. A finished call's record is stored together with
"these requests are done", so on start ``recover`` finds exactly the calls a
crash left half-done and rebuilds them from the inbox.

Every request to a provider's URLs is counted once in
``cti_webhook_requests_total{provider, result}``: ``deliver`` counts what it
stores (accepted, duplicate) or cannot store (unavailable); a middleware counts
the requests the connector answered without delivering, by their status
(401 refused_signature, other 4xx refused_other, 5xx unavailable, 2xx
ignored). So the connectors only answer, as before, and know nothing of metrics.

When the store cannot keep up (its queue is full: ``StoreFull``, or a write has
not committed within ``deadline``: ``StoreBusy``; the file locked, the disk
full) ``deliver`` raises; the connector answers 503 and the middleware adds
``Retry-After``. A write that missed the deadline still lands later and its
request is then processed; the provider's retry is absorbed as a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from connectors.webhook import Accepted, Account, Connector, Decide, Request
from connectors.mango import MangoConnector
from connectors.sipuni import SipuniConnector
from connectors.twilio import TwilioConnector
from connectors.zadarma import ZadarmaConnector
from crm_bridge.inbox import CallRef, Inbox
from crm_bridge.store import StoreFull
from gateway.config import WebhookAccount, WebhooksConfig
from gateway.effects import CallFinished, Effect
from gateway.histories import CallHistories
from gateway.metrics import WEBHOOK_RESULTS
from gateway.service import Gateway

log = logging.getLogger(__name__)

CACHED_CALLS = 5_000  # calls whose history stays in memory (others are read from the inbox)
GIVE_UP_AFTER = 4 * 3600.0  # a call whose final callback has not come by then is ended, interrupted
SWEEP_EVERY = 600.0
# Event keys remembered to tell a duplicate in the metrics (only there: the
# inbox's UNIQUE key is what absorbs duplicates). A repeat older than this, or
# from before a restart, is counted as accepted.
SEEN_KEYS = 10_000
DELIVER_DEADLINE = 2.0  # seconds a request waits for its commit before the provider is told to retry
RETRY_AFTER = 5  # seconds, in the Retry-After of a 503


class StoreBusy(Exception):
    """The request was not stored in time; the provider should send it again."""


@dataclass
class _Delivery:
    """One webhook request under way: whether ``deliver`` has counted it."""

    counted: bool = False


_DELIVERY: ContextVar[_Delivery | None] = ContextVar("webhook_delivery", default=None)


def _result_of(status: int) -> str:
    """What became of a request the connector answered without delivering it."""
    if status == 401:  # every connector's answer to a bad signature (Sipuni: URL token)
        return "refused_signature"
    if 400 <= status < 500:
        return "refused_other"
    if status >= 500:
        return "unavailable"
    return "ignored"  # answered, not kept: an unused event type, a URL check


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


_SWEEP = CallRef("", "", "")  # the queue item that asks the consumer to sweep


class Webhooks:
    """The ``Intake`` every connector delivers to, and the consumer behind it."""

    def __init__(self, gateway: Gateway, inbox: Inbox, connectors: Mapping[str, Connector],
                 clock: Callable[[], float] = time.time, *, deadline: float = DELIVER_DEADLINE) -> None:
        self.gateway = gateway
        self.deadline = deadline
        self._busy = False  # answering 503s: logged once per run
        self.clock = clock
        self.inbox = inbox
        self.connectors = dict(connectors)
        self.histories = CallHistories()
        # A request to process, or a call to rebuild (recovery), or _SWEEP.
        self._queue: asyncio.Queue[tuple[CallRef, str, Request] | CallRef] = asyncio.Queue()
        self._cache: OrderedDict[CallRef, dict[str, Request]] = OrderedDict()  # call -> {dedup key: request}
        self.processed = 0  # requests turned into effects (tests and metrics)
        self._idle = asyncio.Event()
        self._idle.set()
        self._writes: set[asyncio.Future[None]] = set()  # inbox writes under way in the background
        self._open: dict[CallRef, float] = {}  # calls without their record yet -> when last heard of
        self.metrics = gateway.metrics
        self.metrics.webhook_queue.set_function(self._queue.qsize)
        for provider in self.connectors:  # every series from the start: a rate() over 0s, not over nothing
            for result in WEBHOOK_RESULTS:
                self.metrics.webhook_requests.labels(provider, result)
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()

    def add_routes(self, app: web.Application, decide: Decide | None) -> None:
        for connector in self.connectors.values():
            connector.add_routes(app, self, decide, self.clock)
        app.middlewares.append(self._counting())

    def _counting(self) -> Middleware:
        """Count the requests to a provider's URLs that never reach ``deliver``."""

        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            parts = request.path.split("/", 3)  # "", "webhooks", provider, ...
            if len(parts) < 3 or parts[1] != "webhooks" or parts[2] not in self.connectors:
                return await handler(request)  # the label takes configured providers only
            delivery = _Delivery()
            token = _DELIVERY.set(delivery)  # seen by ``deliver``: the handler runs in this task
            status = 500
            response: web.StreamResponse | None = None
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                _DELIVERY.reset(token)
                if not delivery.counted:
                    self.metrics.webhook_request(parts[2], _result_of(status))
                if status == 503 and response is not None:  # every connector's "not stored, send again"
                    response.headers["Retry-After"] = str(RETRY_AFTER)

        return count

    async def deliver(self, provider: str, account: str, request: Request, accepted: Accepted) -> None:
        seen = (provider, account, accepted.dedup_key)
        duplicate = seen in self._seen
        self._seen[seen] = None
        self._seen.move_to_end(seen)
        while len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)
        if (delivery := _DELIVERY.get()) is not None:
            delivery.counted = True
        write: asyncio.Future[None] | None = None
        try:
            write = self.inbox.put_nowait(provider, account, accepted.dedup_key, accepted.call_key, request)
            try:
                await asyncio.wait_for(asyncio.shield(write), self.deadline)
            except asyncio.TimeoutError:
                raise StoreBusy(f"the store has not committed the request within {self.deadline:g} s") from None
        except BaseException as exc:
            if not duplicate:
                self._seen.pop(seen, None)  # not stored: its next delivery is not a repeat
            self.metrics.webhook_request(provider, "unavailable")
            if write is not None and not write.done():  # it commits later: then it is processed
                self._writes.add(write)
                write.add_done_callback(lambda done: self._landed(done, provider, account, accepted, request))
            if isinstance(exc, (StoreBusy, StoreFull)):
                self._note_busy(exc)
            raise
        if self._busy:
            log.warning("webhooks: requests are stored again")
            self._busy = False
        self.metrics.webhook_request(provider, "duplicate" if duplicate else "accepted")
        self._enqueue(provider, account, accepted, request)

    def _enqueue(self, provider: str, account: str, accepted: Accepted, request: Request) -> None:
        if accepted.call_key is not None:
            self._idle.clear()
            self._queue.put_nowait((CallRef(provider, account, accepted.call_key), accepted.dedup_key, request))

    def _landed(self, write: asyncio.Future[None], provider: str, account: str, accepted: Accepted,
                request: Request) -> None:
        """A write that missed its deadline has finished: process its request if stored."""
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is None:
            self._enqueue(provider, account, accepted, request)

    def _note_busy(self, exc: Exception) -> None:
        if not self._busy:
            log.warning("webhooks: answering 503 with Retry-After %d s: %s", RETRY_AFTER, exc)
            self._busy = True

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
        """The single consumer; runs until cancelled. Every SWEEP_EVERY seconds
        it also sweeps, in turn with the requests (never at the same time)."""
        ticker = asyncio.create_task(self._tick(), name="webhooks-sweep-timer")
        try:
            while True:
                item = await self._queue.get()
                await self._guarded(self.sweep() if item is _SWEEP else self._process(item))
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            self._queue.put_nowait(_SWEEP)

    async def _guarded(self, work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except Exception:  # one bad request must not stop the others; it stays in the inbox
            log.exception("webhooks: a request could not be processed")
        finally:
            if self._queue.empty():
                self._idle.set()

    async def sweep(self) -> int:
        """End, as interrupted, every call whose provider went quiet for
        GIVE_UP_AFTER without its final callback (a lost END or summary);
        how many."""
        now = self.clock()
        stale = [call for call, heard in self._open.items() if now - heard >= GIVE_UP_AFTER]
        for call in stale:
            history = await self._history(call)
            events = self.connectors[call.provider].call_events(call.account, list(history.values()))
            log.warning("webhooks: call %s of %s %s had no final callback for %.0f h: ended as interrupted",
                        call.call_key, call.provider, call.account, GIVE_UP_AFTER / 3600)
            self._carry_out(call, self.histories.update(self._call_id(call), events, given_up_at=self._open[call]))
            self._open.pop(call, None)
        return len(stale)

    @staticmethod
    def _call_id(call: CallRef) -> str:
        return f"{call.provider}:{call.account}:{call.call_key}"

    def _carry_out(self, call: CallRef, effects: list[Effect]) -> None:
        for effect in effects:
            also = self.inbox.done_statements(call) if isinstance(effect, CallFinished) else ()
            self.gateway.carry_out(effect, also=also)

    async def idle(self) -> None:
        """Wait until every queued request has been processed (tests, shutdown)."""
        while True:
            await self._idle.wait()
            if not self._writes:
                return
            # (a late inbox write that lands queues its request: wait for that too)
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
        call_id = self._call_id(call)
        effects = self.histories.update(call_id, events)
        self._carry_out(call, effects)
        if self.histories.finished(call_id):
            self._open.pop(call, None)
        else:
            latest = max((r.received_at for r in history.values()), default=self.clock())
            self._open[call] = max(latest, self._open.get(call, 0.0))
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
