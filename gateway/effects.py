"""Effects: what the tracker asks the services to do. Immutable values; the
tracker only returns them, the service carries them out (hub, store)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.record import CallRecord


@dataclass(frozen=True, slots=True)
class AgentRingStarted:
    """An agent's device started ringing for a call: pop his card."""

    call_id: str
    extension: str
    leg_id: str
    at: float
    direction: str
    caller: str | None
    caller_name: str | None
    dialled: str | None
    call_started_at: float = 0.0  # picks the number plan the call started under


@dataclass(frozen=True, slots=True)
class AgentRingStopped:
    """An agent's device stopped ringing without him answering: withdraw.

    reason: answered_elsewhere | stopped_ringing | caller_hung_up
    """

    call_id: str
    extension: str
    leg_id: str
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class AgentAnswered:
    """An agent is now talking on the call (answered, or reached by a transfer)."""

    call_id: str
    extension: str
    leg_id: str
    at: float


@dataclass(frozen=True, slots=True)
class AgentLegEnded:
    """An agent who talked on the call has left it (hung up or transferred away)."""

    call_id: str
    extension: str
    leg_id: str
    at: float


@dataclass(frozen=True, slots=True)
class CallFinished:
    record: CallRecord


Effect = AgentRingStarted | AgentRingStopped | AgentAnswered | AgentLegEnded | CallFinished
