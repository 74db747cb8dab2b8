"""The webhook inbox: every accepted cloud-PBX request, on disk before its 2xx.

A request is written once (the provider's event key absorbs duplicates, in the
database, not in memory), kept with its call, and marked done in the same
transaction as the call's record, so after a crash the gateway finds exactly
the calls it still has to rebuild.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from connectors.webhook import Request

from .store import Store

Statement = tuple[str, tuple[Any, ...]]


def _insert(provider: str, account: str, dedup_key: str, call_key: str | None, request: Request) -> Statement:
    return (
        "INSERT INTO webhook_inbox (provider, account, dedup_key, call_key, received_at, path, query, body, done) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (provider, account, dedup_key) DO NOTHING",
        (provider, account, dedup_key, call_key, request.received_at, request.path, request.query, request.body,
         int(call_key is None)),
    )


@dataclass(frozen=True, slots=True)
class CallRef:
    provider: str
    account: str
    call_key: str


@dataclass(frozen=True, slots=True)
class Stored:
    dedup_key: str
    request: Request


class Inbox:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def put(self, provider: str, account: str, dedup_key: str, call_key: str | None, request: Request) -> None:
        """Keep the request; returns once committed. A request of no call is done at once."""
        await self.store.write(_insert(provider, account, dedup_key, call_key, request))

    def put_nowait(self, provider: str, account: str, dedup_key: str, call_key: str | None,
                   request: Request) -> asyncio.Future[None]:
        """Like ``put``, but never waits for room in the store's queue
        (``StoreFull`` at once); the future is done once committed."""
        return self.store.write_nowait(_insert(provider, account, dedup_key, call_key, request))

    async def history(self, call: CallRef) -> list[Stored]:
        """Every request of the call, in the order they arrived."""
        rows = await self.store.read(
            "SELECT dedup_key, path, query, body, received_at FROM webhook_inbox "
            "WHERE provider = ? AND account = ? AND call_key = ? ORDER BY inbox_id",
            (call.provider, call.account, call.call_key),
        )
        return [Stored(row[0], Request(row[1], row[2], bytes(row[3]), row[4])) for row in rows]

    async def pending_calls(self) -> list[CallRef]:
        """Calls with requests not yet turned into a stored record, oldest first."""
        rows = await self.store.read(
            "SELECT provider, account, call_key FROM webhook_inbox WHERE done = 0 AND call_key IS NOT NULL "
            "GROUP BY provider, account, call_key ORDER BY min(inbox_id)"
        )
        return [CallRef(*row) for row in rows]

    async def mark_done(self, call: CallRef) -> None:
        await self.store.write(*self.done_statements(call))

    @staticmethod
    def done_statements(call: CallRef) -> list[Statement]:
        """Mark the call's requests done: run with its record's save."""
        return [(
            "UPDATE webhook_inbox SET done = 1 WHERE provider = ? AND account = ? AND call_key = ? AND done = 0",
            (call.provider, call.account, call.call_key),
        )]
