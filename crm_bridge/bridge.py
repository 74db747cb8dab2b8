"""The CRM bridge: writes the gateway's events to the outbox and delivers them
to the configured sinks, at least once.

Writing: ``statements`` go into the transaction of the change they report (a
call's record); ``report`` writes a live event (a phone ringing) on its own,
without making its caller wait. Nothing is written for an event no sink takes.

Delivering: one loop per sink takes the due entries (the first pending one of
each stream, at most ``concurrency`` at once), hands each to the sink with a
timeout, and marks it delivered, retried later (``RetryPolicy``: doubling from
``first_seconds`` up to ``max_seconds``, spread by the entry's key so a CRM
coming back is not hit by every entry in the same second) or dead (a permanent
refusal, or still failing after ``give_up_seconds``). Dead entries wait for an
administrator's "retry now". A CRM that is slow or down only holds up its own
loop: pops and call logging never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from crm_bridge.events import Event
from crm_bridge.outbox import Entry, Outbox, Statement, event_statement
from crm_bridge.sinks import DeliveryError, Sink
from crm_bridge.store import Store
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0  # a sink's loop looks at the outbox at least this often (rows written by triggers)
UPLOAD_TIMEOUT_FACTOR = 8  # a recording's upload (Bitrix24 converts and sends the file) gets this many timeouts


@dataclass(frozen=True)
class RetryPolicy:
    first_seconds: float = 10.0
    max_seconds: float = 3600.0
    give_up_seconds: float = 24 * 3600.0
    timeout_seconds: float = 15.0  # one attempt longer than this has failed
    concurrency: int = 4  # attempts at once per sink (each on another call)

    def delay(self, failures: int, key: str) -> float:
        """Seconds before the next attempt after ``failures`` failed ones (>= 1)."""
        base = min(self.first_seconds * 2.0 ** min(failures - 1, 40), self.max_seconds)
        spread = int.from_bytes(hashlib.sha256(key.encode()).digest()[:2], "big") / 65535 - 0.5  # -0.5..0.5
        return base * (1 + 0.2 * spread)


class Bridge:
    def __init__(
        self,
        store: Store,
        sinks: Sequence[Sink],
        *,
        policy: RetryPolicy = RetryPolicy(),
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        poll_seconds: float = POLL_SECONDS,
        outbox: Outbox | None = None,
    ) -> None:
        self.outbox = outbox or Outbox(store)
        self.sinks = {sink.name: sink for sink in sinks}
        self.policy = policy
        self.clock = clock
        self.metrics = metrics
        self.poll_seconds = poll_seconds
        self._wake = {name: asyncio.Event() for name in self.sinks}
        self._writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Tell the store which sinks take which events (before any is written)."""
        await self.outbox.register({name: (sink.events, self.policy.give_up_seconds)
                                    for name, sink in self.sinks.items()})

    # -- writing events -----------------------------------------------------------------

    def statements(self, event: Event) -> list[Statement]:
        """``event`` as statements for the transaction of the change it reports."""
        if not self.outbox.wanted(event.event):
            return []
        return [event_statement(event.event, event.stream, event.key, event.data, self.clock())]

    def report(self, event: Event) -> None:
        """Write a live event now, on its own; the caller does not wait."""
        statements = self.statements(event)
        if statements:
            task = asyncio.create_task(self._write(statements, event), name=f"outbox-{event.key}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, statements: list[Statement], event: Event) -> None:
        try:
            await self.outbox.store.write(*statements)
        except Exception as exc:  # the call's record still carries what matters
            log.warning("crm: %s of call %s not queued for the CRMs: %s", event.event, event.stream, exc)
            return
        self.poke()

    def poke(self) -> None:
        """New entries are in the outbox: every sink's loop looks now."""
        for wake in self._wake.values():
            wake.set()

    async def drain(self) -> None:
        """Wait until the live events handed to ``report`` are written."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # -- delivering -----------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver to every sink until cancelled."""
        await asyncio.gather(*(self._run_sink(sink) for sink in self.sinks.values()))

    async def _run_sink(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        failing = False
        while True:
            wake.clear()
            wait = self.poll_seconds
            try:
                await self.round(sink.name)
                next_at = await self.outbox.next_due_at(sink.name)
                if next_at is not None:
                    wait = min(wait, max(0.0, next_at - self.clock()))
                if failing:
                    log.info("crm %s: the outbox is readable again", sink.name)
                    failing = False
            except Exception as exc:  # the store is busy or gone for a moment: look again later
                log.log(logging.DEBUG if failing else logging.WARNING, "crm %s: outbox not read: %s",
                        sink.name, exc)
                failing = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    async def round(self, sink_name: str) -> list[Entry]:
        """Attempt every entry of the sink due now (by the clock); the entries attempted."""
        sink = self.sinks[sink_name]
        entries = await self.outbox.due(sink_name, self.clock(), limit=self.policy.concurrency)
        if entries:
            await asyncio.gather(*(self._attempt(sink, entry) for entry in entries))
        return entries

    async def _attempt(self, sink: Sink, entry: Entry) -> None:
        timeout = self.policy.timeout_seconds * (UPLOAD_TIMEOUT_FACTOR if entry.event == "recording.ready" else 1)
        try:
            await asyncio.wait_for(sink.deliver(entry), timeout)
        except DeliveryError as exc:
            await self._failed(sink, entry, str(exc), permanent=exc.permanent, retry_after=exc.retry_after)
        except asyncio.TimeoutError:
            await self._failed(sink, entry, f"no answer within {timeout:g} s")
        except Exception as exc:  # the network, the other side, or a bug: retried, and said
            if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] != "aiohttp":
                log.exception("crm %s: delivering %s of %s failed unexpectedly", sink.name, entry.event, entry.stream)
            await self._failed(sink, entry, _described(exc))
        else:
            await self.outbox.delivered(entry.entry_id, self.clock())
            self._count(sink.name, "delivered")

    async def _failed(self, sink: Sink, entry: Entry, error: str, *, permanent: bool = False,
                      retry_after: float | None = None) -> None:
        now = self.clock()
        failures = entry.attempts + 1
        retry_at = now + max(self.policy.delay(failures, entry.key), retry_after or 0.0)
        if permanent or retry_at > entry.give_up_at:
            why = "refused for good" if permanent else f"still failing after {failures} attempt(s)"
            log.error("crm %s: %s of %s is dead (%s): %s", sink.name, entry.event, entry.stream, why, error)
            await self.outbox.failed(entry.entry_id, error, retry_at=None)
            self._count(sink.name, "dead")
            return
        log.warning("crm %s: %s of %s failed (attempt %d), again in %.0f s: %s", sink.name, entry.event,
                    entry.stream, failures, retry_at - now, error)
        await self.outbox.failed(entry.entry_id, error, retry_at=retry_at)
        self._count(sink.name, "retried")

    def _count(self, sink: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.crm_deliveries.labels(sink, result).inc()

    async def retry_now(self, entry_ids: Sequence[int]) -> int:
        """Dead entries back in line, due now (the admin's button)."""
        changed = await self.outbox.retry_now(entry_ids, self.clock())
        self.poke()
        return changed

    async def close(self) -> None:
        await self.drain()
        for sink in self.sinks.values():
            await sink.close()


def _described(exc: Exception) -> str:
    """What failed, without the request's URL: a Bitrix24 webhook's URL is its secret."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}: HTTP {exc.status} {exc.message}".rstrip()
    if isinstance(exc, aiohttp.InvalidURL):
        return f"{type(exc).__name__}: the configured URL is not valid"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
