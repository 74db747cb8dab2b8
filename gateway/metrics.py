"""Prometheus metrics of one gateway, on a registry of its own (never the
process-global one), exposed at ``/metrics``. No phone number or name is ever a
label: labels take values from small closed sets (outcomes, results) or from
the config (shop ids, ad channels, provider names).

Most families are kept by the parts they describe (hub, service, webhooks).
``Metrics.watch`` points the store writer's gauges at the store, and runs
what needs a task of its own: the event loop's lag (how late a periodic sleep
wakes up) and the backlogs that live on disk (the webhook inbox, the
recording jobs), counted with a cheap indexed query every ``count_every``
seconds. Every family is documented in ``dashboards/README.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crm_bridge.outbox import OUTBOX_COUNTS

log = logging.getLogger(__name__)

# Seconds between two loop-lag measurements: a stall of S seconds shows as at
# least S - LAG_EVERY (it may begin just before a wake-up was due).
LAG_EVERY = 0.1
LAG_WINDOW = 30.0  # the lag gauge shows the worst lag of this many seconds (two scrapes at 15 s)
COUNT_EVERY = 15.0  # seconds between two counts of the backlogs on disk

# What became of a webhook request (``cti_webhook_requests_total{result}``).
WEBHOOK_RESULTS = ("accepted", "duplicate", "refused_signature", "refused_other", "unavailable", "ignored")

# Both counts run on an index (webhook_inbox_pending (done, inbox_id);
# recordings_due (status, next_attempt_at)): they read the index, not the rows.
_INBOX_PENDING = "SELECT count(*) FROM webhook_inbox WHERE done = 0"
_RECORDINGS_PENDING = "SELECT count(*) FROM recordings WHERE status = 'pending'"



class Reader(Protocol):
    """What the backlog counts need of the store (``crm_bridge.store.Store``)."""

    async def read(self, sql: str, params: tuple[Any, ...] = ...) -> Any: ...


class WatchedStore(Reader, Protocol):
    """What ``watch`` reads of the store: its backlogs, and its writer's state."""

    commit_failures: int

    @property
    def queue_depth(self) -> int: ...
    @property
    def is_retrying(self) -> bool: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # -- AMI
        self.ami_connected = Gauge("cti_ami_connected", "1 while the AMI link is logged in", registry=r)
        self.ami_connects = Gauge("cti_ami_logins", "Successful AMI logins since start (1 + reconnects)",
                                  registry=r)
        self.ami_events = Counter("cti_ami_events", "AMI events received (after the codec's drop filter)",
                                  registry=r)
        self.ami_queue_full = Gauge("cti_ami_queue_full", "Times the AMI event queue was full since start",
                                    registry=r)
        # -- calls
        self.live_calls = Gauge("cti_live_calls", "Calls in progress", registry=r)
        # shop and channel: the record's, from the number plan ("none": not in the plan, not inbound).
        self.calls_finished = Counter("cti_calls_finished", "Calls finished, by outcome, shop and ad channel",
                                      ["outcome", "shop", "channel"], registry=r)
        # -- hub
        self.connected_agents = Gauge("cti_hub_connected_agents",
                                      "People (agents, managers, admins) with at least one websocket", registry=r)
        self.pops = Counter("cti_hub_pops", "Pops sent (one per ringing agent phone)", registry=r)
        self.pop_latency = Histogram(
            "cti_hub_pop_latency_seconds", "From the ringing event's arrival to the pop frame queued",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0), registry=r,
        )
        self.slow_clients_dropped = Counter("cti_hub_slow_clients_dropped",
                                            "Websocket connections dropped for falling behind", registry=r)
        self.callbacks_escalated = Counter("cti_callbacks_escalated",
                                           "Missed-call tasks escalated for passing their SLA", registry=r)
        # -- webhooks
        self.webhook_requests = Counter(
            "cti_webhook_requests", "Cloud-PBX webhook requests, by provider and what became of them",
            ["provider", "result"], registry=r)
        self.webhook_queue = Gauge("cti_webhook_queue_depth",
                                   "Webhook requests stored and waiting for the consumer (in memory)", registry=r)
        self.inbox_pending = Gauge("cti_webhook_inbox_pending",
                                   "Webhook inbox rows whose call is not stored yet (counted every "
                                   f"{COUNT_EVERY:.0f} s)", registry=r)
        # -- recordings
        self.recordings_missing = Counter("cti_recordings_missing",
                                          "Recordings given up on after their retries (or refused)", registry=r)
        self.recordings_pending = Gauge("cti_recordings_pending",
                                        f"Recording jobs waiting to be fetched (counted every {COUNT_EVERY:.0f} s)",
                                        registry=r)
        # -- CRM bridge (sink: a name from [crm] in the config)
        self.crm_deliveries = Counter("cti_crm_deliveries", "CRM deliveries attempted, by sink and result "
                                      "(delivered, retried, dead)", ["sink", "result"], registry=r)
        self.outbox_depth = Gauge("cti_outbox_depth", "Outbox entries waiting for delivery, by sink (counted every "
                                  f"{COUNT_EVERY:.0f} s)", ["sink"], registry=r)
        self.outbox_dead = Gauge("cti_outbox_dead", "Outbox entries given up on (the admin's dead-letter list), "
                                 "by sink", ["sink"], registry=r)
        self.outbox_oldest = Gauge("cti_outbox_oldest_seconds", "Age of the oldest entry waiting for delivery, "
                                   "by sink", ["sink"], registry=r)
        # -- store (read from the Store by ``watch``)
        self.store_queue = Gauge("cti_store_queue_depth", "Writes waiting for the store's writer (bounded; "
                                 "webhooks get 503 while it is full)", registry=r)
        self.store_commit_failures = Gauge("cti_store_commit_failures",
                                           "Failed commit attempts of the store since start (retried when "
                                           "passing: locked, disk full, I/O error)", registry=r)
        self.store_retrying = Gauge("cti_store_retrying",
                                    "1 while the store's writer retries a failed commit (saves wait)", registry=r)
        # -- process
        self.loop_lag = Gauge("cti_event_loop_lag_seconds",
                              f"Worst lateness of a periodic wake-up over the last {LAG_WINDOW:.0f} s", registry=r)
        self._lags: deque[tuple[float, float]] = deque()  # (when measured, lag), monotonic clock
        self.loop_lag.set_function(self._worst_lag)
        self._count_failing = False
        self.crm_sinks: tuple[str, ...] = ()  # the configured sinks' names (set by whoever builds the bridge)

    def webhook_request(self, provider: str, result: str) -> None:
        self.webhook_requests.labels(provider, result).inc()

    def recording_missing(self, job: object, reason: str) -> None:
        """``Collector(on_missing=...)``: one recording given up on."""
        self.recordings_missing.inc()

    def _worst_lag(self) -> float:
        # Computed at scrape time: a spike between two scrapes is still seen,
        # and a sample older than the window no longer counts.
        now = time.monotonic()
        return max((lag for at, lag in self._lags if now - at <= LAG_WINDOW), default=0.0)

    async def watch(self, store: WatchedStore, *, lag_every: float = LAG_EVERY,
                    count_every: float = COUNT_EVERY) -> None:
        """Until cancelled: measure the loop's lag and count the backlogs on disk;
        the store's writer gauges read the store at each scrape."""
        self.store_queue.set_function(lambda: store.queue_depth)
        self.store_commit_failures.set_function(lambda: store.commit_failures)
        self.store_retrying.set_function(lambda: int(store.is_retrying))
        await asyncio.gather(self.watch_loop_lag(every=lag_every), self._count_every(store, count_every))

    async def watch_loop_lag(self, *, every: float = LAG_EVERY) -> None:
        """Until cancelled: sleep ``every`` seconds and note how much later
        than asked the loop woke us (a blocking call, a CPU-bound burst)."""
        while True:
            expected = time.monotonic() + every  # the loop's clock (loop.time() is time.monotonic())
            await asyncio.sleep(every)
            now = time.monotonic()
            self._lags.append((now, max(0.0, now - expected)))
            while self._lags and now - self._lags[0][0] > LAG_WINDOW:
                self._lags.popleft()

    async def count_backlogs(self, store: Reader) -> None:
        """Read the inbox's and the recordings' backlogs once (a failed read
        keeps the last values: logged, the next count tries again)."""
        try:
            inbox = (await store.read(_INBOX_PENDING))[0][0]
            recordings = (await store.read(_RECORDINGS_PENDING))[0][0]
            outbox = await store.read(OUTBOX_COUNTS)
        except Exception as exc:
            # Once per run of failures, not every count_every seconds.
            log.log(logging.DEBUG if self._count_failing else logging.WARNING,
                    "metrics: backlogs not counted (the gauges keep their last values): %s", exc)
            self._count_failing = True
            return
        if self._count_failing:
            log.info("metrics: backlogs counted again")
            self._count_failing = False
        self.inbox_pending.set(inbox)
        self.recordings_pending.set(recordings)
        now = time.time()
        for sink in self.crm_sinks:  # a sink with nothing waiting shows 0, not its last value
            self.outbox_depth.labels(sink).set(0)
            self.outbox_dead.labels(sink).set(0)
            self.outbox_oldest.labels(sink).set(0)
        for sink, pending, dead, oldest in outbox:
            self.outbox_depth.labels(sink).set(pending)
            self.outbox_dead.labels(sink).set(dead)
            self.outbox_oldest.labels(sink).set(max(0.0, now - oldest) if oldest is not None else 0.0)

    async def _count_every(self, store: Reader, every: float) -> None:
        while True:
            await self.count_backlogs(store)
            await asyncio.sleep(every)
