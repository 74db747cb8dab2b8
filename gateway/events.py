"""Normalised call events: what every connector turns its PBX's traffic into.

The core never sees a vendor's format. A connector describes a call as *legs*
(one per channel or per provider leg), each with a party kind, and reports what
happens to them in the past tense. All events of one call carry its ``call_id``
(Asterisk's Linkedid, a provider's call or entry id) and the leg they concern;
``at`` is the time the event happened, in epoch seconds (UTC), supplied by the
connector so that the core has no clock of its own.

A leg's ``call_id`` may change while it lives (Asterisk moves every channel of a
bridge to the oldest Linkedid): the tracker merges the two calls then.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PartyKind(str, Enum):
    """Who is at the end of a leg."""

    AGENT = "agent"  # a configured agent device: a person who sells
    EXTERNAL = "external"  # a trunk: the customer's side
    LOCAL = "local"  # PBX plumbing (Asterisk Local channels): never a person


class DialStatus(str, Enum):
    """How an attempt to reach a leg ended."""

    ANSWER = "answer"
    NOANSWER = "noanswer"
    BUSY = "busy"
    CANCEL = "cancel"  # the dialling side gave up: caller hung up, queue moved on, colleague answered
    CONGESTION = "congestion"
    UNAVAILABLE = "unavailable"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class LegCreated:
    """A leg appeared. The first leg of a call creates the call."""

    call_id: str
    leg_id: str
    at: float
    kind: PartyKind
    extension: str | None = None  # the agent's extension when kind is AGENT
    number: str | None = None  # the party's number as the PBX gives it (caller ID)
    name: str | None = None  # the party's display name
    dialled: str | None = None  # the number this leg was started for (the DID of an inbound leg)


@dataclass(frozen=True, slots=True)
class LegDialled:
    """``from_leg`` started dialling ``to_leg``; ``from_leg`` is None when the PBX
    itself places the call (an Originate's first leg), which is not an offer."""

    call_id: str
    to_leg: str
    at: float
    from_leg: str | None = None
    dialled: str | None = None  # the number or extension dialled, when known


@dataclass(frozen=True, slots=True)
class LegRinging:
    """The device of a leg is ringing."""

    call_id: str
    leg_id: str
    at: float


@dataclass(frozen=True, slots=True)
class LegDialEnded:
    """The attempt to reach ``to_leg`` ended with ``status``."""

    call_id: str
    to_leg: str
    at: float
    status: DialStatus
    from_leg: str | None = None


@dataclass(frozen=True, slots=True)
class LegBridged:
    """A leg entered a bridge (a media connection with the bridge's other legs)."""

    call_id: str
    leg_id: str
    bridge_id: str
    at: float
    holding: bool = False  # a holding/parking bridge connects nobody to a person


@dataclass(frozen=True, slots=True)
class LegUnbridged:
    call_id: str
    leg_id: str
    bridge_id: str
    at: float


@dataclass(frozen=True, slots=True)
class LegHangupRequested:
    """Someone asked for this leg to end; on the caller's leg while an offer
    rings, it means the caller gave up."""

    call_id: str
    leg_id: str
    at: float


@dataclass(frozen=True, slots=True)
class LegHungUp:
    call_id: str
    leg_id: str
    at: float
    cause: int | None = None  # Q.850 cause: 16 normal, 17 busy, 26 answered elsewhere
    cause_text: str | None = None


@dataclass(frozen=True, slots=True)
class QueueJoined:
    call_id: str
    leg_id: str
    queue: str
    at: float


@dataclass(frozen=True, slots=True)
class QueueAbandoned:
    """The caller hung up while waiting in a queue."""

    call_id: str
    leg_id: str
    queue: str
    at: float


@dataclass(frozen=True, slots=True)
class QueueLeft:
    call_id: str
    leg_id: str
    queue: str
    at: float


@dataclass(frozen=True, slots=True)
class CallTransferred:
    """A blind or attended transfer was reported. Informational: the legs and
    bridges that follow carry the facts the record is built from."""

    call_id: str
    at: float
    kind: str  # "blind" | "attended"
    target: str | None = None


@dataclass(frozen=True, slots=True)
class RecordingStarted:
    call_id: str
    leg_id: str
    at: float
    path: str | None = None


@dataclass(frozen=True, slots=True)
class PbxRestarted:
    """The PBX restarted or shut down: every live call is gone."""

    at: float


@dataclass(frozen=True, slots=True)
class LiveLegsListed:
    """After a reconnect: the legs the PBX still has (call_id, leg_id). Calls the
    tracker holds with none of these legs ended while it was not looking."""

    at: float
    legs: frozenset[tuple[str, str]]


CallEvent = (
    LegCreated
    | LegDialled
    | LegRinging
    | LegDialEnded
    | LegBridged
    | LegUnbridged
    | LegHangupRequested
    | LegHungUp
    | QueueJoined
    | QueueAbandoned
    | QueueLeft
    | CallTransferred
    | RecordingStarted
    | PbxRestarted
    | LiveLegsListed
)
