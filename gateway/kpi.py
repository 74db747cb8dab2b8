"""KPI points and the periods they are summed over: the rules, on call records.

Every interaction an agent has with a customer earns the points the table
gives its kind. Three kinds are counted from calls by themselves, the others
(a meeting, a demo...) are recorded by people through the API:

| kind | counted when | for whom |
|---|---|---|
| ``inbound_call`` | an inbound call is answered | every agent who talked on it |
| ``outbound_call`` | an outbound call is answered by the customer | the agent who placed it |
| ``callback_in_sla`` | a missed call's task is closed by our call within its SLA | the agent who called back |

Points are written with the interaction, so a later change of the table
does not rewrite a month that bonuses were already paid on. Days are local
days in the KPI time zone. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.record import CallRecord
from gateway.users import User

INBOUND_CALL = "inbound_call"
OUTBOUND_CALL = "outbound_call"
CALLBACK_IN_SLA = "callback_in_sla"
MEETING = "meeting"
AUTOMATIC = frozenset({INBOUND_CALL, OUTBOUND_CALL, CALLBACK_IN_SLA})  # never posted by hand
DEFAULT_POINTS: Mapping[str, float] = {INBOUND_CALL: 2.0, OUTBOUND_CALL: 2.0, CALLBACK_IN_SLA: 3.0, MEETING: 10.0}


@dataclass(frozen=True)
class KpiRules:
    points: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_POINTS))
    daily_target: float = 20.0
    timezone: str = "Europe/Moscow"

    def target_of(self, user: User) -> float:
        return user.daily_target if user.daily_target is not None else self.daily_target

    def points_for(self, kind: str) -> float | None:
        return self.points.get(kind)


@dataclass(frozen=True)
class VipPlan:
    """VIP contacts get at least ``calls`` answered outbound calls per calendar
    ``period`` ("month" or "week"), in their shop's time zone; a shop may ask
    for its own number (``Shop.vip_calls``)."""

    calls: int = 2
    period: str = "month"


@dataclass(frozen=True, slots=True)
class Credit:
    login: str
    kind: str
    call_id: str
    at: float
    points: float


def call_credits(record: CallRecord, rules: KpiRules, login_of: Callable[[str], str | None]) -> list[Credit]:
    """The points an answered call earns its agents (none for other calls,
    for kinds the table leaves out, or for phones no user has)."""
    if record.outcome != "answered" or not record.ended:
        return []
    at = record.answered_at or record.started_at
    if record.direction == "inbound":
        kind, extensions = INBOUND_CALL, record.talked or ((record.answered_by,) if record.answered_by else ())
    elif record.direction == "outbound" and record.caller:
        kind, extensions = OUTBOUND_CALL, (record.caller,)
    else:
        return []
    points = rules.points_for(kind)
    if points is None:
        return []
    logins = dict.fromkeys(login for e in extensions if (login := login_of(e)) is not None)
    return [Credit(login, kind, record.call_id, at, points) for login in logins]


def local_day(at: float, zone: str) -> date:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).date()


def day_bounds(first: date, last: date, zone: str) -> tuple[float, float]:
    """Epoch seconds from the start of ``first`` to the end of ``last`` (local days)."""
    tz = ZoneInfo(zone)
    return (datetime.combine(first, time(0), tz).timestamp(),
            datetime.combine(last + timedelta(days=1), time(0), tz).timestamp())


def period_bounds(at: float, zone: str, period: str) -> tuple[float, float]:
    """The calendar ``period`` ("month" or "week", Monday first) holding ``at``, local to ``zone``."""
    today = local_day(at, zone)
    if period == "week":
        first = today - timedelta(days=today.weekday())
        return day_bounds(first, first + timedelta(days=6), zone)
    if period != "month":
        raise ValueError(f"period must be 'month' or 'week', not {period!r}")
    first = today.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return day_bounds(first, following - timedelta(days=1), zone)


MAX_REPORT_DAYS = 366


def kpi_report(
    rows: Iterable[tuple[str, str, float, float]],
    agents: Sequence[User],
    rules: KpiRules,
    first: date,
    last: date,
) -> list[dict[str, Any]]:
    """Per agent: points per local day (with counts per kind and whether the
    day's target was met), per month, and in total, for ``first``..``last``.
    ``rows`` are (login, kind, at, points); logins not among ``agents`` are left out."""
    zone = ZoneInfo(rules.timezone)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    points: dict[str, dict[date, float]] = {a.login: {} for a in agents}
    counts: dict[str, dict[date, dict[str, int]]] = {a.login: {} for a in agents}
    for login, kind, at, value in rows:
        if login not in points:
            continue
        day = datetime.fromtimestamp(at, zone).date()
        points[login][day] = points[login].get(day, 0.0) + value
        per_kind = counts[login].setdefault(day, {})
        per_kind[kind] = per_kind.get(kind, 0) + 1
    report = []
    for agent in agents:
        target = rules.target_of(agent)
        months: dict[str, float] = {}
        daily = []
        for day in days:
            value = points[agent.login].get(day, 0.0)
            months[day.strftime("%Y-%m")] = months.get(day.strftime("%Y-%m"), 0.0) + value
            daily.append({"date": day.isoformat(), "points": value, "counts": counts[agent.login].get(day, {}),
                          "target_met": value >= target})
        report.append({
            "login": agent.login, "name": agent.name, "team": agent.team, "daily_target": target,
            "total": sum(points[agent.login].get(day, 0.0) for day in days),
            "days": daily,
            "months": [{"month": month, "points": value} for month, value in months.items()],
        })
    return report
