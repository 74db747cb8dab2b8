"""CallTracker: the pure call state machine (no I/O, no clock, no awaits).

``feed(event) -> effects``, in the spirit of h11. Everything the product knows
about a call's outcome is decided here; connectors only translate.

Theory of operation
-------------------
A call is a set of legs keyed by the PBX's call id. The first non-plumbing leg
is the call's *origin*: the customer on an inbound call, the agent who places an
outbound or internal call. Every other agent leg that some leg dials is an
*offer*; offers fill ``rang`` (in the order agents were first offered the call)
and pop cards when their device rings.

A person answered only when an offered agent leg is answered (its dial ended
with ANSWER) or sits in a bridge with another leg. The caller's channel going
Up (a dialplan Answer for a prompt, IVR, voicemail) proves nothing. An agent leg
that shares a bridge with another leg has *talked*; legs are listed in
``talked`` in the order they first talked, consecutive repeats of one agent
collapsed, so a transfer keeps one record naming everyone in order.

An unanswered inbound call is *abandoned* when the caller gave up: he hung up
(or asked to) while an offer was still ringing or while waiting in a queue, or
the PBX reported a queue abandon. Otherwise it is *missed* (timeout, all busy,
nobody available, sent to a prompt or voicemail). An unanswered outbound or
internal call is *busy* when the far side was busy, else *failed*.

The dial of a leg ends once; later DialEnds for it (a queue member gets
NOANSWER then CANCEL) change nothing, and neither do "no answer" legs after
someone answered. A call ends when its last leg hangs up; its record is then
emitted once in ``CallFinished`` and the call is forgotten.

A leg whose call id changes (Asterisk moves a bridge's channels to the oldest
Linkedid) takes its call into the call it now names: the two merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.effects import (
    AgentAnswered,
    AgentLegEnded,
    AgentRingStarted,
    AgentRingStopped,
    CallFinished,
    Effect,
)
from gateway.events import (
    CallEvent,
    CallTransferred,
    DialStatus,
    LegBridged,
    LegCreated,
    LegDialEnded,
    LegDialled,
    LegHangupRequested,
    LegHungUp,
    LegRinging,
    LegUnbridged,
    LiveLegsListed,
    PartyKind,
    PbxRestarted,
    QueueAbandoned,
    QueueJoined,
    QueueLeft,
    RecordingStarted,
)
from gateway.record import CallRecord, LegRecord

ANSWERED_ELSEWHERE_CAUSE = 26  # Q.850 "non-selected user clearing"
BUSY_CAUSE = 17


@dataclass(slots=True)
class _Leg:
    leg_id: str
    kind: PartyKind
    extension: str | None
    number: str | None
    name: str | None
    dialled: str | None
    started_at: float
    offered: bool = False  # dialled by another leg of the call
    dial_active: bool = False  # a dial to this leg is in progress
    dial_status: DialStatus | None = None
    ring_seen: bool = False
    popped: bool = False  # a ring-started effect went out and no stop yet
    answered_at: float | None = None
    talked: bool = False
    ended_at: float | None = None
    cause: int | None = None
    bridge: str | None = None

    @property
    def is_agent(self) -> bool:
        return self.kind is PartyKind.AGENT


@dataclass(slots=True)
class _Call:
    call_id: str
    started_at: float
    legs: dict[str, _Leg] = field(default_factory=dict)
    origin: str | None = None
    rang: list[str] = field(default_factory=list)
    talked: list[str] = field(default_factory=list)
    answered_at: float | None = None
    answered_by: str | None = None
    far_answered: bool = False  # outbound/internal: the dialled side answered
    caller_gave_up: bool = False
    queue_abandoned: bool = False
    queues: set[str] = field(default_factory=set)  # queues the caller is waiting in
    statuses: list[DialStatus] = field(default_factory=list)  # how offers ended without answer
    outbound_dialled: str | None = None
    recording_path: str | None = None


class CallTracker:
    """Live calls keyed by call id; feed it normalised events, get effects back."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}
        self._leg_call: dict[str, str] = {}
        self._bridges: dict[str, set[str]] = {}

    # -- public ---------------------------------------------------------------

    @property
    def live_call_count(self) -> int:
        return len(self._calls)

    def feed(self, event: CallEvent) -> list[Effect]:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return []
        return handler(self, event)

    def busy_extensions(self) -> set[str]:
        """Agents on a call now: talking, or placing a call of their own."""
        return {
            leg.extension
            for call in self._calls.values()
            for leg in call.legs.values()
            if leg.extension is not None and leg.ended_at is None
            and (leg.answered_at is not None or leg.leg_id == call.origin)
        }

    def snapshot(self, at: float) -> list[CallRecord]:
        """Records of the calls still open (``ended`` false), oldest first."""
        calls = sorted(self._calls.values(), key=lambda c: (c.started_at, c.call_id))
        return [self._record(c, at, ended=False, interrupted=False) for c in calls]

    def finish_all(self, at: float) -> list[Effect]:
        """The gateway lost sight of every live call (PBX restart): end them,
        interrupted, with their best-known outcome."""
        effects: list[Effect] = []
        for call in sorted(self._calls.values(), key=lambda c: (c.started_at, c.call_id)):
            effects.extend(self._finish(call, at, interrupted=True))
        return effects

    # -- lookups -------------------------------------------------------------

    def _call_of(self, call_id: str, leg_id: str) -> _Call | None:
        """The call a leg belongs to, merging calls when the leg's id moved."""
        known = self._leg_call.get(leg_id)
        if known is None:
            return None
        if known != call_id and call_id in self._calls and known in self._calls:
            self._merge(self._calls[known], into=self._calls[call_id])
            return self._calls[call_id]
        return self._calls.get(known)

    def _merge(self, absorbed: _Call, *, into: _Call) -> None:
        for leg_id, leg in absorbed.legs.items():
            into.legs[leg_id] = leg
            self._leg_call[leg_id] = into.call_id
        for ext in absorbed.rang:
            if ext not in into.rang:
                into.rang.append(ext)
        for ext in absorbed.talked:
            _append_talker(into.talked, ext)
        if into.answered_at is None and absorbed.answered_at is not None:
            into.answered_at, into.answered_by = absorbed.answered_at, absorbed.answered_by
        into.far_answered = into.far_answered or absorbed.far_answered
        into.statuses.extend(absorbed.statuses)
        into.recording_path = into.recording_path or absorbed.recording_path
        into.started_at = min(into.started_at, absorbed.started_at)
        del self._calls[absorbed.call_id]

    # -- handlers ------------------------------------------------------------

    def _on_created(self, ev: LegCreated) -> list[Effect]:
        if ev.leg_id in self._leg_call:
            return []  # a repeat (resync lists legs we know)
        call = self._calls.get(ev.call_id)
        if call is None:
            call = self._calls[ev.call_id] = _Call(ev.call_id, ev.at)
        leg = _Leg(ev.leg_id, ev.kind, ev.extension, ev.number, ev.name, ev.dialled, ev.at)
        call.legs[ev.leg_id] = leg
        self._leg_call[ev.leg_id] = call.call_id
        if ev.kind is not PartyKind.LOCAL and (call.origin is None or ev.leg_id == ev.call_id):
            call.origin = ev.leg_id  # the leg that carries the call's own id is its first
        return []

    def _on_dialled(self, ev: LegDialled) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.to_leg)
        if call is None:
            return []
        leg = call.legs[ev.to_leg]
        leg.dial_active = True
        leg.dial_status = None
        if ev.from_leg is None or ev.to_leg == call.origin:
            return []  # the PBX ringing an Originate's own agent: not an offer
        leg.offered = True
        if leg.kind is PartyKind.EXTERNAL and call.outbound_dialled is None:
            call.outbound_dialled = ev.dialled or leg.number
        if leg.is_agent and leg.extension is not None:
            if leg.extension not in call.rang:
                call.rang.append(leg.extension)
            if leg.ring_seen:
                return self._pop(call, leg, ev.at)
        return []

    def _on_ringing(self, ev: LegRinging) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is None:
            return []
        leg = call.legs[ev.leg_id]
        leg.ring_seen = True
        if leg.offered and leg.is_agent and leg.answered_at is None:
            return self._pop(call, leg, ev.at)
        return []

    def _pop(self, call: _Call, leg: _Leg, at: float) -> list[Effect]:
        if leg.popped or leg.ended_at is not None or leg.extension is None:
            return []
        leg.popped = True
        origin = call.legs.get(call.origin) if call.origin else None
        direction = self._direction(call)
        caller = self._caller(call, origin, direction)
        return [
            AgentRingStarted(
                call.call_id,
                leg.extension,
                leg.leg_id,
                at,
                direction,
                caller,
                origin.name if origin else None,
                self._dialled(call, origin, direction),
                call.started_at,
            )
        ]

    def _on_dial_ended(self, ev: LegDialEnded) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.to_leg)
        if call is None:
            return []
        leg = call.legs[ev.to_leg]
        if not leg.dial_active:
            return []  # a second DialEnd for one leg (queue: NOANSWER then CANCEL)
        leg.dial_active = False
        leg.dial_status = ev.status
        if ev.to_leg == call.origin:
            return []  # an Originate reached its own agent
        if ev.status is DialStatus.ANSWER:
            return self._answered(call, leg, ev.at)
        if leg.offered and call.answered_at is None:
            call.statuses.append(ev.status)
        if not leg.popped:
            return []
        if ev.status is DialStatus.CANCEL:
            if call.caller_gave_up:
                return self._stop(leg, call, ev.at, "caller_hung_up")
            if call.answered_at is not None:
                return self._stop(leg, call, ev.at, "answered_elsewhere")
            return []  # decided at the leg's hangup: cause 26 means a colleague answered
        return self._stop(leg, call, ev.at, "stopped_ringing")

    def _answered(self, call: _Call, leg: _Leg, at: float) -> list[Effect]:
        """A non-origin leg answered (its dial ended with ANSWER or it talked)."""
        effects: list[Effect] = []
        if leg.answered_at is None:
            leg.answered_at = at
            leg.popped = False  # the pop becomes a talking card, not a withdraw
            if leg.is_agent and leg.extension is not None:
                effects.append(AgentAnswered(call.call_id, leg.extension, leg.leg_id, at))
        origin = call.legs.get(call.origin) if call.origin else None
        if origin is not None and origin.kind is PartyKind.EXTERNAL:
            if leg.is_agent and call.answered_at is None:
                call.answered_at, call.answered_by = at, leg.extension
        elif leg.kind is not PartyKind.LOCAL and not call.far_answered:
            call.far_answered = True
            call.answered_at = at
            if leg.is_agent:
                call.answered_by = leg.extension
        return effects

    def _stop(self, leg: _Leg, call: _Call, at: float, reason: str) -> list[Effect]:
        leg.popped = False
        assert leg.extension is not None
        return [AgentRingStopped(call.call_id, leg.extension, leg.leg_id, at, reason)]

    def _on_bridged(self, ev: LegBridged) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is None:
            return []
        leg = call.legs[ev.leg_id]
        members = self._bridges.setdefault(ev.bridge_id, set())
        members.add(ev.leg_id)
        leg.bridge = ev.bridge_id
        if ev.holding or len(members) < 2:
            return []
        effects: list[Effect] = []
        for member_id in sorted(members, key=lambda m: m != ev.leg_id):
            owner = self._calls.get(self._leg_call.get(member_id, ""))
            if owner is None:
                continue
            member = owner.legs[member_id]
            if member_id == owner.origin or member.kind is PartyKind.LOCAL:
                continue
            effects.extend(self._answered(owner, member, ev.at))
            if member.is_agent and not member.talked and member.extension is not None:
                member.talked = True
                _append_talker(owner.talked, member.extension)
        return effects

    def _on_unbridged(self, ev: LegUnbridged) -> list[Effect]:
        members = self._bridges.get(ev.bridge_id)
        if members is not None:
            members.discard(ev.leg_id)
            if not members:
                del self._bridges[ev.bridge_id]
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is not None and call.legs[ev.leg_id].bridge == ev.bridge_id:
            call.legs[ev.leg_id].bridge = None
        return []

    def _on_hangup_requested(self, ev: LegHangupRequested) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is None or ev.leg_id != call.origin or call.answered_at is not None:
            return []
        if call.queues or any(leg.offered and leg.dial_active for leg in call.legs.values()):
            call.caller_gave_up = True
        return []

    def _on_hung_up(self, ev: LegHungUp) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is None:
            return []
        leg = call.legs[ev.leg_id]
        if leg.ended_at is not None:
            return []
        if ev.leg_id == call.origin:
            effects = self._on_hangup_requested(LegHangupRequested(ev.call_id, ev.leg_id, ev.at))
        else:
            effects = []
        leg.ended_at = ev.at
        leg.cause = ev.cause
        if leg.bridge is not None:
            self._on_unbridged(LegUnbridged(ev.call_id, ev.leg_id, leg.bridge, ev.at))
        if leg.dial_active and leg.offered and call.answered_at is None:
            leg.dial_active = False
            status = DialStatus.BUSY if ev.cause == BUSY_CAUSE else DialStatus.NOANSWER
            call.statuses.append(status)
        if leg.popped:
            effects.extend(self._stop(leg, call, ev.at, self._stop_reason(call, ev.cause)))
        elif leg.talked and leg.extension is not None:
            effects.append(AgentLegEnded(call.call_id, leg.extension, leg.leg_id, ev.at))
        del self._leg_call[ev.leg_id]
        if all(other.ended_at is not None for other in call.legs.values()):
            effects.extend(self._finish(call, ev.at, interrupted=False))
        return effects

    @staticmethod
    def _stop_reason(call: _Call, cause: int | None) -> str:
        if cause == ANSWERED_ELSEWHERE_CAUSE or call.answered_at is not None:
            return "answered_elsewhere"
        if call.caller_gave_up:
            return "caller_hung_up"
        return "stopped_ringing"

    def _on_queue_joined(self, ev: QueueJoined) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is not None:
            call.queues.add(ev.queue)
        return []

    def _on_queue_left(self, ev: QueueLeft) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is not None:
            call.queues.discard(ev.queue)
        return []

    def _on_queue_abandoned(self, ev: QueueAbandoned) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is not None and call.answered_at is None:
            call.queue_abandoned = True
            call.caller_gave_up = True
        return []

    def _on_recording(self, ev: RecordingStarted) -> list[Effect]:
        call = self._call_of(ev.call_id, ev.leg_id)
        if call is not None and ev.path and call.recording_path is None:
            call.recording_path = ev.path
        return []

    def _on_transferred(self, ev: CallTransferred) -> list[Effect]:
        return []  # the legs and bridges that follow carry the facts

    def _on_restarted(self, ev: PbxRestarted) -> list[Effect]:
        return self.finish_all(ev.at)

    def _on_live_legs(self, ev: LiveLegsListed) -> list[Effect]:
        """After a gap: legs the PBX no longer has ended while we were away."""
        effects: list[Effect] = []
        live = {leg_id for _, leg_id in ev.legs}
        for call in sorted(self._calls.values(), key=lambda c: (c.started_at, c.call_id)):
            gone = [leg for leg in call.legs.values() if leg.ended_at is None and leg.leg_id not in live]
            if len(gone) == sum(1 for leg in call.legs.values() if leg.ended_at is None):
                effects.extend(self._finish(call, ev.at, interrupted=True))
                continue
            for leg in gone:
                effects.extend(self._on_hung_up(LegHungUp(call.call_id, leg.leg_id, ev.at)))
        return effects

    # -- the record ----------------------------------------------------------

    def _finish(self, call: _Call, at: float, *, interrupted: bool) -> list[Effect]:
        effects: list[Effect] = []
        for leg in call.legs.values():
            if leg.ended_at is None:
                if leg.popped and leg.extension is not None:
                    leg.popped = False
                    effects.append(
                        AgentRingStopped(call.call_id, leg.extension, leg.leg_id, at, self._stop_reason(call, None))
                    )
                elif leg.talked and leg.extension is not None:
                    effects.append(AgentLegEnded(call.call_id, leg.extension, leg.leg_id, at))
                self._leg_call.pop(leg.leg_id, None)
                if leg.bridge is not None:
                    members = self._bridges.get(leg.bridge)
                    if members is not None:
                        members.discard(leg.leg_id)
                        if not members:
                            del self._bridges[leg.bridge]
        effects.append(CallFinished(self._record(call, at, ended=True, interrupted=interrupted)))
        del self._calls[call.call_id]
        return effects

    def _direction(self, call: _Call) -> str:
        origin = call.legs.get(call.origin) if call.origin else None
        if origin is not None and origin.kind is PartyKind.EXTERNAL:
            return "inbound"
        if any(leg.kind is PartyKind.EXTERNAL and leg.leg_id != call.origin for leg in call.legs.values()):
            return "outbound"
        return "internal"

    @staticmethod
    def _caller(call: _Call, origin: _Leg | None, direction: str) -> str | None:
        if origin is None:
            return None
        if direction == "inbound":
            return origin.number
        return origin.extension or origin.number

    @staticmethod
    def _dialled(call: _Call, origin: _Leg | None, direction: str) -> str | None:
        if direction == "inbound":
            return origin.dialled if origin else None
        if direction == "outbound":
            return call.outbound_dialled
        return call.rang[0] if call.rang else (origin.dialled if origin else None)

    def _record(self, call: _Call, at: float, *, ended: bool, interrupted: bool) -> CallRecord:
        origin = call.legs.get(call.origin) if call.origin else None
        direction = self._direction(call)
        outcome, reason = self._outcome(call, direction)
        ended_at = max((leg.ended_at for leg in call.legs.values() if leg.ended_at is not None), default=None)
        if ended and (ended_at is None or interrupted):
            ended_at = at
        until = call.answered_at if call.answered_at is not None else (ended_at if ended_at is not None else at)
        talk = (ended_at if ended_at is not None else at) - call.answered_at if call.answered_at is not None else 0.0
        return CallRecord(
            call_id=call.call_id,
            direction=direction,
            caller=self._caller(call, origin, direction),
            caller_name=origin.name if origin else None,
            dialled=self._dialled(call, origin, direction),
            outcome=outcome,
            answered_by=call.answered_by,
            rang=tuple(call.rang),
            talked=tuple(call.talked),
            started_at=call.started_at,
            answered_at=call.answered_at,
            ended_at=ended_at if ended else None,
            ring_seconds=max(0.0, until - call.started_at),
            talk_seconds=max(0.0, talk),
            hangup_cause=origin.cause if origin else None,
            reason=reason,
            interrupted=interrupted,
            ended=ended,
            recording_path=call.recording_path,
            legs=tuple(
                LegRecord(
                    leg.leg_id,
                    leg.kind.value,
                    leg.extension,
                    leg.number,
                    leg.started_at,
                    leg.answered_at,
                    leg.ended_at,
                    leg.cause,
                )
                for leg in call.legs.values()
            ),
        )

    @staticmethod
    def _outcome(call: _Call, direction: str) -> tuple[str, str | None]:
        if direction == "inbound":
            if call.answered_by is not None:
                return "answered", None
            if call.caller_gave_up:
                return "abandoned", "caller_hung_up"
            if not call.statuses:
                return "missed", "nobody_available"
            return "missed", call.statuses[-1].value
        if call.far_answered:
            return "answered", None
        if DialStatus.BUSY in call.statuses:
            return "busy", DialStatus.BUSY.value
        if call.statuses:
            return "failed", call.statuses[-1].value
        return "failed", "not_connected"


def _append_talker(talked: list[str], extension: str) -> None:
    if not talked or talked[-1] != extension:
        talked.append(extension)


_HANDLERS: dict[type, Callable[[CallTracker, Any], list[Effect]]] = {
    LegCreated: CallTracker._on_created,
    LegDialled: CallTracker._on_dialled,
    LegRinging: CallTracker._on_ringing,
    LegDialEnded: CallTracker._on_dial_ended,
    LegBridged: CallTracker._on_bridged,
    LegUnbridged: CallTracker._on_unbridged,
    LegHangupRequested: CallTracker._on_hangup_requested,
    LegHungUp: CallTracker._on_hung_up,
    QueueJoined: CallTracker._on_queue_joined,
    QueueLeft: CallTracker._on_queue_left,
    QueueAbandoned: CallTracker._on_queue_abandoned,
    RecordingStarted: CallTracker._on_recording,
    CallTransferred: CallTracker._on_transferred,
    PbxRestarted: CallTracker._on_restarted,
    LiveLegsListed: CallTracker._on_live_legs,
}
