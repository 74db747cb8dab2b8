"""Reading phone numbers: the one place that asks phonenumbers whether a string
is a possible number (cards, contacts, routing and the config all use it)."""

from __future__ import annotations

import phonenumbers


def parse_phone(raw: str | None, region: str) -> phonenumbers.PhoneNumber | None:
    """``raw`` as a possible phone number (numbers without a country code are
    read as ``region``'s), or None when it is empty, withheld or unreadable."""
    if not raw:
        return None
    try:
        parsed = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    return parsed if phonenumbers.is_possible_number(parsed) else None


def format_e164(parsed: phonenumbers.PhoneNumber) -> str:
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
