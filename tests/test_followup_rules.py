"""The rules of the follow-up, on values only (no store, no clock): the SLA
deadline counts the shop's working time in its own time zone; a finished call
is an attempt, a reach or nothing for its customer's task; answered calls
credit the agents the points table names; KPI days and VIP periods are local
calendar days; and the config reads the new keys or names the bad one.

Expected instants are written out as local or UTC wall-clock times, never
computed with the functions under test."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.callbacks import CALLED_BACK, CALLED_IN, Attempt, Reach, sla_deadline, touch
from gateway.config import ConfigError, parse_config
from gateway.kpi import (
    CALLBACK_IN_SLA,
    DEFAULT_POINTS,
    INBOUND_CALL,
    MEETING,
    OUTBOUND_CALL,
    Credit,
    KpiRules,
    VipPlan,
    call_credits,
    day_bounds,
    kpi_report,
    local_day,
    period_bounds,
)
from gateway.numberplan import Shop
from gateway.record import CallRecord
from gateway.users import Role, User

MOSCOW = "Europe/Moscow"  # UTC+3, no daylight saving
YEKATERINBURG = "Asia/Yekaterinburg"  # UTC+5, no daylight saving
HASH = "scrypt$1$2$3$4$5"


def local(text: str, zone: str = MOSCOW) -> float:
    """Epoch seconds of a wall-clock time in ``zone``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("UTC")).timestamp()


# -- sla_deadline ------------------------------------------------------------------

NINE_TO_NINE = (time(9), time(21))
SHORT_SATURDAY = (time(10), time(14))
# Monday-Friday 09-21, Saturday 10-14, Sunday closed.
WEEK_HOURS = (NINE_TO_NINE,) * 5 + (SHORT_SATURDAY, None)
MINUTES_30 = 30 * 60.0


def shop(zone: str = MOSCOW, hours: tuple[tuple[time, time] | None, ...] = WEEK_HOURS,
         holidays: frozenset[date] = frozenset()) -> Shop:
    return Shop("A", "Shop A", timezone=zone, hours=hours, holidays=holidays)


def test_a_call_missed_in_working_hours_is_due_30_minutes_later() -> None:
    # Wednesday 2027-03-03, 12:00 in Moscow.
    assert sla_deadline(shop(), local("2027-03-03T12:00"), MINUTES_30) == local("2027-03-03T12:30")


def test_a_deadline_that_falls_on_the_closing_time_stays_that_day() -> None:
    assert sla_deadline(shop(), local("2027-03-03T20:30"), MINUTES_30) == local("2027-03-03T21:00")


def test_ten_minutes_before_closing_carries_twenty_into_the_next_opening() -> None:
    assert sla_deadline(shop(), local("2027-03-03T20:50"), MINUTES_30) == local("2027-03-04T09:20")


@pytest.mark.parametrize("missed", ["2027-03-03T21:00", "2027-03-03T23:40", "2027-03-04T03:00", "2027-03-04T08:59"])
def test_a_call_missed_at_night_is_due_30_minutes_after_opening(missed: str) -> None:
    assert sla_deadline(shop(), local(missed), MINUTES_30) == local("2027-03-04T09:30")


def test_friday_evening_carries_into_saturdays_short_window() -> None:
    # 2027-03-05 is a Friday: 10 minutes on Friday, 20 on Saturday from 10:00.
    assert sla_deadline(shop(), local("2027-03-05T20:50"), MINUTES_30) == local("2027-03-06T10:20")


def test_saturday_before_closing_skips_the_closed_sunday() -> None:
    # 10 minutes on Saturday (closes 14:00), Sunday closed, 20 on Monday.
    assert sla_deadline(shop(), local("2027-03-06T13:50"), MINUTES_30) == local("2027-03-08T09:20")


def test_a_long_sla_spans_saturday_and_sunday_to_monday() -> None:
    # 300 minutes from Friday 20:50: 10 Friday + 240 Saturday + 50 Monday.
    assert sla_deadline(shop(), local("2027-03-05T20:50"), 300 * 60.0) == local("2027-03-08T09:50")


def test_a_call_missed_on_sunday_is_due_monday_morning() -> None:
    assert sla_deadline(shop(), local("2027-03-07T12:00"), MINUTES_30) == local("2027-03-08T09:30")


def test_a_holiday_is_skipped() -> None:
    # 2027-01-07 (Thursday) is a holiday: from Wednesday 20:50 the deadline is Friday 09:20.
    holiday = shop(holidays=frozenset({date(2027, 1, 7)}))
    assert sla_deadline(holiday, local("2027-01-06T20:50"), MINUTES_30) == local("2027-01-08T09:20")
    assert sla_deadline(holiday, local("2027-01-07T12:00"), MINUTES_30) == local("2027-01-08T09:30")
    # Without the holiday Thursday counts.
    assert sla_deadline(shop(), local("2027-01-06T20:50"), MINUTES_30) == local("2027-01-07T09:20")


def test_the_same_instant_gives_different_deadlines_in_different_time_zones() -> None:
    nine_to_six = ((time(9), time(18)),) * 7
    moscow, yekaterinburg = shop(MOSCOW, nine_to_six), shop(YEKATERINBURG, nine_to_six)
    # 14:00Z is 17:00 in Moscow (open) and 19:00 in Yekaterinburg (closed until 09:00 = 04:00Z).
    assert sla_deadline(moscow, utc("2027-03-03T14:00"), MINUTES_30) == utc("2027-03-03T14:30")
    assert sla_deadline(yekaterinburg, utc("2027-03-03T14:00"), MINUTES_30) == utc("2027-03-04T04:30")
    # 03:00Z is 06:00 in Moscow (opens at 06:00Z) and 08:00 in Yekaterinburg (opens at 04:00Z).
    assert sla_deadline(moscow, utc("2027-03-03T03:00"), MINUTES_30) == utc("2027-03-03T06:30")
    assert sla_deadline(yekaterinburg, utc("2027-03-03T03:00"), MINUTES_30) == utc("2027-03-03T04:30")


def test_without_a_shop_the_clock_runs_all_day() -> None:
    start = local("2027-03-03T23:50")
    assert sla_deadline(None, start, MINUTES_30) == local("2027-03-04T00:20")


def test_a_shop_that_never_opens_falls_back_to_clock_time() -> None:
    closed = shop(hours=(None,) * 7)
    assert sla_deadline(closed, local("2027-03-03T12:00"), MINUTES_30) == local("2027-03-03T12:30")


# -- touch -----------------------------------------------------------------------

LOGINS = {"101": "anna", "102": "boris", "103": "vera"}


def login_of(extension: str) -> str | None:
    return LOGINS.get(extension)


def record(
    call_id: str = "c1",
    *,
    direction: str = "inbound",
    outcome: str = "answered",
    caller: str | None = "+79161110001",
    dialled: str | None = "+74950000001",
    answered_by: str | None = None,
    talked: tuple[str, ...] = (),
    started_at: float = 1_800_000_000.0,
    answered_at: float | None = None,
    ended_at: float | None = 1_800_000_100.0,
    customer: str | None = "+79161110001",
    shop: str | None = None,
    channel: str | None = None,
    ended: bool = True,
) -> CallRecord:
    return CallRecord(
        call_id=call_id, direction=direction, caller=caller, caller_name=None, dialled=dialled, outcome=outcome,
        answered_by=answered_by, rang=talked, talked=talked, started_at=started_at, answered_at=answered_at,
        ended_at=ended_at, ring_seconds=0.0, talk_seconds=0.0, hangup_cause=16, reason=None, interrupted=False,
        ended=ended, shop=shop, channel=channel, customer=customer,
    )


@pytest.mark.parametrize("outcome", ["missed", "abandoned"])
def test_an_inbound_missed_or_abandoned_call_is_an_attempt_from_its_end(outcome: str) -> None:
    missed = record("m1", outcome=outcome, started_at=1000.0, ended_at=1025.0, shop="B", channel="avito")
    assert touch(missed, login_of) == Attempt("+79161110001", "m1", 1025.0, outcome, "B", "avito")


def test_an_inbound_answered_call_reaches_the_customer_by_the_answering_agent() -> None:
    answered = record("a1", answered_by="102", talked=("102",), started_at=1000.0, answered_at=1012.0)
    assert touch(answered, login_of) == Reach("+79161110001", "a1", 1012.0, "boris", CALLED_IN)
    assert CALLED_IN == "called_in"


def test_a_transferred_inbound_call_reaches_by_the_agent_who_answered_first() -> None:
    transferred = record("a2", answered_by="101", talked=("101", "102"), started_at=1000.0, answered_at=1003.0)
    assert touch(transferred, login_of) == Reach("+79161110001", "a2", 1003.0, "anna", CALLED_IN)


def test_an_outbound_answered_call_reaches_by_the_agent_who_placed_it() -> None:
    placed = record("o1", direction="outbound", caller="103", dialled="89161110001", started_at=1000.0,
                    answered_at=1020.0)
    assert touch(placed, login_of) == Reach("+79161110001", "o1", 1020.0, "vera", CALLED_BACK)
    assert CALLED_BACK == "called_back"


def test_an_extension_no_user_has_is_named_as_it_is() -> None:
    placed = record("o2", direction="outbound", caller="150", started_at=1000.0, answered_at=1020.0)
    assert touch(placed, login_of) == Reach("+79161110001", "o2", 1020.0, "150", CALLED_BACK)


@pytest.mark.parametrize("outcome", ["busy", "failed"])
def test_an_outbound_call_that_did_not_connect_changes_nothing(outcome: str) -> None:
    assert touch(record("o3", direction="outbound", caller="101", outcome=outcome), login_of) is None


@pytest.mark.parametrize("outcome", ["answered", "missed"])
def test_an_internal_call_changes_nothing(outcome: str) -> None:
    # Even with a customer number set, the direction decides.
    internal = record("i1", direction="internal", caller="101", dialled="102", outcome=outcome,
                      answered_by="102" if outcome == "answered" else None, answered_at=1001.0)
    assert touch(internal, login_of) is None


@pytest.mark.parametrize(("direction", "outcome"), [("inbound", "missed"), ("inbound", "answered"),
                                                    ("outbound", "answered")])
def test_a_withheld_number_changes_nothing(direction: str, outcome: str) -> None:
    withheld = record("w1", direction=direction, outcome=outcome, caller=None, customer=None,
                      answered_by="101", answered_at=1001.0)
    assert touch(withheld, login_of) is None


def test_a_call_not_seen_to_its_end_changes_nothing() -> None:
    assert touch(record("x1", outcome="missed", ended=False, ended_at=None), login_of) is None


# -- call_credits ------------------------------------------------------------------


def test_a_transferred_inbound_call_credits_every_agent_who_talked() -> None:
    answered = record("t1", answered_by="101", talked=("101", "102"), answered_at=1_800_000_005.0)
    assert call_credits(answered, KpiRules(), login_of) == [
        Credit("anna", INBOUND_CALL, "t1", 1_800_000_005.0, 2.0),
        Credit("boris", INBOUND_CALL, "t1", 1_800_000_005.0, 2.0),
    ]


def test_an_agent_who_talked_twice_on_a_call_is_credited_once() -> None:
    back_and_forth = record("t2", answered_by="101", talked=("101", "102", "101"), answered_at=1_800_000_005.0)
    assert [c.login for c in call_credits(back_and_forth, KpiRules(), login_of)] == ["anna", "boris"]


def test_an_answered_outbound_call_credits_the_agent_who_placed_it() -> None:
    placed = record("o1", direction="outbound", caller="102", answered_at=1_800_000_030.0)
    rules = KpiRules(points={OUTBOUND_CALL: 1.5})
    assert call_credits(placed, rules, login_of) == [Credit("boris", OUTBOUND_CALL, "o1", 1_800_000_030.0, 1.5)]


def test_a_kind_missing_from_the_points_table_credits_nothing() -> None:
    rules = KpiRules(points={OUTBOUND_CALL: 2.0})
    assert call_credits(record("t3", answered_by="101", talked=("101",), answered_at=1.0), rules, login_of) == []
    rules = KpiRules(points={INBOUND_CALL: 2.0})
    placed = record("o2", direction="outbound", caller="101", answered_at=1.0)
    assert call_credits(placed, rules, login_of) == []


def test_an_extension_no_user_has_credits_nothing() -> None:
    assert call_credits(record("t4", answered_by="150", talked=("150",), answered_at=1.0), KpiRules(), login_of) == []
    mixed = record("t5", answered_by="150", talked=("150", "103"), answered_at=7.0)
    assert call_credits(mixed, KpiRules(), login_of) == [Credit("vera", INBOUND_CALL, "t5", 7.0, 2.0)]
    placed = record("o3", direction="outbound", caller="150", answered_at=1.0)
    assert call_credits(placed, KpiRules(), login_of) == []


@pytest.mark.parametrize(
    "unanswered",
    [
        record("u1", outcome="missed"),
        record("u2", outcome="abandoned"),
        record("u3", direction="outbound", caller="101", outcome="busy"),
        record("u4", direction="outbound", caller="101", outcome="failed"),
        record("u5", direction="internal", caller="101", dialled="102", answered_by="102", talked=("102",),
               answered_at=1.0, customer=None),
    ],
)
def test_calls_without_a_customer_on_the_line_credit_nothing(unanswered: CallRecord) -> None:
    assert call_credits(unanswered, KpiRules(), login_of) == []


# -- days and periods ----------------------------------------------------------------


def test_local_day_and_day_bounds_follow_the_time_zone() -> None:
    late = utc("2026-11-30T22:30")
    assert local_day(late, "UTC") == date(2026, 11, 30)
    assert local_day(late, MOSCOW) == date(2026, 12, 1)
    assert day_bounds(date(2026, 12, 1), date(2026, 12, 2), MOSCOW) == (utc("2026-11-30T21:00"),
                                                                        utc("2026-12-02T21:00"))


def test_month_bounds_when_the_local_month_is_already_the_next() -> None:
    late = utc("2026-11-30T22:30")  # 01:30 on 1 December in Moscow, 03:30 in Yekaterinburg
    assert period_bounds(late, "UTC", "month") == (utc("2026-11-01T00:00"), utc("2026-12-01T00:00"))
    assert period_bounds(late, MOSCOW, "month") == (utc("2026-11-30T21:00"), utc("2026-12-31T21:00"))
    assert period_bounds(late, YEKATERINBURG, "month") == (utc("2026-11-30T19:00"), utc("2026-12-31T19:00"))


def test_month_bounds_across_the_year_and_in_february() -> None:
    assert period_bounds(local("2026-12-15T12:00"), MOSCOW, "month") == (local("2026-12-01T00:00"),
                                                                         local("2027-01-01T00:00"))
    assert period_bounds(local("2028-02-29T23:59"), MOSCOW, "month") == (local("2028-02-01T00:00"),
                                                                         local("2028-03-01T00:00"))


def test_week_bounds_start_on_the_local_monday() -> None:
    late = utc("2026-11-29T22:30")  # Sunday in UTC, Monday 30 November 01:30 in Moscow
    assert period_bounds(late, "UTC", "week") == (utc("2026-11-23T00:00"), utc("2026-11-30T00:00"))
    assert period_bounds(late, MOSCOW, "week") == (utc("2026-11-29T21:00"), utc("2026-12-06T21:00"))
    assert period_bounds(late, YEKATERINBURG, "week") == (utc("2026-11-29T19:00"), utc("2026-12-06T19:00"))


def test_an_unknown_period_is_refused() -> None:
    with pytest.raises(ValueError, match="period must be 'month' or 'week'"):
        period_bounds(0.0, MOSCOW, "year")


# -- kpi_report ---------------------------------------------------------------------


def user(login: str, extension: str, *, target: float | None = None) -> User:
    return User(login, login.title(), Role.AGENT, HASH, team="sales", extensions=(extension,), daily_target=target)


def test_kpi_report_sums_points_per_local_day_kind_and_month() -> None:
    anna, boris = user("anna", "101"), user("boris", "102", target=5.0)
    rules = KpiRules(daily_target=6.0, timezone=MOSCOW)
    rows = [
        ("anna", INBOUND_CALL, local("2026-11-30T10:00"), 2.0),
        ("anna", OUTBOUND_CALL, local("2026-11-30T11:00"), 2.0),
        ("anna", CALLBACK_IN_SLA, local("2026-11-30T11:00"), 3.0),
        ("anna", INBOUND_CALL, utc("2026-11-30T20:59:59"), 2.0),  # 23:59:59 in Moscow: still 30 November
        ("anna", MEETING, utc("2026-11-30T22:30"), 10.0),  # 01:30 on 1 December in Moscow
        ("boris", OUTBOUND_CALL, local("2026-12-01T09:00"), 2.0),
        ("boris", CALLBACK_IN_SLA, local("2026-12-01T09:00"), 3.0),
        ("vera", MEETING, local("2026-12-01T09:00"), 10.0),  # not among the agents asked for
        ("ghost", INBOUND_CALL, local("2026-11-30T09:00"), 2.0),
    ]
    report = kpi_report(rows, [anna, boris], rules, date(2026, 11, 30), date(2026, 12, 1))
    assert report == [
        {
            "login": "anna", "name": "Anna", "team": "sales", "daily_target": 6.0, "total": 19.0,
            "days": [
                {"date": "2026-11-30", "points": 9.0, "target_met": True,
                 "counts": {INBOUND_CALL: 2, OUTBOUND_CALL: 1, CALLBACK_IN_SLA: 1}},
                {"date": "2026-12-01", "points": 10.0, "target_met": True, "counts": {MEETING: 1}},
            ],
            "months": [{"month": "2026-11", "points": 9.0}, {"month": "2026-12", "points": 10.0}],
        },
        {
            "login": "boris", "name": "Boris", "team": "sales", "daily_target": 5.0, "total": 5.0,
            "days": [
                {"date": "2026-11-30", "points": 0.0, "target_met": False, "counts": {}},
                # Exactly his own target (the rules' 6 would not be met).
                {"date": "2026-12-01", "points": 5.0, "target_met": True,
                 "counts": {OUTBOUND_CALL: 1, CALLBACK_IN_SLA: 1}},
            ],
            "months": [{"month": "2026-11", "points": 0.0}, {"month": "2026-12", "points": 5.0}],
        },
    ]


def test_kpi_report_days_follow_the_rules_time_zone() -> None:
    anna = user("anna", "101")
    rows = [("anna", MEETING, utc("2026-11-30T20:30"), 10.0)]  # 23:30 Moscow, 01:30 Yekaterinburg next day
    first, last = date(2026, 11, 30), date(2026, 12, 1)
    in_moscow = kpi_report(rows, [anna], KpiRules(timezone=MOSCOW), first, last)[0]
    in_yekaterinburg = kpi_report(rows, [anna], KpiRules(timezone=YEKATERINBURG), first, last)[0]
    assert [d["points"] for d in in_moscow["days"]] == [10.0, 0.0]
    assert [d["points"] for d in in_yekaterinburg["days"]] == [0.0, 10.0]


def test_kpi_report_target_is_not_met_below_it_and_rows_outside_the_days_are_left_out() -> None:
    anna = user("anna", "101", target=4.5)
    rows = [("anna", INBOUND_CALL, local("2026-11-30T10:00"), 2.0),
            ("anna", INBOUND_CALL, local("2026-11-30T11:00"), 2.0),
            ("anna", MEETING, local("2026-11-29T11:00"), 10.0)]  # the day before the report
    (row,) = kpi_report(rows, [anna], KpiRules(daily_target=1.0), date(2026, 11, 30), date(2026, 11, 30))
    assert row["total"] == 4.0 and row["daily_target"] == 4.5
    assert row["days"] == [{"date": "2026-11-30", "points": 4.0, "target_met": False, "counts": {INBOUND_CALL: 2}}]
    assert row["months"] == [{"month": "2026-11", "points": 4.0}]


def test_kpi_rules_target_of_prefers_the_users_own() -> None:
    rules = KpiRules(daily_target=20.0)
    assert rules.target_of(user("anna", "101")) == 20.0
    assert rules.target_of(user("boris", "102", target=0.0)) == 0.0  # 0 is a target, not "unset"
    assert rules.points_for(MEETING) == 10.0 and rules.points_for("demo") is None


# -- config -----------------------------------------------------------------------


def good_config() -> dict[str, Any]:
    return {
        "users": [
            {"login": "anna", "role": "agent", "password_hash": HASH, "team": "sales", "extensions": ["101"],
             "daily_target": 12},
            {"login": "boris", "role": "agent", "password_hash": HASH, "team": "sales", "extensions": ["102"],
             "daily_target": 7.5},
            {"login": "olga", "role": "manager", "password_hash": HASH, "leads": ["sales"]},
        ],
        "shops": [
            {"id": "A", "timezone": MOSCOW, "default_owner": "anna", "callback_sla_minutes": 45, "vip_calls": 3},
            {"id": "B", "timezone": YEKATERINBURG},
        ],
        "kpi": {"timezone": YEKATERINBURG, "daily_target": 25, "points": {"inbound_call": 1, "meeting": 7.5}},
        "vip": {"calls": 4, "period": "week"},
    }


def test_config_reads_the_follow_up_keys(tmp_path: Path) -> None:
    config = parse_config(good_config(), source=tmp_path / "gw.toml", environ={})
    assert config.kpi == KpiRules(points={"inbound_call": 1.0, "meeting": 7.5}, daily_target=25.0,
                                  timezone=YEKATERINBURG)
    assert config.vip == VipPlan(calls=4, period="week")
    a, b = config.plan.shops["A"], config.plan.shops["B"]
    assert (a.default_owner, a.callback_sla_minutes, a.vip_calls) == ("anna", 45.0, 3)
    assert (b.default_owner, b.callback_sla_minutes, b.vip_calls) == (None, 30.0, None)
    assert [(u.login, u.daily_target) for u in config.users] == [("anna", 12.0), ("boris", 7.5), ("olga", None)]
    assert isinstance(config.users[0].daily_target, float) and isinstance(a.callback_sla_minutes, float)


def test_config_without_kpi_and_vip_gets_the_defaults(tmp_path: Path) -> None:
    config = parse_config({}, source=tmp_path / "gw.toml", environ={})
    assert config.kpi == KpiRules(points=dict(DEFAULT_POINTS), daily_target=20.0, timezone=MOSCOW)
    assert dict(config.kpi.points) == {INBOUND_CALL: 2.0, OUTBOUND_CALL: 2.0, CALLBACK_IN_SLA: 3.0, MEETING: 10.0}
    assert config.vip == VipPlan(calls=2, period="month")


def test_zero_is_a_valid_target_and_vip_calls(tmp_path: Path) -> None:
    data = good_config()
    data["users"][0]["daily_target"] = 0
    data["shops"][0]["vip_calls"] = 0
    data["kpi"]["daily_target"] = 0
    data["vip"]["calls"] = 0
    data["kpi"]["points"] = {"meeting": 0}
    config = parse_config(data, source=tmp_path / "gw.toml", environ={})
    assert config.users[0].daily_target == 0.0 and config.plan.shops["A"].vip_calls == 0
    assert config.kpi.daily_target == 0.0 and config.vip.calls == 0 and dict(config.kpi.points) == {"meeting": 0.0}


def _set(section: str, key: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        target = data[section][0] if isinstance(data[section], list) else data[section]
        target[key] = value
    return change


def _replace(section: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        data[section] = value
    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("shops", "default_owner", "nobody"),
         "[shops #1] default_owner: expected the login of a user in [[users]], got 'nobody'"),
        (_set("shops", "default_owner", 5), "[shops #1] default_owner: expected a user's login, got 5"),
        (_set("shops", "callback_sla_minutes", 0), "[shops #1] callback_sla_minutes: expected minutes of working"),
        (_set("shops", "callback_sla_minutes", -5), "[shops #1] callback_sla_minutes: expected minutes of working"),
        (_set("shops", "callback_sla_minutes", "30"), "[shops #1] callback_sla_minutes: expected minutes"),
        (_set("shops", "callback_sla_minutes", True), "[shops #1] callback_sla_minutes: expected minutes"),
        (_set("shops", "vip_calls", -1), "[shops #1] vip_calls: expected a whole number of calls >= 0, got -1"),
        (_set("shops", "vip_calls", 2.5), "[shops #1] vip_calls: expected a whole number of calls >= 0, got 2.5"),
        (_set("shops", "vip_calls", True), "[shops #1] vip_calls: expected a whole number of calls >= 0, got True"),
        (_set("shops", "vip_calls", "3"), "[shops #1] vip_calls: expected a whole number of calls >= 0, got '3'"),
        (_set("shops", "vip_call", 3), "[shops #1] vip_call: unknown key"),
        (_set("users", "daily_target", -1), "[users #1] daily_target: expected KPI points a day, a number >= 0"),
        (_set("users", "daily_target", "ten"), "[users #1] daily_target: expected KPI points a day"),
        (_set("users", "daily_target", True), "[users #1] daily_target: expected KPI points a day"),
        (_set("kpi", "daily_target", -1), "[kpi] daily_target: expected points a day, a number >= 0, got -1.0"),
        (_set("kpi", "daily_target", "20"), "[kpi] daily_target: expected points a day, a number >= 0, got '20'"),
        (_set("kpi", "timezone", "Mars/Base"), '[kpi] timezone: expected an IANA time zone like "Europe/Moscow"'),
        (_set("kpi", "points", {"meeting": -1}), "[kpi] points.meeting: expected a number of points >= 0, got -1"),
        (_set("kpi", "points", {"meeting": True}), "[kpi] points.meeting: expected a number of points >= 0"),
        (_set("kpi", "points", {"meeting": "10"}), "[kpi] points.meeting: expected a number of points >= 0"),
        (_set("kpi", "points", {"a meeting": 10}), "[kpi] points: expected kinds made of letters, digits and '_'"),
        (_set("kpi", "points", "meeting=10"), "[kpi] points: expected a table of interaction kind = points"),
        (_set("kpi", "dayly_target", 20), "[kpi] dayly_target: unknown key"),
        (_replace("kpi", "strict"), "[kpi]: expected a table, got 'strict'"),
        (_set("vip", "calls", -1), "[vip] calls: expected a whole number of calls >= 0, got -1"),
        (_set("vip", "calls", 1.5), "[vip] calls: expected a whole number of calls >= 0, got 1.5"),
        (_set("vip", "period", "year"), "[vip] period: expected \"month\" or \"week\", got 'year'"),
        (_set("vip", "period", ""), "[vip] period: expected a non-empty string"),
        (_set("vip", "every", "month"), "[vip] every: unknown key"),
        (_replace("vip", ["month"]), "[vip]: expected a table, got ['month']"),
    ],
)
def test_a_bad_follow_up_value_names_the_file_table_and_key(tmp_path: Path, change: Any, expected: str) -> None:
    data = good_config()
    change(data)
    source = tmp_path / "gw.toml"
    with pytest.raises(ConfigError) as info:
        parse_config(data, source=source, environ={})
    message = str(info.value)
    assert message.startswith(f"{source}: ")
    assert expected in message


def test_a_user_with_his_own_target_keeps_the_rest_of_his_record(tmp_path: Path) -> None:
    config = parse_config(good_config(), source=tmp_path / "gw.toml", environ={})
    anna = config.users[0]
    assert replace(anna, daily_target=None) == User("anna", "anna", Role.AGENT, HASH, team="sales",
                                                    extensions=("101",))



def test_an_all_day_shop_counts_midnight_without_losing_a_moment() -> None:
    shop = Shop("X", "X")  # default hours: all day, every day
    start = datetime(2027, 3, 3, 23, 50, tzinfo=ZoneInfo("Europe/Moscow")).timestamp()
    assert sla_deadline(shop, start, 1800) == datetime(2027, 3, 4, 0, 20, tzinfo=ZoneInfo("Europe/Moscow")).timestamp()
    assert shop.is_open(start + 599.5)  # 23:59:59.5
