"""Missed calls and callbacks: the rules, on call records only.

Whatever PBX a call came from, its finished record touches the customer's
callback task in one of two ways (or not at all):

- an inbound call that was missed or abandoned is an **attempt**: it opens a
  task for the customer's number, or joins the one open for it;
- an answered call with the customer (inbound from him, or outbound to him, by
  anyone) **reaches** him: it closes the open task, noting who, when, and how
  long the callback took.

Internal calls, withheld or unreadable numbers, failed and busy outbound calls
(a click-to-call the customer did not answer) change nothing.

The SLA deadline counts working time only: 30 minutes from a call missed at
20:50 by a shop that closes at 21:00 and opens at 09:00 end at 09:20 the next
working day, in the shop's time zone.

Pure (no clock, no I/O); ``crm_bridge.callback_tasks`` stores what it decides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.numberplan import Shop
from gateway.record import CallRecord

MISSED_OUTCOMES = frozenset({"missed", "abandoned"})
CALLED_BACK = "called_back"  # close_reason: we reached him with an outbound call
CALLED_IN = "called_in"  # close_reason: he called again and was answered
MAX_SLA_DAYS = 400  # a shop that never opens: the deadline is plain clock time


@dataclass(frozen=True, slots=True)
class Attempt:
    """A missed or abandoned inbound call from ``phone``."""

    phone: str  # E.164
    call_id: str
    at: float  # when the call ended: from here the customer waits for us
    outcome: str
    shop: str | None
    channel: str | None


@dataclass(frozen=True, slots=True)
class Reach:
    """An answered call with ``phone``: the customer was reached."""

    phone: str
    call_id: str
    at: float  # when it was answered
    by: str | None  # the agent's login (his extension when no user has it)
    reason: str  # CALLED_BACK or CALLED_IN


def touch(record: CallRecord, login_of: Callable[[str], str | None]) -> Attempt | Reach | None:
    """What a finished call means for its customer's callback task.

    ``record.customer`` is the customer's E.164 number (the service sets it);
    ``login_of`` maps an agent's extension to his login.
    """
    phone = record.customer
    if phone is None or not record.ended:
        return None
    if record.direction == "inbound":
        if record.outcome in MISSED_OUTCOMES:
            return Attempt(phone, record.call_id, record.ended_at or record.started_at, record.outcome,
                           record.shop, record.channel)
        if record.outcome == "answered":
            agent = record.answered_by or (record.talked[0] if record.talked else None)
            return Reach(phone, record.call_id, record.answered_at or record.started_at, _who(agent, login_of),
                         CALLED_IN)
        return None
    if record.direction == "outbound" and record.outcome == "answered":
        # The agent who placed it is the caller of an outbound call.
        return Reach(phone, record.call_id, record.answered_at or record.started_at,
                     _who(record.caller, login_of), CALLED_BACK)
    return None


def _who(extension: str | None, login_of: Callable[[str], str | None]) -> str | None:
    if extension is None:
        return None
    return login_of(extension) or extension


def sla_deadline(shop: Shop | None, start: float, seconds: float) -> float:
    """``seconds`` of the shop's working time after ``start`` (epoch seconds).

    Holidays and closed days are skipped; time before opening does not count.
    Without a shop (no number plan) the clock runs all day.
    """
    if shop is None:
        return start + seconds
    zone = ZoneInfo(shop.timezone)
    remaining = seconds
    day = datetime.fromtimestamp(start, zone).date()
    for _ in range(MAX_SLA_DAYS):
        window = None if day in shop.holidays else shop.hours[day.weekday()]
        if window is not None:
            opens = datetime.combine(day, window[0], zone).timestamp()
            # "until midnight" is stored as the last microsecond of the day
            closes = (datetime.combine(day + timedelta(days=1), time(0), zone) if window[1] == time.max
                      else datetime.combine(day, window[1], zone)).timestamp()
            begin = max(opens, start)
            if begin < closes:
                if begin + remaining <= closes:
                    return begin + remaining
                remaining -= closes - begin
        day += timedelta(days=1)
    return start + seconds
