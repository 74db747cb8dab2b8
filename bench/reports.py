"""The channel report over a year of a million calls: from the roll-ups, and
from raw SQL over the calls, in the same run.

Run from the repository root: ``.venv/bin/python -m bench.reports
[--calls 1000000] [--runs 5] [--cache-dir DIR | --no-cache]``. It prints
figures and the ratio; it never asserts on time.

Setup (not timed; about 3 minutes for a million calls, so the finished file is
cached under ``--cache-dir``, keyed by the number of calls, the generator's
source, the migrations and the roll-up code, and copied for each run): a store on a temporary file is opened with
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
import hashlib
import inspect
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.figures import CheckFailed, Figure, REPO, Target, render, run_alone
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


TARGET_MS = 200.0  # issue 9, "Speed"; DESIGN.md: dashboards under 200 ms
# What the fixture file depends on besides its parameters: a change to any of
# these builds it again rather than measuring a stale schema or roll-up.
FIXTURE_SOURCES = (REPO / "crm_bridge" / "migrations.py", REPO / "dashboards" / "rollups.py")


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cti-gateway-bench"


def fixture_key(calls: int) -> str:
    digest = hashlib.sha256(f"{calls} {FIRST} {DAYS} {ZONE} {CHANNELS}".encode())
    digest.update(inspect.getsource(generate).encode())
    for source in FIXTURE_SOURCES:
        digest.update(source.read_bytes())
    return f"reports-{calls}-{digest.hexdigest()[:16]}.sqlite3"


async def build(path: Path, calls: int) -> None:
    """The project's schema, ``calls`` generated calls, and their roll-ups (setup, not timed)."""
    store = await Store.open(path)
    await store.close()
    t = time.perf_counter()
    generate(path, calls)
    print(f"generated {calls:,} calls in {time.perf_counter() - t:.1f} s", flush=True)
    store = await Store.open(path)
    try:
        t = time.perf_counter()
        await rebuild(store, Rollups(ZONE, ("order",)))
        print(f"rebuild-rollups: {time.perf_counter() - t:.1f} s", flush=True)
    finally:
        await store.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file, ready to copy


async def fixture(args: argparse.Namespace, workdir: Path) -> Path:
    """A store file with the calls and roll-ups: copied from the cache, or built (and cached)."""
    path = workdir / "gw.sqlite3"
    if args.no_cache:
        await build(path, args.calls)
        return path
    cached = Path(args.cache_dir) / fixture_key(args.calls)
    if cached.exists():
        print(f"fixture: {cached} (cached; delete it or pass --no-cache to build it again)", flush=True)
    else:
        cached.parent.mkdir(parents=True, exist_ok=True)
        await build(path, args.calls)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        shutil.copyfile(path, partial)
        os.replace(partial, cached)  # a run killed while copying leaves no half file under the real name
        print(f"fixture cached in {cached}", flush=True)
        return path
    shutil.copyfile(cached, path)  # measured on a copy: opening a store may write to its file
    return path


async def measure(args: argparse.Namespace) -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="cti-bench-reports-") as tmp:
        path = await fixture(args, Path(tmp))
        store = await Store.open(path)
        try:
            return await time_reports(store, args.runs)
        finally:
            await store.close()


async def time_reports(store: Store, runs: int) -> list[Figure]:
    the_plan = plan()
    last = FIRST + timedelta(days=DAYS - 1)
    mid = last - timedelta(days=45)
    result = []
    for label, first, last in (("a year", FIRST, last), ("30 days", last - timedelta(days=29), last),
                               ("30 days from mid-month", mid - timedelta(days=29), mid)):
        start, end = day_bounds(first, last, ZONE)
        best_report = best_raw = float("inf")
        for _ in range(runs):
            t = time.perf_counter()
            report = await channel_report(store, the_plan, first, last, zone=ZONE)
            best_report = min(best_report, time.perf_counter() - t)
            t = time.perf_counter()
            raw = await store.read(RAW, (start, end))
            best_raw = min(best_raw, time.perf_counter() - t)
        mine = {c["channel"] or "": (c["calls"], c["answered"], c["missed"], c["abandoned"], c["unique_callers"],
                                     c["qualified"]) for c in report["channels"]}
        theirs = {row[0]: tuple(row[1:7]) for row in raw}
        if mine != theirs:
            raise CheckFailed(f"channel report over {label} disagrees with raw SQL: {mine} != {theirs}")
        calls = report["totals"]["calls"]
        print(f"channel report over {label} ({calls:,} calls): roll-ups "
              f"{best_report * 1000:.0f} ms (both periods, every figure, heatmap, trend) vs raw SQL "
              f"{best_raw * 1000:.0f} ms (this period's counts only): {best_raw / best_report:.1f}x faster", flush=True)
        result.append(Figure(f"channel report, {label} ({calls:,} calls)", best_report * 1000, "ms", best_raw * 1000,
                             "raw SQL", target=Target("<", TARGET_MS, "issue 9")))
    return result


def figures(args: argparse.Namespace) -> list[Figure]:
    """Run the benchmark, print its detail, return its figures."""
    result = asyncio.run(measure(args))
    print(render(result))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.reports", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, default=cache_dir(),
                        help="where the generated store is kept between runs (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="build the store afresh and keep nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(figures, parse_args(argv))


if __name__ == "__main__":
    main()
