"""The channel report: what each ad channel brings, costs and earns.

Read from the daily roll-ups (``dashboards.rollups``), never from the calls
themselves, so a year of a million calls answers in milliseconds; exact unique
callers come from the (day, shop, channel, caller) set. Periods are local days
of the reports' time zone, both ends included, compared with the period of
the same length just before.

Figures per channel (and per shop and channel): calls, unique callers, new
leads (contacts whose first call came in the period through the channel),
qualified calls (by the agents' results), answered / missed / abandoned shares,
average wait to answer, callbacks within the SLA, deals won by first touch and
by last touch with their revenue and margin (the headline figures use first
touch), cost (the lines' monthly fees spread over the days, plus spend posted
per day), cost per call, per lead, per deal, and ROI = (margin - cost) / cost
(or revenue-based); ROI is null when the channel cost nothing.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from crm_bridge.store import Store
from dashboards.rollups import ALL
from gateway.kpi import day_bounds
from gateway.numberplan import NumberPlan

Key = tuple[str, str]  # (shop, channel); "" for none
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(first: date, last: date) -> Iterable[date]:
    return (first + timedelta(days=n) for n in range((last - first).days + 1))


def fees(plan: NumberPlan, first: date, last: date, shop: str | None = None) -> dict[Key, float]:
    """The tracking numbers' monthly fees, spread evenly over each month's days."""
    out: dict[Key, float] = defaultdict(float)
    for line in plan.lines.values():
        if line.monthly_fee <= 0 or (shop is not None and line.shop.shop_id != shop):
            continue
        for day in _days(first, last):
            out[(line.shop.shop_id, line.channel)] += line.monthly_fee / calendar.monthrange(day.year, day.month)[1]
    return out


async def unique_callers(store: Store, shop: str, channel: str, first: str, last: str) -> int:
    """Distinct callers of a key ("*": every shop / channel) from ``first`` to
    ``last``: each counts on his first day in the period (his previous day is
    before it). Callers whose previous day is in an earlier month come from
    the per-day counts; the few whose previous day is earlier in the period's
    first month, from their rows."""
    month = first[:7]
    counted = await store.read(
        "SELECT coalesce(sum(n), 0) FROM caller_day_counts WHERE shop = ? AND channel = ? AND day BETWEEN ? AND ? "
        "AND prev_month < ?", (shop, channel, first, last, month))
    if first == f"{month}-01":
        return int(counted[0][0])  # the period starts with its month: nobody's previous day is in between
    rest = await store.read(  # the planner would take the day range of the primary key: a year of rows
        "SELECT count(*) FROM caller_days INDEXED BY caller_days_prev WHERE shop = ? AND channel = ? "
        "AND prev_day >= ? AND prev_day < ? AND day BETWEEN ? AND ?", (shop, channel, f"{month}-01", first, first, last))
    return int(counted[0][0]) + int(rest[0][0])


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


async def figures(store: Store, plan: NumberPlan, first: date, last: date, *, zone: str, shop: str | None,
                  roi_basis: str = "margin") -> dict[Key, dict[str, Any]]:
    """Every figure per (shop, channel) for the days ``first``..``last``."""
    a, b = first.isoformat(), last.isoformat()
    start, end = day_bounds(first, last, zone)
    where_shop, shop_args = (" AND shop = ?", (shop,)) if shop is not None else ("", ())
    rows: dict[Key, dict[str, Any]] = defaultdict(lambda: {
        "calls": 0, "answered": 0, "missed": 0, "abandoned": 0, "wait_sum": 0.0, "talk_seconds": 0.0,
        "qualified": 0, "unique_callers": 0, "new_leads": 0, "callbacks": 0, "callbacks_in_sla": 0,
        "deals_won": 0, "revenue": 0.0, "margin": 0.0, "deals_won_last_touch": 0, "revenue_last_touch": 0.0,
        "margin_last_touch": 0.0, "cost": 0.0,
    })
    for s, c, calls, answered, missed, abandoned, wait, talk, qualified in await store.read(
            "SELECT shop, channel, sum(calls), sum(answered), sum(missed), sum(abandoned), sum(wait_ms) / 1000.0, "
            f"sum(talk_ms) / 1000.0, sum(qualified) FROM rollup_daily WHERE day BETWEEN ? AND ?{where_shop} "
            "GROUP BY shop, channel", (a, b, *shop_args)):
        rows[(s, c)].update(calls=calls, answered=answered, missed=missed, abandoned=abandoned, wait_sum=wait,
                            talk_seconds=talk, qualified=qualified)
    for s, c in list(rows):
        rows[(s, c)]["unique_callers"] = await unique_callers(store, s, c, a, b)
    lead_shop = " AND first_shop = ?" if shop is not None else ""
    for s, c, n in await store.read(
            "SELECT coalesce(first_shop, ''), coalesce(source_channel, ''), count(*) FROM contacts "
            f"WHERE first_call_at >= ? AND first_call_at < ?{lead_shop} GROUP BY 1, 2", (start, end, *shop_args)):
        rows[(s, c)]["new_leads"] = n
    for s, c, n, in_sla in await store.read(
            "SELECT coalesce(shop, ''), coalesce(channel, ''), count(*), sum(within_sla) FROM callback_tasks "
            f"WHERE status = 'reached' AND closed_at >= ? AND closed_at < ?{where_shop} GROUP BY 1, 2",
            (start, end, *shop_args)):
        rows[(s, c)].update(callbacks=n, callbacks_in_sla=in_sla or 0)
    for touch, suffix in (("first", ""), ("last", "_last_touch")):
        deal_shop = f" AND {touch}_shop = ?" if shop is not None else ""
        for s, c, n, revenue, margin in await store.read(
                f"SELECT coalesce({touch}_shop, ''), coalesce({touch}_channel, ''), count(*), sum(amount), "
                f"sum(margin) FROM deals WHERE status = 'won' AND day BETWEEN ? AND ?{deal_shop} GROUP BY 1, 2",
                (a, b, *shop_args)):
            rows[(s, c)].update({f"deals_won{suffix}": n, f"revenue{suffix}": revenue, f"margin{suffix}": margin})
    for key, fee in fees(plan, first, last, shop).items():
        rows[key]["cost"] += fee
    for s, c, amount in await store.read(
            f"SELECT shop, channel, sum(amount) FROM channel_costs WHERE day BETWEEN ? AND ?{where_shop} "
            "GROUP BY shop, channel", (a, b, *shop_args)):
        rows[(s, c)]["cost"] += amount
    return {key: _derived(values, roi_basis) for key, values in rows.items()}


def _derived(v: dict[str, Any], roi_basis: str) -> dict[str, Any]:
    calls, cost = v["calls"], round(v["cost"], 2)
    gain = v["margin"] if roi_basis == "margin" else v["revenue"]
    return {
        **{k: v[k] for k in v if k not in ("wait_sum", "cost")},
        "talk_seconds": round(v["talk_seconds"], 1),
        "cost": cost,
        "answered_pct": _ratio(100 * v["answered"], calls),
        "missed_pct": _ratio(100 * v["missed"], calls),
        "abandoned_pct": _ratio(100 * v["abandoned"], calls),
        "avg_wait_seconds": _ratio(v["wait_sum"], v["answered"]),
        "cost_per_call": _ratio(cost, calls),
        "cost_per_lead": _ratio(cost, v["new_leads"]),
        "cost_per_deal": _ratio(cost, v["deals_won"]),
        "roi": _ratio(gain - cost, cost),
    }


_COUNTS = ("calls", "answered", "missed", "abandoned", "qualified", "unique_callers", "new_leads", "callbacks",
           "callbacks_in_sla", "deals_won", "deals_won_last_touch")
_AMOUNTS = ("talk_seconds", "revenue", "margin", "revenue_last_touch", "margin_last_touch", "cost")


def _sum(groups: Iterable[Mapping[str, Any]], roi_basis: str) -> dict[str, Any]:
    """Groups added up (nothing at all: zeros, never a missing figure)."""
    total: dict[str, Any] = {**dict.fromkeys(_COUNTS, 0), **dict.fromkeys(_AMOUNTS, 0.0), "wait_sum": 0.0}
    for g in groups:
        for k in (*_COUNTS, *_AMOUNTS):
            total[k] += g[k] or 0
        total["wait_sum"] += (g["avg_wait_seconds"] or 0) * g["answered"]
    return _derived(total, roi_basis)


async def channel_report(store: Store, plan: NumberPlan, first: date, last: date, *, zone: str,
                         shop: str | None = None, roi_basis: str = "margin") -> dict[str, Any]:
    """Per channel (shops together) and per shop and channel, with the previous
    period of the same length, a weekday x hour heatmap and a daily trend."""
    length = (last - first).days + 1
    before_last = first - timedelta(days=1)
    before_first = before_last - timedelta(days=length - 1)
    now = await figures(store, plan, first, last, zone=zone, shop=shop, roi_basis=roi_basis)
    then = await figures(store, plan, before_first, before_last, zone=zone, shop=shop, roi_basis=roi_basis)

    def by_channel(groups: Mapping[Key, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        channels: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for (_, channel), values in groups.items():
            channels[channel].append(values)
        return {channel: _sum(values, roi_basis) for channel, values in channels.items()}

    current, previous = by_channel(now), by_channel(then)
    every = shop if shop is not None else ALL  # unique callers across the shops of a channel are not a sum
    for span, groups in (((first, last), current), ((before_first, before_last), previous)):
        for channel, values in groups.items():
            values["unique_callers"] = await unique_callers(store, every, channel, span[0].isoformat(),
                                                            span[1].isoformat())
    channels = [{"channel": channel or None, **values, "previous": previous.get(channel)}
                for channel, values in sorted(current.items(), key=lambda kv: -kv[1]["calls"])]
    heat = [[{"calls": 0, "missed": 0} for _ in range(24)] for _ in range(7)]
    where_shop, shop_args = (" AND shop = ?", (shop,)) if shop is not None else ("", ())
    for day, hour, calls, missed in await store.read(
            "SELECT day, hour, sum(calls), sum(missed) FROM rollup_hours WHERE day BETWEEN ? AND ?"
            f"{where_shop} GROUP BY day, hour", (first.isoformat(), last.isoformat(), *shop_args)):
        cell = heat[date.fromisoformat(day).weekday()][hour]
        cell["calls"] += calls
        cell["missed"] += missed
    trend = {d.isoformat(): {"day": d.isoformat(), "calls": 0, "answered": 0, "missed": 0} for d in _days(first, last)}
    for day, calls, answered, missed in await store.read(
            "SELECT day, sum(calls), sum(answered), sum(missed) + sum(abandoned) FROM rollup_daily "
            f"WHERE day BETWEEN ? AND ?{where_shop} GROUP BY day", (first.isoformat(), last.isoformat(), *shop_args)):
        trend[day].update(calls=calls, answered=answered, missed=missed)
    return {
        "from": first.isoformat(), "to": last.isoformat(), "shop": shop, "timezone": zone, "roi_basis": roi_basis,
        "previous_period": {"from": before_first.isoformat(), "to": before_last.isoformat()},
        "channels": channels,
        "by_shop": [{"shop": s or None, "channel": c or None, **v}
                    for (s, c), v in sorted(now.items(), key=lambda kv: (kv[0][0], -kv[1]["calls"]))],
        "totals": {**_sum(current.values(), roi_basis),
                   "unique_callers": await unique_callers(store, every, ALL, first.isoformat(), last.isoformat()),
                   "previous": {**_sum(previous.values(), roi_basis),
                                "unique_callers": await unique_callers(store, every, ALL, before_first.isoformat(),
                                                                       before_last.isoformat())}},
        "heatmap": {"weekdays": list(WEEKDAYS), "cells": heat},
        "trend": list(trend.values()),
    }
