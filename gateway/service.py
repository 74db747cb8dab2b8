"""The gateway service: feeds the core from a connector and carries out its
effects. The one place where the pure tracker meets I/O.

Events are applied by a single consumer, in arrival order. A finished call is
handed to the store without making the next event wait for the disk; a failed
write is logged with the call id (the store keeps the error for the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from connectors.ami.link import AmiLink
from connectors.ami.normalise import AmiNormaliser
from crm_bridge.store import Store
from gateway.effects import CallFinished, Effect
from gateway.events import CallEvent
from gateway.record import CallRecord
from gateway.tracker import CallTracker

log = logging.getLogger(__name__)

RecordListener = Callable[[CallRecord], None]


class Gateway:
    """Tracker + store, fed by any connector through ``apply``."""

    def __init__(self, store: Store, *, on_record: RecordListener | None = None) -> None:
        self.store = store
        self.tracker = CallTracker()
        self._on_record = on_record
        self._saving: set[asyncio.Task[None]] = set()

    def apply(self, event: CallEvent) -> None:
        for effect in self.tracker.feed(event):
            self._carry_out(effect)

    def _carry_out(self, effect: Effect) -> None:
        if isinstance(effect, CallFinished):
            task = asyncio.create_task(self._save(effect.record), name=f"save-{effect.record.call_id}")
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)
        else:
            log.debug("effect %s", effect)

    async def _save(self, record: CallRecord) -> None:
        try:
            await self.store.save_call(record)
        except Exception:
            log.exception("call %s could not be stored", record.call_id)
            return
        if self._on_record is not None:
            self._on_record(record)

    async def drain(self) -> None:
        """Wait until every finished call handed to the store is written."""
        while self._saving:
            await asyncio.gather(*list(self._saving), return_exceptions=True)

    async def consume_ami(self, link: AmiLink, normaliser: AmiNormaliser) -> None:
        """The single consumer of one AMI link's events."""
        while True:
            message, received_at = await link.events.get()
            for event in normaliser.normalise(message, received_at):
                self.apply(event)
