"""Deals and channel spend: what the channel report counts money with.

A deal (from the CRM: ``POST /api/deals`` or CSV) names the customer's phone;
it is attributed, inside the transaction that stores it, to the channel of
the contact's first call (first touch) and to the channel of his last call
before the end of the deal's day (last touch). A repeated external id updates
the deal: importing the same file twice changes nothing. Spend per channel and
day (``POST /api/costs`` or CSV) adds to the tracking numbers' monthly fees.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from crm_bridge.contacts import e164
from crm_bridge.store import Store
from gateway.kpi import day_bounds

Statement = tuple[str, tuple[Any, ...]]
MAX_ID = 100
MAX_ROWS = 100_000


class DealError(ValueError):
    """A deal or cost that cannot be taken as given; ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Deal:
    external_id: str
    phone: str
    amount: float
    margin: float
    status: str
    day: date


def _number(value: Any, field: str) -> float:
    try:
        number = float(str(value).replace(",", ".").replace(" ", "")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise DealError(field, "expected a number") from None
    if not math.isfinite(number) or isinstance(value, bool):
        raise DealError(field, "expected a number")
    return number


def _day(value: Any, field: str = "date") -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise DealError(field, "expected a date like 2026-11-27") from None


def parse_deal(body: Mapping[str, Any], region: str) -> Deal:
    external_id = body.get("external_id")
    if not isinstance(external_id, str) or not 0 < len(external_id.strip()) <= MAX_ID:
        raise DealError("external_id", f"required: the CRM's id of the deal, at most {MAX_ID} characters")
    phone = e164(str(body.get("phone") or ""), region)
    if phone is None:
        raise DealError("phone", "required: the customer's phone number")
    status = body.get("status", "won")
    if status not in ("won", "lost"):
        raise DealError("status", "won or lost")
    amount = _number(body.get("amount", 0), "amount")
    margin = _number(body.get("margin", amount), "margin")
    if amount < 0:
        raise DealError("amount", "must not be negative")
    return Deal(external_id.strip(), phone, amount, margin, str(status), _day(body.get("date")))


class Deals:
    def __init__(self, store: Store, *, zone: str, region: str = "RU") -> None:
        self.store, self.zone, self.region = store, zone, region

    def statement(self, deal: Deal, now: float) -> Statement:
        end = day_bounds(deal.day, deal.day, self.zone)[1]
        # The last call he made to us: our own calls back carry no ad channel.
        last = ("(SELECT {0} FROM calls WHERE customer = ?2 AND direction = 'inbound' AND started_at < ?8 "
                "ORDER BY started_at DESC LIMIT 1)")
        contact = ("(SELECT c.{0} FROM contact_phones AS p JOIN contacts AS c ON c.contact_id = p.contact_id "
                   "WHERE p.phone = ?2)")
        return (
            "INSERT INTO deals (external_id, phone, amount, margin, status, day, first_shop, first_channel, "
            "last_shop, last_channel, created_at, updated_at) "
            f"VALUES (?1, ?2, ?3, ?4, ?5, ?6, {contact.format('first_shop')}, {contact.format('source_channel')}, "
            f"{last.format('shop')}, {last.format('channel')}, ?7, ?7) "
            "ON CONFLICT (external_id) DO UPDATE SET phone = excluded.phone, amount = excluded.amount, "
            "margin = excluded.margin, status = excluded.status, day = excluded.day, "
            "first_shop = excluded.first_shop, first_channel = excluded.first_channel, "
            "last_shop = excluded.last_shop, last_channel = excluded.last_channel, updated_at = excluded.updated_at",
            (deal.external_id, deal.phone, deal.amount, deal.margin, deal.status, deal.day.isoformat(), now, end),
        )

    async def put(self, deal: Deal, now: float) -> dict[str, Any]:
        await self.store.write(self.statement(deal, now))
        rows = await self.store.read(
            "SELECT external_id, phone, amount, margin, status, day, first_shop, first_channel, last_shop, "
            "last_channel FROM deals WHERE external_id = ?", (deal.external_id,))
        keys = ("external_id", "phone", "amount", "margin", "status", "date", "first_shop", "first_channel",
                "last_shop", "last_channel")
        return dict(zip(keys, rows[0]))

    async def import_csv(self, text: str, now: float) -> dict[str, Any]:
        """Rows with external_id, phone, amount, margin, status, date (comma or
        semicolon separated); bad rows reported by number, the others stored."""
        rows = _rows(text)
        statements, errors = [], []
        for number, row in rows:
            try:
                statements.append(self.statement(parse_deal(row, self.region), now))
            except DealError as exc:
                errors.append({"row": number, "field": exc.field, "message": str(exc)})
        for start in range(0, len(statements), 500):
            await self.store.write(*statements[start:start + 500])
        return {"rows": len(rows), "stored": len(statements), "errors": errors[:1000], "error_count": len(errors)}

    async def put_cost(self, body: Mapping[str, Any]) -> dict[str, Any]:
        channel = body.get("channel")
        if not isinstance(channel, str) or not 0 < len(channel) <= 64:
            raise DealError("channel", "required: the ad channel's name")
        shop = body.get("shop") or ""
        if not isinstance(shop, str) or len(shop) > 64:
            raise DealError("shop", "a shop id")
        amount = _number(body.get("amount"), "amount")
        if amount < 0:
            raise DealError("amount", "must not be negative")
        day = _day(body.get("date"))
        await self.store.write((
            "INSERT INTO channel_costs (day, shop, channel, amount) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (day, shop, channel) DO UPDATE SET amount = excluded.amount",
            (day.isoformat(), shop, channel, amount)))
        return {"date": day.isoformat(), "shop": shop or None, "channel": channel, "amount": amount}

    async def import_costs(self, text: str) -> dict[str, Any]:
        stored, errors = 0, []
        rows = _rows(text)
        for number, row in rows:
            try:
                await self.put_cost(row)
                stored += 1
            except DealError as exc:
                errors.append({"row": number, "field": exc.field, "message": str(exc)})
        return {"rows": len(rows), "stored": stored, "errors": errors[:1000], "error_count": len(errors)}


def _rows(text: str) -> list[tuple[int, dict[str, str]]]:
    text = text.removeprefix("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None:
        raise DealError("file", "empty: the first line must be a header")
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    out = []
    for number, row in enumerate(reader, start=2):
        if number - 1 > MAX_ROWS:
            raise DealError("file", f"more than {MAX_ROWS} rows")
        out.append((number, {k: (v or "").strip() for k, v in row.items() if k}))
    return out
