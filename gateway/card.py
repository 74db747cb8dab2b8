"""The caller card: what an agent sees while his phone rings.

Built at once from what the gateway holds in memory (no I/O), so the pop
never waits; history from the store is added later by ``with_history``.
Fields that later releases fill (contact, assigned manager, number plan, VIP)
are present and empty, with the dialled number standing in for shop and channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import phonenumbers

from crm_bridge.store import CallSummary
from gateway.numberplan import Line
from gateway.phones import format_e164, parse_phone
from gateway.record import iso

Card = dict[str, Any]


def phone(raw: str | None, region: str) -> dict[str, Any] | None:
    """A number as E.164 and as people write it; an extension stays as it is."""
    if not raw:
        return None
    if raw.isdigit() and len(raw) <= 6:
        return {"e164": None, "display": raw, "raw": raw, "extension": True}
    parsed = parse_phone(raw, region)
    if parsed is None:
        return {"e164": None, "display": raw, "raw": raw}
    fmt = (phonenumbers.PhoneNumberFormat.NATIONAL
           if phonenumbers.region_code_for_number(parsed) == region and region != "RU"
           else phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return {
        "e164": format_e164(parsed),
        "display": phonenumbers.format_number(parsed, fmt),
        "raw": raw,
    }


def spellings(raw: str, region: str) -> list[str]:
    """The ways a PBX may write one phone number (E.164, without +, with a
    national trunk prefix such as Russia's 8), for finding its past calls.
    Empty for a withheld or unreadable number: those have no history."""
    parsed = parse_phone(raw, region)
    if parsed is None:
        return []
    e164 = format_e164(parsed)
    national = str(parsed.national_number)
    forms = {raw, e164, e164[1:], national}
    if parsed.country_code == 7:
        forms.add("8" + national)
    return sorted(forms)


def build_card(
    *,
    direction: str,
    caller: str | None,
    caller_name: str | None,
    dialled: str | None,
    region: str,
    crm_url_template: str | None,
    line: Line | None = None,
) -> Card:
    # On an outbound call that reaches an agent (a transfer), the customer is the dialled side.
    customer_raw = dialled if direction == "outbound" else caller
    customer = phone(customer_raw, region)
    if customer is not None and direction != "outbound":
        customer["name"] = caller_name
    dialled_phone = phone(dialled if direction != "outbound" else caller, region)
    stand_in = (dialled_phone.get("e164") or dialled) if dialled_phone else (dialled or None)
    crm_url = None
    if crm_url_template and customer is not None:
        key = customer.get("e164") or customer["raw"]
        crm_url = crm_url_template.replace("{phone}", quote(key, safe="")).replace("{contact_id}", "")
    return {
        "direction": direction,
        "caller": customer,
        "dialled": dialled_phone,
        # Without a number plan the dialled number stands in for shop and channel.
        "shop": line.shop.name if line else stand_in,
        "shop_id": line.shop.shop_id if line else None,
        "channel": line.channel if line else stand_in,
        "campaign": line.campaign if line else None,
        "contact": None,
        "assigned_manager": None,
        "vip": False,
        "recent_calls": None,
        "open_missed_calls": None,
        "crm_url": crm_url,
    }


def with_history(card: Card, calls: Sequence[CallSummary], open_missed_calls: int) -> Card:
    """The card with its last calls and the caller's open missed-call tasks."""
    return {
        **card,
        "recent_calls": [
            {"call_id": c.call_id, "started_at": iso(c.started_at), "direction": c.direction, "outcome": c.outcome,
             "answered_by": c.answered_by, "result": c.result, "note": c.note}
            for c in calls
        ],
        "open_missed_calls": open_missed_calls,
    }
