"""The events the gateway reports to CRMs, as data: built from the core's
effects and records, pure (no clock, no I/O). Their JSON shape is the public
contract of the generic webhook, ``docs/crm-events.schema.json``; the other
sinks translate it into their CRM's calls.

Each event comes with its stream (what must be delivered in order: the call)
and its idempotency key, derived from the call id and what happened, so the
same event written twice is one delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.effects import AgentAnswered, AgentRingStarted, AgentRingStopped
from gateway.record import CallRecord, iso


@dataclass(frozen=True, slots=True)
class Event:
    event: str  # one of crm_bridge.outbox.EVENTS
    stream: str
    key: str
    data: dict[str, Any]


def ringing(effect: AgentRingStarted, *, agent: str | None, customer: str | None, shop: str | None,
            channel: str | None) -> Event:
    """An agent's phone rings (``customer``: the other party as E.164, None when withheld)."""
    return Event("call.ringing", effect.call_id, f"{effect.call_id}:ringing:{effect.extension}", {
        "call_id": effect.call_id, "direction": effect.direction, "customer": customer,
        "caller": effect.caller, "caller_name": effect.caller_name, "dialled": effect.dialled,
        "extension": effect.extension, "agent": agent, "shop": shop, "channel": channel,
        "started_at": iso(effect.call_started_at or effect.at), "at": iso(effect.at),
    })


def ring_stopped(effect: AgentRingStopped, *, agent: str | None) -> Event:
    """An agent's phone stopped ringing without him answering."""
    return Event("call.ring_stopped", effect.call_id, f"{effect.call_id}:ring_stopped:{effect.extension}", {
        "call_id": effect.call_id, "extension": effect.extension, "agent": agent, "reason": effect.reason,
        "at": iso(effect.at),
    })


def answered(effect: AgentAnswered, *, agent: str | None) -> Event:
    """An agent talks on the call (answered, or reached by a transfer)."""
    return Event("call.answered", effect.call_id, f"{effect.call_id}:answered:{effect.extension}", {
        "call_id": effect.call_id, "extension": effect.extension, "agent": agent, "at": iso(effect.at),
    })


def finished(record: CallRecord, *, agents: dict[str, str]) -> Event:
    """The call's full record (``agents``: extension -> login of those on it)."""
    data = record.to_json()
    data.pop("recording_path")  # a PBX path: the recording comes as recording.ready
    data["customer"] = record.customer
    data["answered_by_agent"] = agents.get(record.answered_by) if record.answered_by else None
    # The owner of the talk (DESIGN): the last agent who talked, after transfers.
    owner = record.talked[-1] if record.talked else record.answered_by
    data["owner_agent"] = agents.get(owner) if owner else None
    data["agents"] = agents
    data["recording_expected"] = record.recording_path is not None
    return Event("call.finished", record.call_id, f"{record.call_id}:finished", data)
