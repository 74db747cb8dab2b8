"""The channel report, its roll-ups and its HTTP routes.

A hand-built fortnight of calls, results, callbacks, deals and spend goes
through the real gateway service and store; every figure of the report is
checked against numbers worked out by hand in the comments below, never by
the code under test. A seeded random stream checks that the roll-ups kept as
calls are stored equal the same figures computed from the records, and that
``rebuild`` gives the same tables. The routes are driven through the whole
app of tests/harness.py.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import aiosqlite
import pytest

from crm_bridge.contacts import Contacts
from crm_bridge.migrations import MIGRATIONS, migrate
from crm_bridge.store import Store
from dashboards.deals import Deals, parse_deal
from dashboards.reports import channel_report
from dashboards.rollups import Rollups, rebuild
from gateway.effects import CallFinished
from gateway.followup import Followup
from gateway.kpi import KpiRules, VipPlan
from gateway.numberplan import Line, NumberPlan, PlanBook, Shop
from gateway.record import CallRecord
from gateway.service import Gateway
from gateway.users import Directory
from gateway.web import SESSION_COOKIE
from tests.harness import PASSWORD, Harness, default_users
from tests.test_hub import running
from tests.test_kpi_vip import call, msk

MOSCOW = ZoneInfo("Europe/Moscow")
ZONE = "Europe/Moscow"
NOW = msk("2026-11-25T12:00")

# -- the world: store, contacts, follow-up and gateway with roll-ups ----------------


@dataclass
class World:
    store: Store
    gateway: Gateway
    rollups: Rollups
    deals: Deals

    async def feed(self, records: Iterable[CallRecord]) -> None:
        for record in records:
            self.gateway.carry_out(CallFinished(record))
        await self.gateway.drain()

    async def result(self, call_id: str, result: str) -> None:
        """As ``POST /api/calls/{id}/result`` stores it: with the roll-ups it changes."""
        await self.store.set_result(call_id, result, None, "anna", NOW, also=self.rollups.refresh(call_id))


@asynccontextmanager
async def world(tmp_path: Path, plan: NumberPlan) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        directory = Directory(default_users())
        plans = PlanBook(plan)
        contacts = Contacts(store, region="RU", is_login=lambda login: directory.by_login(login) is not None,
                            clock=lambda: NOW)
        followup = Followup(store, plans=plans, directory=directory, kpi=KpiRules(), vip=VipPlan(),
                            clock=lambda: NOW)
        rollups = Rollups(ZONE, ("order",))
        gateway = Gateway(store, region="RU", plans=plans, contacts=contacts, directory=directory,
                          followup=followup, rollups=rollups)
        yield World(store, gateway, rollups, Deals(store, zone=ZONE))
        await gateway.drain()
    finally:
        await store.close()


# -- the fortnight ------------------------------------------------------------------
#
# Shop A (Moscow, all day, SLA 30 min): yandex (3000 a month: 100 a day in
# November), avito (no fee; spend posted by day), direct (costs nothing).
# Shop B: yandex on a line of its own with no fee.
# Week 1 is Mon 9 .. Sun 15 November 2026, week 2 Mon 16 .. Sun 22.

YANDEX_A, AVITO_A, DIRECT_A, YANDEX_B = "+74950000001", "+74950000002", "+74950000003", "+74950000004"


def fortnight_plan() -> NumberPlan:
    a = Shop("A", "Shop A", timezone="Europe/Moscow", supervisor="olga", default_owner="anna")
    b = Shop("B", "Shop B", timezone="Europe/Moscow", default_owner="boris", callback_sla_minutes=60)
    lines = [Line(YANDEX_A, a, "yandex", monthly_fee=3000.0), Line(AVITO_A, a, "avito"), Line(DIRECT_A, a, "direct"),
             Line(YANDEX_B, b, "yandex")]
    return NumberPlan(shops={"A": a, "B": b}, lines={line.number: line for line in lines})


C1, C2, C3, C4, C5, C6, C7, C8 = (f"+7916000000{n}" for n in range(1, 9))


def answered(call_id: str, caller: str, line: str, start: str, wait: int, talk: int,
             agent: str = "101") -> CallRecord:
    t = msk(start)
    return call(call_id, "inbound", caller, line, "answered", t, answered=t + wait, end=t + wait + talk,
                answered_by=agent, talked=(agent,))


def lost(call_id: str, caller: str, line: str, start: str, ring: int, outcome: str = "missed") -> CallRecord:
    t = msk(start)
    return call(call_id, "inbound", caller, line, outcome, t, end=t + ring, rang=("101",))


def callback(call_id: str, number: str, start: str) -> CallRecord:
    t = msk(start)
    return call(call_id, "outbound", "101", number, "answered", t, answered=t + 5, end=t + 120)


def fortnight() -> list[CallRecord]:
    return [
        # week 1
        answered("w1a", C1, YANDEX_A, "2026-11-10T12:00:00", 10, 120),   # C1's first call: yandex, qualified
        lost("w1b", C8, AVITO_A, "2026-11-12T13:00:00", 25),             # never called back
        answered("w1c", C5, DIRECT_A, "2026-11-15T23:59:50", 5, 65),     # Sunday 23:59:50: week 1
        # week 2
        answered("w2a", C5, DIRECT_A, "2026-11-16T00:00:05", 5, 120),    # Monday 00:00:05: week 2, hour 0
        answered("w2b", C2, YANDEX_A, "2026-11-16T10:00:00", 6, 60),     # qualified
        lost("w2d", C3, YANDEX_A, "2026-11-17T09:00:00", 30),            # due 09:30:30 ...
        callback("cb1", C3, "2026-11-17T09:10:00"),                      # ... reached 09:10:05: in the SLA
        answered("w2c", C2, YANDEX_A, "2026-11-17T11:00:00", 4, 30),     # C2 again: "info", not qualified
        answered("w2e", C1, AVITO_A, "2026-11-18T14:00:00", 20, 300),    # C1 again, via avito: qualified
        lost("w2f", C4, DIRECT_A, "2026-11-18T15:00:00", 12, "abandoned"),  # due 15:30:12 ...
        callback("cb2", C4, "2026-11-18T16:00:00"),                      # ... reached 16:00:05: late
        answered("w2g", C7, YANDEX_B, "2026-11-19T18:00:00", 8, 100),    # qualified
        answered("w2h", C2, YANDEX_B, "2026-11-21T12:00:00", 2, 10),     # C2 through yandex in shop B too
        lost("w2i", C6, AVITO_A, "2026-11-22T23:59:59", 30),             # Sunday 23:59:59: week 2, hour 23
        # the Monday after
        lost("n1", C6, AVITO_A, "2026-11-23T00:10:00", 20),
    ]


DEALS = [
    # C8: first and last touch avito (week 1).
    {"external_id": "D6", "phone": C8, "amount": 2000, "margin": 500, "date": "2026-11-13"},
    # C1: first touch yandex (10 Nov), last touch avito (18 Nov).
    {"external_id": "D1", "phone": "8 916 000-00-01", "amount": 10000, "margin": 4000, "date": "2026-11-19"},
    # C2: yandex both ways (his last call before the end of 20 Nov is w2c, shop A).
    {"external_id": "D2", "phone": C2, "amount": 5000, "margin": 2000, "date": "2026-11-20"},
    # C4: lost, counts nowhere.
    {"external_id": "D3", "phone": C4, "amount": 7000, "status": "lost", "date": "2026-11-21"},
    # C7: yandex in shop B both ways.
    {"external_id": "D4", "phone": C7, "amount": 3000, "margin": 1000, "date": "2026-11-22"},
    # After the period.
    {"external_id": "D5", "phone": C2, "amount": 1, "date": "2026-11-23"},
]

COSTS = [
    {"channel": "avito", "shop": "A", "date": "2026-11-10", "amount": 200},
    {"channel": "avito", "shop": "A", "date": "2026-11-16", "amount": 500},
    {"channel": "avito", "date": "2026-11-20", "amount": "300"},  # for all shops
    {"channel": "avito", "shop": "A", "date": "2026-11-23", "amount": 999},  # after the period
]


async def fortnight_world(w: World) -> None:
    await w.feed(fortnight())
    for call_id in ("w1a", "w2b", "w2e", "w2g"):
        await w.result(call_id, "order")
    await w.result("w2c", "order")
    await w.result("w2c", "info")  # changed: no longer qualified
    await w.result("w2h", "info")
    for body in DEALS:
        await w.deals.put(parse_deal(body, "RU"), NOW)
    # A corrected amount for D1 updates it: still one deal.
    first = await w.deals.put(parse_deal({**DEALS[1], "amount": 9000}, "RU"), NOW)
    assert first["amount"] == 9000
    await w.deals.put(parse_deal(DEALS[1], "RU"), NOW)
    for body in COSTS:
        await w.deals.put_cost(body)


FIELDS = ("calls", "answered", "missed", "abandoned", "talk_seconds", "qualified", "unique_callers", "new_leads",
          "callbacks", "callbacks_in_sla", "deals_won", "revenue", "margin", "deals_won_last_touch",
          "revenue_last_touch", "margin_last_touch", "cost", "answered_pct", "missed_pct", "abandoned_pct",
          "avg_wait_seconds", "cost_per_call", "cost_per_lead", "cost_per_deal", "roi")


def fig(**given: Any) -> dict[str, Any]:
    """A full set of figures: zero counts and sums, None ratios, unless given."""
    ratios = ("answered_pct", "missed_pct", "abandoned_pct", "avg_wait_seconds", "cost_per_call", "cost_per_lead",
              "cost_per_deal", "roi")
    out = {k: (None if k in ratios else 0) for k in FIELDS}
    assert set(given) <= set(out), set(given) - set(out)
    return {**out, **given}


def figures_of(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in FIELDS}


# Week 2, by channel (shops together).
YANDEX_W2 = fig(
    calls=5,                                    # w2b w2c w2d (A), w2g w2h (B)
    answered=4, missed=1, answered_pct=80.0, missed_pct=20.0, abandoned_pct=0.0,
    avg_wait_seconds=5.0,                       # (6 + 4 + 8 + 2) / 4
    talk_seconds=200.0,                         # 60 + 30 + 100 + 10
    qualified=2,                                # w2b, w2g
    unique_callers=3,                           # C2 (in both shops), C3, C7
    new_leads=3,                                # C2, C3, C7 (C1 came in week 1)
    callbacks=1, callbacks_in_sla=1,            # C3
    deals_won=3, revenue=18000.0, margin=7000.0,  # first touch: D1, D2, D4
    deals_won_last_touch=2, revenue_last_touch=8000.0, margin_last_touch=3000.0,  # D2, D4
    cost=700.0,                                 # 7 days x 3000 / 30
    cost_per_call=140.0, cost_per_lead=233.3333, cost_per_deal=233.3333,
    roi=9.0,                                    # (7000 - 700) / 700
)
AVITO_W2 = fig(
    calls=2, answered=1, missed=1, answered_pct=50.0, missed_pct=50.0, abandoned_pct=0.0,  # w2e, w2i
    avg_wait_seconds=20.0, talk_seconds=300.0, qualified=1,
    unique_callers=2,                           # C1, C6
    new_leads=1,                                # C6
    deals_won_last_touch=1, revenue_last_touch=10000.0, margin_last_touch=4000.0,  # D1
    cost=800.0,                                 # 500 (shop A, 16 Nov) + 300 (all shops, 20 Nov)
    cost_per_call=400.0, cost_per_lead=800.0, cost_per_deal=None,
    roi=-1.0,                                   # (0 - 800) / 800
)
DIRECT_W2 = fig(
    calls=2, answered=1, abandoned=1, answered_pct=50.0, missed_pct=0.0, abandoned_pct=50.0,  # w2a, w2f
    avg_wait_seconds=5.0, talk_seconds=120.0,
    unique_callers=2,                           # C5, C4
    new_leads=1,                                # C4 (C5 came on Sunday of week 1)
    callbacks=1, callbacks_in_sla=0,            # C4, called back late
    cost=0.0, cost_per_call=0.0, cost_per_lead=0.0,  # no deal (D3 was lost): no cost per deal
    roi=None,                                   # cost nothing: no ROI, not a division by zero
)
# Week 1 (the previous period of week 2).
YANDEX_W1 = fig(calls=1, answered=1, answered_pct=100.0, missed_pct=0.0, abandoned_pct=0.0, avg_wait_seconds=10.0,
                talk_seconds=120.0, qualified=1, unique_callers=1, new_leads=1, cost=700.0, cost_per_call=700.0,
                cost_per_lead=700.0, roi=-1.0)
AVITO_W1 = fig(calls=1, missed=1, answered_pct=0.0, missed_pct=100.0, abandoned_pct=0.0, unique_callers=1,
               new_leads=1, deals_won=1, revenue=2000.0, margin=500.0, deals_won_last_touch=1,
               revenue_last_touch=2000.0, margin_last_touch=500.0, cost=200.0, cost_per_call=200.0,
               cost_per_lead=200.0, cost_per_deal=200.0, roi=1.5)  # (500 - 200) / 200
DIRECT_W1 = fig(calls=1, answered=1, answered_pct=100.0, missed_pct=0.0, abandoned_pct=0.0, avg_wait_seconds=5.0,
                talk_seconds=65.0, unique_callers=1, new_leads=1, cost_per_call=0.0, cost_per_lead=0.0)


def totals(*groups: dict[str, Any], unique_callers: int) -> dict[str, Any]:
    """Sums of the channels' counts; ratios worked out again below by hand."""
    sums = {k: sum(g[k] for g in groups) for k in FIELDS if not k.endswith(("_pct", "_seconds", "_per_call",
                                                                              "_per_lead", "_per_deal", "roi"))}
    sums["talk_seconds"] = sum(g["talk_seconds"] for g in groups)
    return {**fig(), **sums, "unique_callers": unique_callers}


async def test_a_fortnight_gives_every_figure_of_the_channel_report(tmp_path: Path) -> None:
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        report = await channel_report(w.store, fortnight_plan(), date(2026, 11, 16), date(2026, 11, 22), zone=ZONE)

        assert (report["from"], report["to"], report["shop"], report["timezone"], report["roi_basis"]) == (
            "2026-11-16", "2026-11-22", None, ZONE, "margin")
        assert report["previous_period"] == {"from": "2026-11-09", "to": "2026-11-15"}
        assert report["channels"][0]["channel"] == "yandex"  # most calls first
        channels = {row["channel"]: row for row in report["channels"]}
        assert set(channels) == {"yandex", "avito", "direct"}
        assert figures_of(channels["yandex"]) == YANDEX_W2
        assert figures_of(channels["avito"]) == AVITO_W2
        assert figures_of(channels["direct"]) == DIRECT_W2
        assert figures_of(channels["yandex"]["previous"]) == YANDEX_W1
        assert figures_of(channels["avito"]["previous"]) == AVITO_W1
        assert figures_of(channels["direct"]["previous"]) == DIRECT_W1

        # Totals: 9 calls, 6 answered (waits 20 + 20 + 5 = 45), 7 different callers (C1..C7).
        expected = {**totals(YANDEX_W2, AVITO_W2, DIRECT_W2, unique_callers=7),
                    "answered_pct": 66.6667, "missed_pct": 22.2222, "abandoned_pct": 11.1111,
                    "avg_wait_seconds": 7.5, "cost": 1500.0, "cost_per_call": 166.6667, "cost_per_lead": 300.0,
                    "cost_per_deal": 500.0, "roi": 3.6667}  # (7000 - 1500) / 1500
        assert figures_of(report["totals"]) == expected
        # Week 1: 3 calls by C1, C8, C5; waits 10 + 5 over 2 answered.
        assert figures_of(report["totals"]["previous"]) == {
            **totals(YANDEX_W1, AVITO_W1, DIRECT_W1, unique_callers=3),
            "answered_pct": 66.6667, "missed_pct": 33.3333, "abandoned_pct": 0.0, "avg_wait_seconds": 7.5,
            "cost": 900.0, "cost_per_call": 300.0, "cost_per_lead": 300.0, "cost_per_deal": 900.0,
            "roi": -0.4444}  # (500 - 900) / 900

        # Per shop and channel; the spend posted for all shops is a row of no shop.
        by_shop = {(row["shop"], row["channel"]): figures_of(row) for row in report["by_shop"]}
        assert [(row["shop"], row["channel"]) for row in report["by_shop"]][0] == (None, "avito")
        assert by_shop == {
            (None, "avito"): fig(cost=300.0, roi=-1.0),
            ("A", "yandex"): fig(calls=3, answered=2, missed=1, answered_pct=66.6667, missed_pct=33.3333,
                                 abandoned_pct=0.0, avg_wait_seconds=5.0, talk_seconds=90.0, qualified=1,
                                 unique_callers=2, new_leads=2, callbacks=1, callbacks_in_sla=1, deals_won=2,
                                 revenue=15000.0, margin=6000.0, deals_won_last_touch=1, revenue_last_touch=5000.0,
                                 margin_last_touch=2000.0, cost=700.0, cost_per_call=233.3333, cost_per_lead=350.0,
                                 cost_per_deal=350.0, roi=7.5714),  # (6000 - 700) / 700
            ("A", "avito"): {**AVITO_W2, "cost": 500.0, "cost_per_call": 250.0, "cost_per_lead": 500.0},
            ("A", "direct"): DIRECT_W2,
            ("B", "yandex"): fig(calls=2, answered=2, answered_pct=100.0, missed_pct=0.0, abandoned_pct=0.0,
                                 avg_wait_seconds=5.0, talk_seconds=110.0, qualified=1, unique_callers=2,
                                 new_leads=1, deals_won=1, revenue=3000.0, margin=1000.0, deals_won_last_touch=1,
                                 revenue_last_touch=3000.0, margin_last_touch=1000.0, cost_per_call=0.0,
                                 cost_per_lead=0.0, cost_per_deal=0.0),
        }

        # Weekday x hour: Monday 00 and 10, Tuesday 09 (missed) and 11, Wednesday 14 and 15
        # (abandoned), Thursday 18, Saturday 12, Sunday 23 (missed).
        cells = {(d, h): (1, m) for d, h, m in ((0, 0, 0), (0, 10, 0), (1, 9, 1), (1, 11, 0), (2, 14, 0),
                                                (2, 15, 1), (3, 18, 0), (5, 12, 0), (6, 23, 1))}
        assert report["heatmap"]["weekdays"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        assert [[(c["calls"], c["missed"]) for c in row] for row in report["heatmap"]["cells"]] == [
            [cells.get((d, h), (0, 0)) for h in range(24)] for d in range(7)]
        assert report["trend"] == [
            {"day": "2026-11-16", "calls": 2, "answered": 2, "missed": 0},
            {"day": "2026-11-17", "calls": 2, "answered": 1, "missed": 1},
            {"day": "2026-11-18", "calls": 2, "answered": 1, "missed": 1},  # abandoned counts as missed
            {"day": "2026-11-19", "calls": 1, "answered": 1, "missed": 0},
            {"day": "2026-11-20", "calls": 0, "answered": 0, "missed": 0},
            {"day": "2026-11-21", "calls": 1, "answered": 1, "missed": 0},
            {"day": "2026-11-22", "calls": 1, "answered": 0, "missed": 1},
        ]

        # D1 was posted three times: one row, the last amount.
        # (D3's last touch: see test_a_callback_is_not_the_last_touch_of_a_deal.)
        assert [tuple(r) for r in await w.store.read(
            "SELECT external_id, amount, status, first_shop, first_channel, last_shop, last_channel FROM deals "
            "WHERE external_id != 'D3' ORDER BY external_id")] == [
            ("D1", 10000.0, "won", "A", "yandex", "A", "avito"), ("D2", 5000.0, "won", "A", "yandex", "A", "yandex"),
            ("D4", 3000.0, "won", "B", "yandex", "B", "yandex"), ("D5", 1.0, "won", "A", "yandex", "B", "yandex"),
            ("D6", 2000.0, "won", "A", "avito", "A", "avito")]


async def test_the_shop_filter_keeps_the_shop_s_calls_deals_and_spend(tmp_path: Path) -> None:
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        a = await channel_report(w.store, fortnight_plan(), date(2026, 11, 16), date(2026, 11, 22), zone=ZONE,
                                 shop="A")
        channels = {row["channel"]: figures_of(row) for row in a["channels"]}
        assert channels == {
            "yandex": fig(calls=3, answered=2, missed=1, answered_pct=66.6667, missed_pct=33.3333,
                          abandoned_pct=0.0, avg_wait_seconds=5.0, talk_seconds=90.0, qualified=1,
                          unique_callers=2, new_leads=2, callbacks=1, callbacks_in_sla=1, deals_won=2,
                          revenue=15000.0, margin=6000.0, deals_won_last_touch=1, revenue_last_touch=5000.0,
                          margin_last_touch=2000.0, cost=700.0, cost_per_call=233.3333, cost_per_lead=350.0,
                          cost_per_deal=350.0, roi=7.5714),
            # Spend posted for all shops is not shop A's.
            "avito": {**AVITO_W2, "cost": 500.0, "cost_per_call": 250.0, "cost_per_lead": 500.0},
            "direct": DIRECT_W2,
        }
        heat = {(d, h): (c["calls"], c["missed"]) for d, row in enumerate(a["heatmap"]["cells"])
                for h, c in enumerate(row) if c["calls"]}
        assert heat == {(0, 0): (1, 0), (0, 10): (1, 0), (1, 9): (1, 1), (1, 11): (1, 0), (2, 14): (1, 0),
                        (2, 15): (1, 1), (6, 23): (1, 1)}
        assert [d["calls"] for d in a["trend"]] == [2, 2, 2, 0, 0, 0, 1]


async def test_an_empty_period_gives_zeros_and_no_ratios(tmp_path: Path) -> None:
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        # December: nothing but yandex's fee, 3000 / 31 a day; the week before has
        # 30 November (100) and six December days.
        december = await channel_report(w.store, fortnight_plan(), date(2026, 12, 7), date(2026, 12, 13),
                                        zone=ZONE)
        (yandex,) = december["channels"]
        assert figures_of(yandex) == fig(cost=677.42, roi=-1.0)  # 7 x 3000 / 31
        assert figures_of(yandex["previous"]) == fig(cost=680.65, roi=-1.0)  # 100 + 6 x 3000 / 31
        assert all(c == {"calls": 0, "missed": 0} for row in december["heatmap"]["cells"] for c in row)
        assert [(d["day"], d["calls"], d["answered"], d["missed"]) for d in december["trend"]] == [
            (f"2026-12-{n:02d}", 0, 0, 0) for n in range(7, 14)]



async def test_a_period_or_previous_period_with_no_channel_at_all_gives_zero_totals(tmp_path: Path) -> None:
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        # Shop B in December: no calls, no fee, no spend: no channel at all.
        empty = await channel_report(w.store, fortnight_plan(), date(2026, 12, 7), date(2026, 12, 13), zone=ZONE,
                                     shop="B")
        assert empty["channels"] == [] and empty["by_shop"] == []
        assert figures_of(empty["totals"]) == fig(cost=0.0)
        assert figures_of(empty["totals"]["previous"]) == fig(cost=0.0)
        # Shop B in week 2 has calls, but none in week 1 (its previous period).
        b = await channel_report(w.store, fortnight_plan(), date(2026, 11, 16), date(2026, 11, 22), zone=ZONE,
                                 shop="B")
        assert [(row["channel"], row["calls"], row["unique_callers"], row["new_leads"], row["deals_won"],
                 row["cost"], row["roi"]) for row in b["channels"]] == [("yandex", 2, 2, 1, 1, 0.0, None)]
        assert b["channels"][0]["previous"] is None  # shop B had no calls in week 1


async def test_a_callback_is_not_the_last_touch_of_a_deal(tmp_path: Path) -> None:
    """C4 came through direct, abandoned, was called back and bought: his last
    touch is still the channel he came through, not the agent's outbound call."""
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        (row,) = await w.store.read("SELECT first_channel, last_channel, last_shop FROM deals WHERE external_id = 'D3'")
        assert tuple(row) == ("direct", "direct", "A")


async def test_unique_callers_are_not_counted_twice_across_shops_or_channels(tmp_path: Path) -> None:
    async with world(tmp_path, fortnight_plan()) as w:
        await fortnight_world(w)
        report = await channel_report(w.store, fortnight_plan(), date(2026, 11, 16), date(2026, 11, 22), zone=ZONE)
        yandex = next(row for row in report["channels"] if row["channel"] == "yandex")
        # C2 called yandex in shop A and in shop B: one person. Week 2 had C1..C7.
        assert (yandex["unique_callers"], report["totals"]["unique_callers"]) == (3, 7)


# -- roll-ups equal the raw figures, and rebuild gives the same ----------------------

RANDOM_LINES = (YANDEX_A, AVITO_A, DIRECT_A, YANDEX_B, "+74950009999")  # the last one is in no plan


def random_calls(rng: random.Random, count: int) -> list[CallRecord]:
    start_of_month = msk("2026-11-01T00:00")
    out = []
    for n in range(count):
        t = start_of_month + rng.randrange(30 * 86400)
        caller = rng.choice([f"+7916555{c:04d}" for c in range(40)] + [None])
        line = rng.choice(RANDOM_LINES)
        outcome = rng.choice(("answered", "answered", "missed", "abandoned"))
        ring = rng.randrange(1, 40)
        if outcome == "answered":
            out.append(call(f"r{n:04d}", "inbound", caller, line, outcome, t, answered=t + ring,
                            end=t + ring + rng.randrange(1, 600), answered_by="101", talked=("101",)))
        else:
            out.append(call(f"r{n:04d}", "inbound", caller, line, outcome, t, end=t + ring, rang=("101",)))
    return out


def raw_figures(records: dict[str, CallRecord], results: dict[str, str], plan: NumberPlan) -> tuple[
        dict[tuple[str, str, str], tuple[Any, ...]], dict[tuple[str, str, str, int], tuple[int, int]],
        set[tuple[str, str, str, str, str | None]]]:
    """The roll-ups' figures worked out from the records themselves."""
    daily: dict[tuple[str, str, str], list[Any]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0])  # sums in ms
    hours: dict[tuple[str, str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    callers: set[tuple[str, str, str, str]] = set()
    for r in records.values():
        local = datetime.fromtimestamp(r.started_at, MOSCOW)
        line = plan.lines.get(r.dialled or "")
        key = (local.date().isoformat(), line.shop.shop_id if line else "", line.channel if line else "")
        d = daily[key]
        d[0] += 1
        d[1 + ("answered", "missed", "abandoned").index(r.outcome)] += 1
        d[4] += round(r.ring_seconds * 1000) if r.outcome == "answered" else 0
        d[5] += round(r.talk_seconds * 1000)
        d[6] += results.get(r.call_id) == "order"
        h = hours[(*key, local.hour)]
        h[0] += 1
        h[1] += r.outcome != "answered"
        if r.caller is not None:
            day, shop, channel = key
            # Each caller's days on his (shop, channel), on every shop's channel,
            # on the shop's every channel and on everything ("*").
            callers.update({(day, shop, channel, r.caller), (day, "*", channel, r.caller),
                            (day, shop, "*", r.caller), (day, "*", "*", r.caller)})
    # With the day he called before on the same key (None: never).
    with_prev = {(day, shop, channel, who, max((d for d, s, c, w in callers
                                                  if (s, c, w) == (shop, channel, who) and d < day), default=None))
                 for day, shop, channel, who in callers}
    return {k: tuple(v) for k, v in daily.items()}, {k: (v[0], v[1]) for k, v in hours.items()}, with_prev


async def rollup_tables(store: Store) -> tuple[Any, ...]:
    return (
        {(r[0], r[1], r[2]): tuple(r[3:]) for r in await store.read(
            "SELECT day, shop, channel, calls, answered, missed, abandoned, wait_ms, talk_ms, qualified "
            "FROM rollup_daily")},
        {(r[0], r[1], r[2], r[3]): (r[4], r[5]) for r in await store.read(
            "SELECT day, shop, channel, hour, calls, missed FROM rollup_hours")},
        {tuple(r) for r in await store.read("SELECT day, shop, channel, customer, prev_day FROM caller_days")},
        # zero counts may stay behind after a caller's day moved bucket: they count nothing
        {tuple(r[:4]): r[4] for r in await store.read(
            "SELECT shop, channel, day, prev_month, n FROM caller_day_counts WHERE n != 0")},
    )


async def test_roll_ups_equal_the_raw_figures_after_a_random_stream_and_a_rebuild(tmp_path: Path) -> None:
    rng = random.Random(20261116)
    plan = fortnight_plan()
    async with world(tmp_path, plan) as w:
        final = random_calls(rng, 300)
        # A first, provisional version of some calls (an interrupted one: missed, no talk),
        # then every call in a shuffled order, some twice.
        provisional = [replace(r, outcome="missed", answered_at=None, answered_by=None, talked=(),
                               talk_seconds=0.0, reason="missed") for r in rng.sample(final, 30)]
        stream = final + rng.sample(final, 40)
        rng.shuffle(stream)
        await w.feed(provisional)
        await w.feed(stream)
        results: dict[str, str] = {}
        for r in rng.sample(final, 80):
            for _ in range(rng.choice((1, 2))):  # some results changed once
                results[r.call_id] = rng.choice(("order", "info", "spam"))
                await w.result(r.call_id, results[r.call_id])
        await w.feed(rng.sample(final, 20))  # stored again after their results

        expected = raw_figures({r.call_id: r for r in final}, results, plan)
        kept = await rollup_tables(w.store)
        assert kept[0] == expected[0]
        assert kept[1] == expected[1]
        assert kept[2] == expected[2]
        counts: dict[tuple[Any, ...], int] = {}  # the per-day counts behind unique callers, from the rows
        for day, shop, channel, _, prev_day in expected[2]:
            key = (shop, channel, day, prev_day[:7] if prev_day else "")
            counts[key] = counts.get(key, 0) + 1
        assert kept[3] == counts
        assert sum(v[0] for v in kept[0].values()) == 300
        # A call's local day and hour, as the reports read them.
        days = {r[0]: (r[1], r[2]) for r in await w.store.read("SELECT call_id, day, hour FROM calls")}
        assert days == {r.call_id: (datetime.fromtimestamp(r.started_at, MOSCOW).date().isoformat(),
                                    datetime.fromtimestamp(r.started_at, MOSCOW).hour) for r in final}

        # The rebuild (what `cti-gateway rebuild-rollups` runs), in small pages: the same tables.
        progress: list[tuple[Any, ...]] = []
        assert await rebuild(w.store, w.rollups, progress=lambda *told: progress.append(told), page=64) == 300
        days_called = len({day for day, _ in days.values()})
        assert progress[-1] in ((300, 300), ("days", days_called, days_called))
        assert ("calls", 300, 300) in progress or (300, 300) in progress
        assert await rollup_tables(w.store) == kept


async def test_an_upgraded_file_gets_its_roll_up_parts_from_its_calls(tmp_path: Path) -> None:
    """Migration 13 (roll-ups kept by parts) fills the parts and the rows from a
    version-12 file's calls: a report after the upgrade equals one after a rebuild."""
    rng = random.Random(13)
    plan = fortnight_plan()
    async with world(tmp_path, plan) as w:
        final = random_calls(rng, 120)
        await w.feed(final)
        results = {r.call_id: rng.choice(("order", "info")) for r in rng.sample(final, 40)}
        for call_id, result in results.items():
            await w.result(call_id, result)
        rebuilt = await rollup_tables(w.store)
    path = tmp_path / "gw.sqlite3"
    async with aiosqlite.connect(path) as db:  # back to version 12's roll-up tables, then the upgrade again
        await db.executescript(
            "DROP TABLE rollup_parts; DROP TABLE rollup_daily; CREATE TABLE rollup_daily (day TEXT NOT NULL, "
            "shop TEXT NOT NULL, channel TEXT NOT NULL, calls INTEGER NOT NULL, answered INTEGER NOT NULL, "
            "missed INTEGER NOT NULL, abandoned INTEGER NOT NULL, wait_sum REAL NOT NULL, talk_sum REAL NOT NULL, "
            "qualified INTEGER NOT NULL, PRIMARY KEY (day, shop, channel)) WITHOUT ROWID; "
            "DELETE FROM rollup_hours; PRAGMA user_version = 12;")
        assert await migrate(db, MIGRATIONS) == 13
    store = await Store.open(path)
    try:
        assert await rollup_tables(store) == rebuilt
        assert sum(v[0] for v in rebuilt[0].values()) == 120
    finally:
        await store.close()


# -- the routes, through the whole app ------------------------------------------------


async def test_deals_costs_and_reports_over_http(tmp_path: Path) -> None:
    async with running(tmp_path, plans=PlanBook(fortnight_plan()), clock=lambda: NOW) as h, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        for record in fortnight():
            h.gateway.carry_out(CallFinished(record))
        await h.gateway.drain()
        cookies: dict[str, str] = {}
        for user in default_users():
            async with http.post(f"{h.url}/api/login", json={"login": user.login, "password": PASSWORD}) as r:
                assert r.status == 200
                cookies[user.login] = r.cookies[SESSION_COOKIE].value

        async def ask(method: str, path: str, login: str, *, headers: dict[str, str] | None = None,
                      **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
            headers = {**(headers or {}), "Cookie": f"{SESSION_COOKIE}={cookies[login]}"}
            async with http.request(method, f"{h.url}{path}", headers=headers, **kwargs) as r:
                body = await r.json() if r.content_type == "application/json" else await r.read()
                return r.status, body, r

        deal = {"external_id": "D2", "phone": C2, "amount": 5000, "margin": 2000, "date": "2026-11-20"}
        status, body, _ = await ask("POST", "/api/deals", "mark", json=deal)
        assert (status, body) == (200, {"external_id": "D2", "phone": C2, "amount": 5000.0, "margin": 2000.0,
                                        "status": "won", "date": "2026-11-20", "first_shop": "A",
                                        "first_channel": "yandex", "last_shop": "A", "last_channel": "yandex"})
        for login in ("olga", "admin"):
            assert (await ask("POST", "/api/deals", login, json=deal))[0] == 200
        status, body, _ = await ask("POST", "/api/deals", "mark", json={**deal, "amount": 5500})
        assert (status, body["amount"]) == (200, 5500.0)
        assert [tuple(r) for r in await h.store.read("SELECT external_id, amount FROM deals")] == [("D2", 5500.0)]
        assert (await ask("POST", "/api/deals", "anna", json=deal))[0] == 403
        for bad, field in (({**deal, "amount": "lots"}, "amount"), ({**deal, "phone": ""}, "phone"),
                           ({**deal, "date": "20.11.2026"}, "date"), ({**deal, "external_id": ""}, "external_id"),
                           ({**deal, "status": "maybe"}, "status")):
            status, body, _ = await ask("POST", "/api/deals", "mark", json=bad)
            assert status == 400 and body["error"] == "bad_field" and body["message"].startswith(f"{field}:"), body

        cost = {"channel": "avito", "shop": "A", "date": "2026-11-16", "amount": 500}
        assert (await ask("POST", "/api/costs", "mark", json=cost))[0] == 200
        assert (await ask("POST", "/api/costs", "olga", json=cost))[0] == 403
        assert (await ask("POST", "/api/costs/import", "olga", data=b"channel,date,amount\n"))[0] == 403

        csv_deals = ("\ufeffexternal_id;phone;amount;margin;status;date\n"
                     f"D1;{C1};10000;4000;won;2026-11-19\n"
                     "D9;;100;;won;2026-11-19\n"
                     f"D4;{C7};3000;1000;won;2026-11-22\n")
        for _ in range(2):  # the same file twice changes nothing
            status, body, _ = await ask("POST", "/api/deals/import", "mark", data=csv_deals.encode(),
                                        headers={"Content-Type": "text/csv"})
            assert status == 200
            assert (body["rows"], body["stored"], body["error_count"]) == (3, 2, 1)
            assert [(e["row"], e["field"]) for e in body["errors"]] == [(3, "phone")]
        assert (await h.store.read("SELECT count(*) FROM deals"))[0][0] == 3
        assert (await ask("POST", "/api/deals/import", "olga", data=csv_deals.encode()))[0] == 403

        csv_costs = "channel,shop,date,amount\navito,,2026-11-20,300\navito,A,2026-11-21,-5\n"
        status, body, _ = await ask("POST", "/api/costs/import", "admin", data=csv_costs.encode())
        assert (status, body["stored"], [(e["row"], e["field"]) for e in body["errors"]]) == (200, 1, [(3, "amount")])

        status, report, _ = await ask("GET", "/api/reports/channels?from=2026-11-16&to=2026-11-22", "olga")
        assert status == 200
        rows = {row["channel"]: row for row in report["channels"]}
        assert (rows["yandex"]["calls"], rows["yandex"]["deals_won"], rows["yandex"]["revenue"]) == (5, 3, 18500.0)
        assert (rows["avito"]["cost"], rows["avito"]["deals_won_last_touch"], rows["direct"]["roi"]) == (
            800.0, 1, None)
        status, data, response = await ask("GET", "/api/reports/channels?from=2026-11-16&to=2026-11-22&format=csv",
                                           "mark")
        assert status == 200 and response.content_type == "text/csv"
        text = data.decode("utf-8")
        assert text.startswith("\ufeffchannel,calls,unique_callers,new_leads,qualified,answered_pct,")
        lines = text.removeprefix("\ufeff").split("\r\n")
        assert lines[0].endswith(",roi,deals_won_last_touch")
        # (Counts of several shops come out as floats, "5.0": reported as cosmetic.)
        assert [float(x) for x in lines[1].split(",")[1:5]] == [5, 3, 3, 0]
        direct = next(line for line in lines if line.startswith("direct,"))
        assert direct.split(",")[-2] == ""  # ROI not applicable: an empty cell
        assert [line.split(",")[0] for line in lines[1:] if line] == [r["channel"] for r in report["channels"]]
        assert (await ask("GET", "/api/reports/channels", "anna"))[0] == 403
        for query in ("from=2026-11-31&to=2026-12-01", "from=2026-11-22&to=2026-11-16", "from=2025-01-01&to=2026-11-16"):
            status, body, _ = await ask("GET", f"/api/reports/channels?{query}", "admin")
            assert status == 400 and body["error"] in ("bad_date", "bad_period"), query

        status, agents, _ = await ask("GET", "/api/reports/agents?from=2026-11-09&to=2026-11-22", "olga")
        assert status == 200
        # The 8 answered inbound calls of the fortnight were answered on 101 (anna); her two callbacks.
        assert [(a["login"], a["answered"], a["callbacks"]) for a in agents["agents"]] == [
            ("anna", 8, 2), ("boris", 0, 0)]
        assert (await ask("GET", "/api/reports/agents", "mark"))[0] == 403
