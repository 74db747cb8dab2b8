"""Agent availability: who can take a call right now.

An agent is available when he is connected to the hub, not on another call,
not paused or in do-not-disturb, and not in his after-call wrap-up. The agent
sets pause and do-not-disturb himself; wrap-up starts by itself when his part
of a call ends. Pure bookkeeping with an injected clock; the hub and the
tracker supply the facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

STATUSES = ("available", "paused", "dnd")


@dataclass(frozen=True)
class AgentState:
    login: str
    status: str  # available | paused | dnd
    connected: bool
    on_call: bool
    wrap_up_until: float | None
    available: bool

    def public(self) -> dict[str, object]:
        return {"login": self.login, "status": self.status, "connected": self.connected, "on_call": self.on_call,
                "wrap_up_until": self.wrap_up_until, "available": self.available}


class Presence:
    def __init__(
        self,
        *,
        connected: Callable[[str], bool],
        busy_extensions: Callable[[], set[str]],
        extensions_of: Callable[[str], Iterable[str]],
        clock: Callable[[], float],
        wrap_up_seconds: float = 0.0,
    ) -> None:
        self._connected = connected
        self._busy = busy_extensions
        self._extensions_of = extensions_of
        self._clock = clock
        self.wrap_up_seconds = wrap_up_seconds
        self._status: dict[str, str] = {}
        self._wrap_up: dict[str, float] = {}

    def set_status(self, login: str, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        self._status[login] = status

    def call_ended_for(self, login: str) -> None:
        """His part of a call ended: wrap-up starts (when configured)."""
        if self.wrap_up_seconds > 0:
            self._wrap_up[login] = self._clock() + self.wrap_up_seconds

    def end_wrap_up(self, login: str) -> None:
        self._wrap_up.pop(login, None)

    def state(self, login: str) -> AgentState:
        now = self._clock()
        until = self._wrap_up.get(login)
        if until is not None and until <= now:
            del self._wrap_up[login]
            until = None
        busy = self._busy()
        on_call = any(ext in busy for ext in self._extensions_of(login))
        status = self._status.get(login, "available")
        connected = self._connected(login)
        return AgentState(login, status, connected, on_call, until,
                          connected and not on_call and status == "available" and until is None)

    def is_available(self, login: str) -> bool:
        return self.state(login).available
