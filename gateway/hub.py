"""The hub: live pops per agent, delivered over websockets.

The service tells the hub what the tracker decided (an agent's phone rings,
stops ringing, he answers, his part of the call ends); the hub keeps the pops
that are live, turns each change into one JSON frame, and puts it on the send
queue of every connection of that agent, and of nobody else. Each connection
has its own bounded queue and sender task: a slow tab is disconnected, never
waited for. A connection that (re)joins gets the agent's live pops at once.

The protocol is documented in docs/websocket-protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from gateway.card import Card
from gateway.effects import AgentAnswered, AgentLegEnded, AgentRingStarted, AgentRingStopped
from gateway.metrics import Metrics
from gateway.record import iso
from gateway.users import Directory, User

log = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4408
CLOSE_AUTH = 4401
CLOSE_BAD_FRAME = 4400


def pop_id_of(call_id: str, extension: str) -> str:
    return f"{call_id}/{extension}"


@dataclass
class Pop:
    pop_id: str
    call_id: str
    extension: str
    login: str
    state: str  # ringing | talking | ended
    card: Card
    at: float

    def frame(self, kind: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": kind, "pop_id": self.pop_id, "call_id": self.call_id, "state": self.state}
        if kind == "pop":
            frame["at"] = iso(self.at)
        frame["card"] = self.card
        return frame


@dataclass(eq=False)
class Connection:
    """One websocket of one agent, with its bounded send queue."""

    user: User
    ws: web.WebSocketResponse
    queue: asyncio.Queue[str | None]
    sender: asyncio.Task[None] | None = None
    dropped: bool = field(default=False)


class Hub:
    def __init__(
        self,
        directory: Directory,
        metrics: Metrics,
        *,
        queue_size: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.metrics = metrics
        self.queue_size = queue_size
        self._clock = clock
        self._pops: dict[str, Pop] = {}
        self._pops_of_call: dict[str, set[str]] = {}
        self._connections: dict[str, set[Connection]] = {}  # login -> live connections
        self._past: dict[tuple[str, str], None] = {}  # (call, login) of recently ended pops, oldest first

    # -- what the tracker decided ----------------------------------------------

    def ring_started(self, effect: AgentRingStarted, card: Card) -> Pop | None:
        """The agent's phone rings: pop (or re-pop, if it rings again for this call)."""
        user = self.directory.by_extension(effect.extension)
        if user is None:
            return None  # a phone nobody logs in for
        pop_id = pop_id_of(effect.call_id, effect.extension)
        pop = self._pops.get(pop_id)
        if pop is None:
            pop = Pop(pop_id, effect.call_id, effect.extension, user.login, "ringing", card, effect.at)
            self._pops[pop_id] = pop
            self._pops_of_call.setdefault(effect.call_id, set()).add(pop_id)
        else:
            pop.state, pop.at = "ringing", effect.at
        self._send(pop.login, pop.frame("pop"))
        self.metrics.pops.inc()
        self.metrics.pop_latency.observe(max(0.0, self._clock() - effect.at))
        return pop

    def ring_stopped(self, effect: AgentRingStopped) -> None:
        pop = self._forget(pop_id_of(effect.call_id, effect.extension))
        if pop is not None:
            self._send(pop.login, {"type": "withdraw", "pop_id": pop.pop_id, "call_id": pop.call_id,
                                   "reason": effect.reason})

    def answered(self, effect: AgentAnswered) -> None:
        pop = self._pops.get(pop_id_of(effect.call_id, effect.extension))
        if pop is not None and pop.state != "talking":
            pop.state = "talking"
            self._send(pop.login, pop.frame("update"))

    def leg_ended(self, effect: AgentLegEnded) -> None:
        self._end(pop_id_of(effect.call_id, effect.extension))

    def call_finished(self, call_id: str) -> None:
        for pop_id in list(self._pops_of_call.get(call_id, ())):
            self._end(pop_id)

    def card_updated(self, pop_id: str, card: Card) -> None:
        """More of the card is known (history from the store)."""
        pop = self._pops.get(pop_id)
        if pop is not None:
            pop.card = card
            self._send(pop.login, pop.frame("update"))

    def _end(self, pop_id: str) -> None:
        pop = self._forget(pop_id)
        if pop is not None:
            pop.state = "ended"
            self._send(pop.login, pop.frame("update"))

    def notify(self, login: str, frame: dict[str, Any]) -> None:
        """A notice for one person (any role), on every tab he has open; nothing if he has none."""
        self._send(login, frame)

    def had_pop(self, call_id: str, login: str) -> bool:
        """Whether this agent's phone rang for the call lately (results may be set after)."""
        return (call_id, login) in self._past

    def _forget(self, pop_id: str) -> Pop | None:
        pop = self._pops.pop(pop_id, None)
        if pop is not None:
            self._past[(pop.call_id, pop.login)] = None
            if len(self._past) > 10_000:
                del self._past[next(iter(self._past))]
            ids = self._pops_of_call.get(pop.call_id)
            if ids is not None:
                ids.discard(pop_id)
                if not ids:
                    del self._pops_of_call[pop.call_id]
        return pop

    def live_pops(self, login: str) -> list[Pop]:
        return sorted((p for p in self._pops.values() if p.login == login), key=lambda p: p.at)

    # -- connections -------------------------------------------------------------

    def attach(self, user: User, ws: web.WebSocketResponse) -> Connection:
        """A connection authenticated as ``user``: start its sender, re-send live pops."""
        conn = Connection(user, ws, asyncio.Queue(self.queue_size))
        conn.sender = asyncio.create_task(self._sender(conn), name=f"hub-sender-{user.login}")
        self._connections.setdefault(user.login, set()).add(conn)
        self.metrics.connected_agents.set(len(self._connections))
        self._put(conn, _dump({"type": "ready", "agent": {"login": user.login, "name": user.name,
                                                          "extensions": list(user.extensions)},
                               "server_time": iso(self._clock())}))
        for pop in self.live_pops(user.login):
            self._put(conn, _dump(pop.frame("pop")))
        return conn

    async def detach(self, conn: Connection) -> None:
        conns = self._connections.get(conn.user.login)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._connections[conn.user.login]
        self.metrics.connected_agents.set(len(self._connections))
        if conn.sender is not None and not conn.sender.done():
            conn.queue.put_nowait(None) if not conn.queue.full() else conn.sender.cancel()
            await asyncio.gather(conn.sender, return_exceptions=True)

    def send_to(self, conn: Connection, frame: dict[str, Any]) -> None:
        self._put(conn, _dump(frame))

    def online(self) -> dict[str, int]:
        """Logins connected now, with their number of connections."""
        return {login: len(conns) for login, conns in self._connections.items()}

    async def close(self) -> None:
        for conns in list(self._connections.values()):
            for conn in list(conns):
                await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")
                await self.detach(conn)

    def _send(self, login: str, frame: dict[str, Any]) -> None:
        conns = self._connections.get(login)
        if not conns:
            return
        text = _dump(frame)  # serialised once for every tab
        for conn in list(conns):
            self._put(conn, text)

    def _put(self, conn: Connection, text: str) -> None:
        if conn.dropped:
            return
        try:
            conn.queue.put_nowait(text)
        except asyncio.QueueFull:
            conn.dropped = True
            self.metrics.slow_clients_dropped.inc()
            log.warning("agent %s: a connection fell %d frames behind and was dropped", conn.user.login,
                        self.queue_size)
            asyncio.create_task(conn.ws.close(code=CLOSE_TOO_SLOW, message=b"too slow"))

    @staticmethod
    async def _sender(conn: Connection) -> None:
        while True:
            text = await conn.queue.get()
            if text is None or conn.dropped:
                return
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return  # the read side notices and detaches


def _dump(frame: dict[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
