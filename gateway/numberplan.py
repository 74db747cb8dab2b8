"""The number plan: which shop and ad channel each dialled number (DID) belongs
to, and each shop's caller ID, time zone, working hours and supervisor.

Pure data and lookups. A reload makes a new plan that applies to calls that
start after it: ``PlanBook`` keeps the plans with the time each took effect, so
a call in progress keeps the plan it started under.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Shop:
    shop_id: str
    name: str
    caller_id: str | None = None  # the number customers see when we call them
    timezone: str = "Europe/Moscow"
    # per weekday, None: closed; the default is all day, as "00:00-24:00" in the config reads
    hours: tuple[tuple[time, time] | None, ...] = ((time(0), time.max),) * 7
    holidays: frozenset[date] = frozenset()
    supervisor: str | None = None  # a user's login
    default_owner: str | None = None  # owns callback tasks of callers who have no manager
    callback_sla_minutes: float = 30.0  # of working time, to call a missed customer back
    vip_calls: int | None = None  # answered outbound calls per period a VIP gets; None: [vip] calls
    recordings_days: int = 365  # recordings of this shop's calls are kept this long (0: forever)

    def is_open(self, at: float) -> bool:
        """Whether ``at`` (epoch seconds) falls in the shop's working hours, in its time zone."""
        local = datetime.fromtimestamp(at, ZoneInfo(self.timezone))
        if local.date() in self.holidays:
            return False
        window = self.hours[local.weekday()]
        return window is not None and window[0] <= local.time().replace(tzinfo=None) < window[1]


@dataclass(frozen=True)
class Line:
    """What a dialled number means."""

    number: str
    shop: Shop
    channel: str
    campaign: str | None = None
    monthly_fee: float = 0.0


@dataclass(frozen=True)
class NumberPlan:
    shops: dict[str, Shop] = field(default_factory=dict)
    lines: dict[str, Line] = field(default_factory=dict)  # by E.164 number
    default_shop: str | None = None
    default_channel: str = "unknown"

    def line(self, number: str | None) -> Line | None:
        """The line of a dialled number (E.164 or as the PBX wrote it); the
        default shop and channel for unknown numbers; None without a default."""
        if number:
            hit = self.lines.get(number) or self.lines.get(_e164_guess(number))
            if hit is not None:
                return hit
        if self.default_shop is None:
            return None
        return Line(number or "", self.shops[self.default_shop], self.default_channel)

    def shop_by_number(self, number: str | None) -> Shop | None:
        line = self.line(number)
        return line.shop if line else None


def _e164_guess(number: str) -> str:
    """Russian trunks often send 8XXXXXXXXXX or 7XXXXXXXXXX for +7XXXXXXXXXX."""
    digits = number.lstrip("+")
    if len(digits) == 11 and digits[0] in "78":
        return "+7" + digits[1:]
    return number if number.startswith("+") else "+" + number


class PlanBook:
    """Plans by the time they took effect; a call uses the plan of its start."""

    def __init__(self, plan: NumberPlan, since: float = 0.0) -> None:
        self._since: list[float] = [since]
        self._plans: list[NumberPlan] = [plan]

    @property
    def current(self) -> NumberPlan:
        return self._plans[-1]

    def replace(self, plan: NumberPlan, at: float) -> None:
        self._since.append(max(at, self._since[-1]))
        self._plans.append(plan)
        if len(self._plans) > 50:  # calls last minutes, not 50 reloads
            del self._since[0], self._plans[0]

    def at(self, moment: float) -> NumberPlan:
        index = bisect.bisect_right(self._since, moment) - 1
        return self._plans[max(index, 0)]
