"""The channel report over a year of a million calls: from the roll-ups, and
from raw SQL over the calls, in the same run.

Run from the repository root: ``.venv/bin/python -m bench.reports
[--calls 1000000] [--runs 5]``. It prints figures and the ratio; it never
asserts on time.

Setup (not timed, about a minute): a store on a temporary file is opened with
``Store.open`` (the project's schema, through its migrations) and closed; the
calls (inbound, 2 shops x 5 channels, a year, 60,000 distinct callers,
outcomes 80% answered / 12% missed / 8% abandoned, 20% with the result
"order") are inserted with raw sqlite3 ``executemany``; the store is opened
again and ``dashboards.rollups.rebuild`` fills the roll-ups (its time is
printed: it is the ``rebuild-rollups`` command's work).

Measured, best of ``--runs``: ``channel_report`` (the API's function: both
periods, every figure, heatmap, trend) over the whole year, the last 30 days
and 30 days that start in the middle of a month, against the same figures computed by one raw SQL query over the
calls (the way it would be done without roll-ups), checked to agree.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from crm_bridge.store import Store
from dashboards.reports import channel_report
from dashboards.rollups import Rollups, rebuild
from gateway.kpi import day_bounds
from gateway.numberplan import Line, NumberPlan, Shop

ZONE = "Europe/Moscow"
CHANNELS = ("yandex", "avito", "google", "direct", "2gis")
FIRST = date(2025, 12, 1)
DAYS = 365


def plan() -> NumberPlan:
    shops = {s: Shop(s, s) for s in ("A", "B")}
    lines = {f"+7495000{i:04d}": Line(f"+7495000{i:04d}", shops["AB"[i % 2]], CHANNELS[i % 5], monthly_fee=3000.0)
             for i in range(10)}
    return NumberPlan(shops=shops, lines=lines, default_shop="A")


def generate(path: Path, calls: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    start = datetime.combine(FIRST, datetime.min.time(), ZoneInfo(ZONE)).timestamp()
    db = sqlite3.connect(path)
    rows, results = [], []
    for n in range(calls):
        at = start + rng.random() * DAYS * 86400
        roll = rng.random()
        outcome = "answered" if roll < 0.8 else "missed" if roll < 0.92 else "abandoned"
        ring = rng.uniform(2, 40)
        talk = rng.uniform(20, 600) if outcome == "answered" else 0.0
        customer = f"+7916{rng.randrange(60_000):07d}"
        call_id = f"bench-{n:07d}"
        rows.append((call_id, "inbound", customer, None, "+74950000000", outcome, "101" if outcome == "answered"
                     else None, "[]", "[]", at, at + ring if outcome == "answered" else None, at + ring + talk, ring,
                     talk, 16, None, 0, 1, None, "AB"[n % 2], CHANNELS[rng.randrange(5)], customer))
        if outcome == "answered" and rng.random() < 0.2:
            results.append((call_id, "order", None, "anna", at + ring + talk))
    db.executemany(
        "INSERT INTO calls (call_id, direction, caller, caller_name, dialled, outcome, answered_by, rang, talked, "
        "started_at, answered_at, ended_at, ring_seconds, talk_seconds, hangup_cause, reason, interrupted, ended, "
        "recording_path, shop, channel, customer) VALUES (" + ", ".join("?" * 22) + ")", rows)
    db.executemany("INSERT INTO call_results (call_id, result, note, set_by, set_at) VALUES (?, ?, ?, ?, ?)",
                   results)
    db.commit()
    db.close()


RAW = """
SELECT coalesce(c.channel, ''), count(*), sum(c.outcome = 'answered'), sum(c.outcome = 'missed'),
       sum(c.outcome = 'abandoned'), count(DISTINCT c.customer), sum(r.result = 'order')
FROM calls AS c LEFT JOIN call_results AS r ON r.call_id = c.call_id
WHERE c.direction = 'inbound' AND c.started_at >= ? AND c.started_at < ? GROUP BY 1
"""


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cti-bench-reports-"))
    path = tmp / "gw.sqlite3"
    store = await Store.open(path)
    await store.close()
    t = time.perf_counter()
    generate(path, args.calls)
    print(f"generated {args.calls:,} calls in {time.perf_counter() - t:.1f} s", flush=True)
    store = await Store.open(path)
    try:
        t = time.perf_counter()
        await rebuild(store, Rollups(ZONE, ("order",)))
        print(f"rebuild-rollups: {time.perf_counter() - t:.1f} s", flush=True)
        the_plan = plan()
        last = FIRST + timedelta(days=DAYS - 1)
        mid = last - timedelta(days=45)
        for label, first, last in (("a year", FIRST, last), ("30 days", last - timedelta(days=29), last),
                                   ("30 days from mid-month", mid - timedelta(days=29), mid)):
            start, end = day_bounds(first, last, ZONE)
            best_report = best_raw = float("inf")
            for _ in range(args.runs):
                t = time.perf_counter()
                report = await channel_report(store, the_plan, first, last, zone=ZONE)
                best_report = min(best_report, time.perf_counter() - t)
                t = time.perf_counter()
                raw = await store.read(RAW, (start, end))
                best_raw = min(best_raw, time.perf_counter() - t)
            mine = {c["channel"] or "": (c["calls"], c["answered"], c["missed"], c["abandoned"], c["unique_callers"],
                                         c["qualified"]) for c in report["channels"]}
            theirs = {row[0]: tuple(row[1:7]) for row in raw}
            assert mine == theirs, (mine, theirs)
            print(f"channel report over {label} ({report['totals']['calls']:,} calls): roll-ups "
                  f"{best_report * 1000:.0f} ms (both periods, every figure, heatmap, trend) vs raw SQL "
                  f"{best_raw * 1000:.0f} ms (this period's counts only): {best_raw / best_report:.1f}x faster; "
                  f"target < 200 ms: {'met' if best_report < 0.2 else 'NOT met'}")
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    asyncio.run(main(parser.parse_args()))
