"""The call record: one per call, the product's unit of truth.

Built by the tracker when a call ends, stored by the store, printed by
``replay`` and ``calls``. Times are epoch seconds in UTC; the JSON shape turns
them into ISO 8601 strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True, slots=True)
class LegRecord:
    leg_id: str
    kind: str  # PartyKind value
    extension: str | None
    number: str | None
    started_at: float
    answered_at: float | None
    ended_at: float | None
    hangup_cause: int | None


@dataclass(frozen=True, slots=True)
class CallRecord:
    call_id: str
    direction: str  # inbound | outbound | internal
    caller: str | None
    caller_name: str | None
    dialled: str | None
    outcome: str  # answered | missed | abandoned | busy | failed
    answered_by: str | None
    rang: tuple[str, ...]
    talked: tuple[str, ...]
    started_at: float
    answered_at: float | None
    ended_at: float | None
    ring_seconds: float  # the caller's wait: start to answer, or to the end when unanswered
    talk_seconds: float
    hangup_cause: int | None
    reason: str | None  # why a failed/busy/missed call did not connect (noanswer, busy, ...)
    interrupted: bool  # the gateway lost sight of the call before its end
    ended: bool
    recording_path: str | None = None
    legs: tuple[LegRecord, ...] = field(default=())
    shop: str | None = None  # the number plan's shop id for the dialled number, at the call's start
    channel: str | None = None  # ...and its ad channel
    customer: str | None = None  # the customer's number as E.164 (set by the service, which knows the region)

    def to_json(self) -> dict[str, Any]:
        """The shape of ``replay`` and ``calls`` output (legs left out)."""
        return {
            "call_id": self.call_id,
            "direction": self.direction,
            "caller": self.caller,
            "caller_name": self.caller_name,
            "dialled": self.dialled,
            "outcome": self.outcome,
            "answered_by": self.answered_by,
            "rang": list(self.rang),
            "talked": list(self.talked),
            "started_at": iso(self.started_at),
            "answered_at": iso(self.answered_at),
            "ended_at": iso(self.ended_at),
            "ring_seconds": round(self.ring_seconds, 3),
            "talk_seconds": round(self.talk_seconds, 3),
            "hangup_cause": self.hangup_cause,
            "reason": self.reason,
            "interrupted": self.interrupted,
            "ended": self.ended,
            "recording_path": self.recording_path,
            "shop": self.shop,
            "channel": self.channel,
        }


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def from_iso(s: str | None) -> float | None:
    if s is None:
        return None
    return datetime.fromisoformat(s).timestamp()
