"""Routing decision latency with a large contact store, against a bare indexed
lookup in the same run.

Run from the repository root: ``.venv/bin/python -m bench.routing
[--contacts 100000] [--decisions 5000] [--concurrency 50] [--rate 1000]
[--profile]``. It prints figures and ratios; it never asserts on time (see
bench/README.md, "Routing", for what each figure means).

Setup (not timed): a store on a temporary file is opened once with
``Store.open`` (so the schema is the project's own, through its migrations)
and closed; N contacts with 1-2 E.164 phones each are then inserted with raw
sqlite3 ``executemany`` in one transaction, and the store is opened again.
The Router is assembled as ``gateway.cli`` assembles it: real ``Contacts``,
``Directory``, ``PlanBook`` and ``Presence`` (a set of connected logins and an
empty ``CallTracker``), the config from config/example.toml (read with
``gateway.config.load_config``, dummy secrets in the environment), and a clock
fixed on a Wednesday at noon in Moscow, when shop A is open.

Measured, each latency ``time.perf_counter()`` around one await (or call):

- ``Router.decide(caller, "+74950000003")``, callers known and unknown, written
  as ``+7...`` or ``8...``, in one event loop: one at a time; arriving at
  random at ``--rate`` a second; ``--concurrency`` always in flight (workers
  sharing one list of callers); and in bursts of ``--concurrency`` started at
  once (latency from the burst's start);
- the baseline: the bare indexed lookup (``contact_phones`` joined to
  ``contacts`` on the phone's primary key, the query ``Contacts.manager_for``
  runs) through the same ``Store.read`` with the number already in E.164, in
  the same four ways;
- the floor: the same query on a raw ``sqlite3`` connection in this thread.

When a target is missed (or with ``--profile``) it also prints a cProfile of
decide and "what-if" pipelines: the same lookup without ``Store``'s read lock,
or on a read-only connection in the loop's thread. They reach into a private
attribute of ``Store`` and are not the project's code path; they only show
where the time goes.

Each pipeline draws its own callers from the same mix, so no pipeline reads
pages another has just pulled into the reader connection's cache. The
pipelines run in interleaved rounds (their order rotating), so a slow patch
of the machine hits all of them alike. Every decision and every lookup is
checked against the answer the generated data implies before any figure is
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import io
import math
import os
import platform
import pstats
import random
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.figures import CheckFailed, Figure, Target, render, run_alone
from crm_bridge.contacts import _MANAGER_FOR, Assignment, Contacts, e164
from crm_bridge.store import Store
from gateway.config import Config, load_config
from gateway.numberplan import PlanBook
from gateway.presence import Presence
from gateway.routing import RouteDecision, Router
from gateway.tracker import CallTracker
from gateway.users import Directory

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "example.toml"
TARGET_P99_MS = 5.0  # issue 5, "Speed"
DIALLED = "+74950000003"  # shop A, channel yandex, in the example plan
NOW = datetime(2027, 3, 3, 12, 0, tzinfo=ZoneInfo("Europe/Moscow")).timestamp()  # Wednesday noon: shop A open
DAY = 86400.0
AGENTS = ("anna", "boris", "vera")  # the example config's agents (extensions 101, 102, 103)
CONNECTED = {"anna", "boris", "vera"}
PAUSED = "boris"  # connected but paused: his contacts are not routed to him
BURST_GAP = 0.010  # seconds idle between bursts
# The bare indexed lookup: the very query Contacts.manager_for runs (phone's primary key, then contact's rowid).
LOOKUP = _MANAGER_FOR
FIRST = ("Иван", "Ольга", "Пётр", "Анна", "Сергей", "Мария", "Алексей", "Елена", "John", "Anna")
LAST = ("Петров", "Кузнецова", "Сидоров", "Иванова", "Смирнов", "Попова", "Волков", "Соколова", "Smith")
COMPANIES = ("ООО Ромашка", "ИП Сидоров", "АО Вектор", "Acme Ltd")


# -- the data ------------------------------------------------------------------------


# The generated data is kept in lists of plain values and exact tuples of plain
# values, which the garbage collector does not track: 100,000 dataclass
# instances would make every full collection several times longer (~100 ms
# instead of the gateway's own ~10 ms), and those pauses would be the bench's,
# not the gateway's.

Caller = tuple[str, str, int]  # (as the trunk writes it: +7... or 8..., E.164, contact index or -1: unknown)


@dataclass
class Data:
    # contact i: name[i], vip[i], blacklisted[i], manager[i], last_call_at[i]
    name: list[str]
    vip: bytearray
    blacklisted: bytearray
    manager: list[str | None]
    last_call_at: list[float | None]
    phones: list[tuple[str, int]]  # (E.164, contact index)
    unknown: list[str]  # E.164 numbers nobody has


def make_data(contacts: int, unknown: int, rng: random.Random) -> Data:
    """``contacts`` people with 1-2 Russian mobile numbers each, and a pool of numbers nobody has."""
    two = [rng.random() < 0.4 for _ in range(contacts)]
    pool = rng.sample(range(10**9), contacts + sum(two) + unknown)
    numbers = [f"+79{n:09d}" for n in pool]
    d = Data([], bytearray(), bytearray(), [], [], [], [])
    at = 0
    for i in range(contacts):
        d.name.append(f"{rng.choice(FIRST)} {rng.choice(LAST)}")
        d.vip.append(rng.random() < 0.03)
        d.blacklisted.append(rng.random() < 0.01)
        d.manager.append(rng.choice(AGENTS) if rng.random() < 0.30 else None)
        # 10%: imported, never called
        d.last_call_at.append(None if rng.random() < 0.10 else NOW - rng.uniform(60.0, 200 * DAY))
        for _ in range(2 if two[i] else 1):
            d.phones.append((numbers[at], i))
            at += 1
    d.unknown = numbers[at:]
    return d


def load(path: Path, d: Data, rng: random.Random) -> None:
    """Insert every contact and phone with raw sqlite3, in one transaction (setup, not timed)."""
    def contacts() -> Iterator[tuple[object, ...]]:
        for i, last in enumerate(d.last_call_at):
            first = None if last is None else last - rng.uniform(0, 30 * DAY)
            created = first if first is not None else NOW - rng.uniform(0, 300 * DAY)
            manager = d.manager[i]
            yield (
                i + 1, d.name[i], rng.choice(COMPANIES) if rng.random() < 0.2 else None, d.vip[i],
                d.blacklisted[i], "lead" if rng.random() < 0.7 else "customer", manager,
                None if manager is None else rng.choice(("rule", "olga")),
                None if first is None else rng.choice(("yandex", "avito", "direct")),
                None if first is None else rng.choice(("A", "B")), first, last, created, NOW - 3600,
            )

    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO contacts (contact_id, name, company, vip, blacklisted, status, manager, manager_set_by, "
            "source_channel, first_shop, first_call_at, last_call_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", contacts())
        db.executemany("INSERT INTO contact_phones (phone, contact_id) VALUES (?, ?)",
                       ((phone, i + 1) for phone, i in d.phones))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def callers(d: Data, count: int, known_share: float, rng: random.Random) -> list[Caller]:
    """``count`` callers: ``known_share`` of them from the store (any of a contact's phones), the rest
    unknown; half written +7XXXXXXXXXX, half 8XXXXXXXXXX."""
    out = []
    for _ in range(count):
        if rng.random() < known_share:
            number, index = rng.choice(d.phones)
        else:
            number, index = rng.choice(d.unknown), -1
        out.append((number if rng.random() < 0.5 else "8" + number[2:], number, index))
    return out


def expected(d: Data, index: int, extensions: dict[str, str], available: set[str], sticky: float,
             vip_fallback: str | None) -> tuple[str, str | None, str | None]:
    """(reason, route, contact name) the routing rules give for contact ``index``, from the generated data."""
    if index < 0:
        return "default", None, None
    name, manager, last = d.name[index], d.manager[index], d.last_call_at[index]
    if d.blacklisted[index]:
        return "blacklist", None, name
    route = f"PJSIP/{extensions[manager]}" if manager in available else None
    if d.vip[index] and (route is not None or vip_fallback is not None):
        return "vip", route, name
    recent = last is not None and NOW - last <= sticky
    if route is not None and recent:
        return "assigned_manager", route, name
    return "default", None, name


# -- the router, as gateway.cli builds it ----------------------------------------------


@dataclass
class World:
    config: Config
    store: Store
    contacts: Contacts
    directory: Directory
    plans: PlanBook
    presence: Presence
    router: Router


def build(config: Config, store: Store) -> World:
    region = config.http.default_region
    directory = Directory(config.users)
    plans = PlanBook(config.plan)
    contacts = Contacts(store, region=region, is_login=lambda login: directory.by_login(login) is not None,
                        clock=lambda: NOW)
    tracker = CallTracker()
    presence = Presence(
        connected=lambda login: login in CONNECTED,
        busy_extensions=tracker.busy_extensions,
        extensions_of=lambda login: u.extensions if (u := directory.by_login(login)) else (),
        clock=lambda: NOW,
        wrap_up_seconds=config.routing.wrap_up_seconds,
    )
    presence.set_status(PAUSED, "paused")
    routing = config.routing
    router = Router(
        contacts=contacts, plans=plans, directory=directory, presence=presence, clock=lambda: NOW,
        normalise=lambda raw: e164(raw, region),
        dial_string=lambda ext: routing.dial_string.replace("{extension}", ext),
        sticky_days=routing.sticky_days, vip_fallback=routing.vip_fallback,
    )
    return World(config, store, contacts, directory, plans, presence, router)


# -- timing ---------------------------------------------------------------------------


class GcPauses:
    """Collections by generation while timing: how many, and the longest pause."""

    def __init__(self) -> None:
        self.active = True
        self.by_generation: dict[int, list[float]] = {}
        self._start = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self.active:
            self.by_generation.setdefault(info["generation"], []).append(time.perf_counter() - self._start)

    def summary(self) -> str:
        return "; ".join(f"generation {g}: {len(p):,} collections, longest {max(p) * 1000:.1f} ms"
                         for g, p in sorted(self.by_generation.items())) or "no collections"


@dataclass
class Series:
    name: str
    samples: list[float]  # seconds
    wall: float = 0.0  # seconds for the whole series (concurrent runs: throughput)

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]  # nearest rank

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)


Once = Callable[[Caller], Awaitable[object]]


async def run(mode: str, items: Sequence[Caller], once: Once, width: int,
              rate: float = 0.0) -> tuple[list[float], float, list[object]]:
    """Latencies (seconds), busy wall seconds and answers of ``once`` over ``items``.

    ``seq``: one at a time. ``closed``: ``width`` workers, each starting the
    next caller as soon as its last one is answered (``width`` always in
    flight). ``burst``: ``width`` started at once, all awaited, then
    ``BURST_GAP`` idle (not counted in the wall time), and again; each call's
    latency runs from the start of its burst (they all arrived then), so it
    includes the time the calls before it held the loop. ``open``: calls
    arrive at random (Poisson, ``rate`` a second, a fixed seed), each started
    as its own task when it is due, whatever is still in flight; its latency
    runs from that start.
    """
    clock = time.perf_counter
    out: list[float] = []
    answers: list[object] = [None] * len(items)

    async def timed(i: int, arrived: float | None = None) -> None:
        t0 = clock() if arrived is None else arrived
        answers[i] = await once(items[i])
        out.append(clock() - t0)

    wall = 0.0
    if mode == "seq":
        start = clock()
        for i in range(len(items)):
            await timed(i)
        wall = clock() - start
    elif mode == "closed":
        it = iter(range(len(items)))

        async def worker() -> None:
            for i in it:
                await timed(i)

        start = clock()
        await asyncio.gather(*(worker() for _ in range(width)))
        wall = clock() - start
    elif mode == "open":
        gaps = random.Random(len(items)).expovariate
        tasks = []
        start = due = clock()
        for i in range(len(items)):
            due += gaps(rate)
            if (delay := due - clock()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(timed(i)))
        await asyncio.gather(*tasks)
        wall = clock() - start
    else:
        for first in range(0, len(items), width):
            start = clock()
            await asyncio.gather(*(timed(i, start) for i in range(first, min(first + width, len(items)))))
            wall += clock() - start
            await asyncio.sleep(BURST_GAP)
    return out, wall, answers


def chunks(items: Sequence[Caller], rounds: int) -> list[Sequence[Caller]]:
    size = -(-len(items) // rounds)
    return [items[i:i + size] for i in range(0, len(items), size)]


# -- the run --------------------------------------------------------------------------


async def run_all(args: argparse.Namespace) -> list[Figure]:
    rng = random.Random(args.seed)
    config = load_config(CONFIG, environ={**os.environ, "CTI_AMI_SECRET": "bench-dummy-ami-secret",
                                          "CTI_HTTP_SECRET": "bench-dummy-http-secret-0123456789abcdef",
                                          "CTI_ZADARMA_SECRET": "bench"})
    with tempfile.TemporaryDirectory(prefix="bench-routing-") as tmp:
        path = Path(tmp) / "gw.sqlite3"
        t0 = time.perf_counter()
        store = await Store.open(path)  # the project's schema, through its migrations
        await store.close()
        data = make_data(args.contacts, max(10_000, args.decisions), rng)
        load(path, data, rng)
        load_s = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6

        store = await Store.open(path)
        raw_db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            w = build(config, store)
            return await measure(args, w, raw_db, data, rng, load_s, size_mb)
        finally:
            raw_db.close()
            await store.close()


async def measure(args: argparse.Namespace, w: World, raw_db: sqlite3.Connection, data: Data, rng: random.Random,
                  load_s: float, size_mb: float) -> list[Figure]:
    m, share, rounds, width, rate = args.decisions, args.known, args.rounds, args.concurrency, args.rate
    load_before = os.getloadavg()[0]
    router, store = w.router, w.store
    extensions = {u.login: u.extensions[0] for u in w.config.users if u.extensions}
    available = CONNECTED - {PAUSED}
    sticky = w.config.routing.sticky_days * DAY
    stored = (await store.read("SELECT count(*) FROM contacts"))[0][0], \
        (await store.read("SELECT count(*) FROM contact_phones"))[0][0]

    def decide(c: Caller) -> Awaitable[RouteDecision]:
        return router.decide(c[0], DIALLED)

    def lookup(c: Caller) -> Awaitable[object]:
        return store.read(LOOKUP, (c[1],))

    async def raw(c: Caller) -> object:
        return raw_db.execute(LOOKUP, (c[1],)).fetchall()

    def draw(count: int = m) -> list[Caller]:
        return callers(data, count, share, rng)

    # Warm-up (not counted): imports, statement caches, the upper levels of the B-trees.
    warm = draw(500)
    warm_up: tuple[Once, ...] = (decide, lookup, raw)
    for once in warm_up:
        await run("seq", warm, once, 1)

    pipelines: dict[str, tuple[str, Once]] = {
        "decide, sequential": ("seq", decide),
        "Store.read, sequential": ("seq", lookup),
        "raw sqlite3, same thread": ("seq", raw),
        f"decide, {rate:g}/s at random": ("open", decide),
        f"Store.read, {rate:g}/s at random": ("open", lookup),
        f"decide, {width} in flight": ("closed", decide),
        f"Store.read, {width} in flight": ("closed", lookup),
        f"decide, bursts of {width}": ("burst", decide),
        f"Store.read, bursts of {width}": ("burst", lookup),
    }
    series = {name: Series(name, []) for name in pipelines}
    split = {name: chunks(draw(), rounds) for name in pipelines}  # each pipeline its own callers

    # Every answer is checked against the generated data right after its chunk
    # and then dropped, so the answers do not pile up on the heap.
    problems: list[str] = []
    reasons: Counter[str] = Counter()
    found = 0
    vip_fallback = w.config.routing.vip_fallback

    def check(part: Sequence[Caller], answers: list[object], decided: bool) -> None:
        nonlocal found
        for (raw_number, number, index), answer in zip(part, answers):
            if decided:
                assert isinstance(answer, RouteDecision)
                want = expected(data, index, extensions, available, sticky, vip_fallback)
                got = (answer.reason, answer.route, answer.contact_name)
                reasons[answer.reason] += 1
                if got != want or (answer.shop, answer.channel) != ("A", "yandex"):
                    problems.append(f"decide({raw_number!r}): got {got} shop={answer.shop} "
                                    f"channel={answer.channel}, expected {want}")
            else:
                found += bool(answer)
                if bool(answer) != (index >= 0):
                    problems.append(f"lookup({number}): {'found' if answer else 'nothing'}, expected the opposite")

    gc.collect()
    pauses = GcPauses()
    gc.callbacks.append(pauses.callback)
    names = list(pipelines)
    try:
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                mode, once = pipelines[name]
                part = split[name][r] if r < len(split[name]) else []
                samples, wall, answers = await run(mode, part, once, width, rate)
                series[name].samples += samples
                series[name].wall += wall
                pauses.active = False
                check(part, answers, once is decide)
                pauses.active = True
    finally:
        gc.callbacks.remove(pauses.callback)
    checked = sum(len(s.samples) for s in series.values())
    if problems:
        raise CheckFailed(f"{len(problems)} wrong answers; the first ones:\n  " + "\n  ".join(problems[:10]))

    # -- where a decision's time goes (each step alone, same kind of callers) --------
    parts = draw(min(m, 2000))

    def plan_step() -> object:
        line = w.plans.at(NOW).line(DIALLED)
        return line is not None and line.shop.is_open(NOW)

    plan_t = [_timed(plan_step) for _ in parts]
    region = w.contacts.region
    norm_t = [_timed(functools.partial(e164, c[0], region)) for c in parts]
    pres_t = [_timed(lambda: w.presence.is_available("anna")) for _ in parts]
    mf_t, _, _ = await run("seq", parts, lambda c: w.contacts.manager_for(c[1]), 1)

    # -- report ---------------------------------------------------------------------
    ms = 1000.0
    print("Routing decision: Router.decide against a bare indexed lookup")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, {platform.machine()}, "
          f"CPython {platform.python_version()}, SQLite {sqlite3.sqlite_version}; 1-min load average "
          f"{load_before:.2f} before timing, {os.getloadavg()[0]:.2f} after (other work on the machine skews tails)")
    print(f"store: {stored[0]:,} contacts, {stored[1]:,} phones, {size_mb:.1f} MB on a temp file (WAL); "
          f"{sum(x is not None for x in data.manager):,} assigned to {'/'.join(AGENTS)} ({PAUSED} paused), "
          f"{sum(data.vip):,} VIP, {sum(data.blacklisted):,} blacklisted, "
          f"{sum(x is None for x in data.last_call_at):,} never called, last_call_at over 200 days; "
          f"loaded in {load_s:.1f} s (setup, not timed)")
    query_plan = "; ".join(str(r[-1]) for r in raw_db.execute(f"EXPLAIN QUERY PLAN {LOOKUP}", ("+7",)))
    print(f"lookup: Contacts.manager_for's query; SQLite's plan: {query_plan}")
    print(f"router: as gateway.cli builds it, config/example.toml (sticky {w.config.routing.sticky_days:g} days, "
          f"vip_fallback {w.config.routing.vip_fallback!r}), clock fixed at Wed 2027-03-03 12:00 Moscow "
          f"(shop A open); decide(caller, {DIALLED!r})")
    print(f"callers: {m:,} per pipeline, each pipeline its own, {share:.0%} known (any of a contact's phones), "
          f"written +7... or 8...; {rounds} interleaved rounds; 500 warm-up calls each, not counted; "
          f"bursts: {width} started at once, {BURST_GAP * 1000:g} ms idle between bursts; at random: Poisson "
          f"arrivals, {rate:g}/s")
    print(f"checked: all {sum(reasons.values()):,} decisions as the data implies "
          f"({', '.join(f'{k} {v:,}' for k, v in sorted(reasons.items()))}); all {checked - sum(reasons.values()):,} "
          f"lookups found exactly the known callers ({found:,})")
    print(f"garbage collector while timing: {pauses.summary()}")
    print()
    rows: list[tuple[str, ...]] = [("pipeline", "n", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "mean ms", "per s")]
    for s in series.values():
        rows.append((s.name, f"{len(s.samples):,}", *(f"{s.pct(q) * ms:.3f}" for q in (50, 90, 99, 99.9)),
                     f"{max(s.samples) * ms:.3f}", f"{s.mean * ms:.3f}", f"{len(s.samples) / s.wall:,.0f}"))
    _table(rows)
    print()

    def get(name: str) -> Series:
        return series[name]

    seq, look, floor = get("decide, sequential"), get("Store.read, sequential"), get("raw sqlite3, same thread")
    target = Target("<", TARGET_P99_MS, "issue 5")
    crowd = ("Under concurrency the decisions queue on the store's one reader connection and its read lock; "
             "the issue's figure is one at a time (bench/README.md, 'Where the time goes').")

    def figure(name: str, s: Series, q: float, base: Series, base_name: str, judged: bool, note: str = "") -> Figure:
        return Figure(name, s.pct(q) * ms, "ms", base.pct(q) * ms, base_name, target=target if judged else None,
                      note=note)

    modes = (f"{rate:g}/s at random", f"{width} in flight", f"bursts of {width}")
    result = [figure("routing decide p50, one at a time", seq, 50, look, "Store.read", False),
              figure("routing decide p99, one at a time", seq, 99, look, "Store.read", True),
              figure("routing decide p99 vs the floor", seq, 99, floor, "raw sqlite3", False),
              figure("Store.read p99 vs the floor", look, 99, floor, "raw sqlite3", False)]
    for mode in modes:
        result.append(figure(f"routing decide p50, {mode}", get(f"decide, {mode}"), 50, get(f"Store.read, {mode}"),
                             "Store.read", False))
        result.append(figure(f"routing decide p99, {mode}", get(f"decide, {mode}"), 99, get(f"Store.read, {mode}"),
                             "Store.read", True, crowd if mode != modes[0] else ""))
    print(render(result))
    print()
    print("where a sequential decision's time goes (each step timed alone, µs):")
    steps: list[tuple[str, ...]] = [("step", "per decide", "p50 µs", "p99 µs")]
    for name, samples, per in (
        ("number plan: line + is_open (zoneinfo)", plan_t, "1x"),
        ("e164() via phonenumbers", norm_t, "2x"),
        ("Contacts.manager_for (e164 + Store.read + Assignment)", mf_t, "1x"),
        ("  of which the query itself (raw sqlite3)", floor.samples, "1x"),
        ("Presence.is_available", pres_t, "1x"),
        ("Router.decide, whole", seq.samples, ""),
    ):
        s = Series(name, samples)
        steps.append((name, per, f"{s.pct(50) * 1e6:.1f}", f"{s.pct(99) * 1e6:.1f}"))
    _table(steps)

    missed = any(f.met is False for f in result)
    if args.profile or (missed and not args.no_diagnosis):
        print()
        if missed:
            print("target missed: a profile of decide and, for comparison, other ways to the same lookup")
        await diagnose(w, raw_db, draw, width)
    return result


async def diagnose(w: World, raw_db: sqlite3.Connection, draw: Callable[[int], list[Caller]], width: int) -> None:
    """cProfile of decide, CPU per call, and what-if pipelines (not the project's code path)."""
    n = 2000
    for label, mode in (("sequential", "seq"), (f"{width} in flight", "closed")):
        items = draw(n)
        profiler = cProfile.Profile()
        profiler.enable()
        await run(mode, items, lambda c: w.router.decide(c[0], DIALLED), width)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(10)
        print(f"cProfile of {n:,} decisions, {label}, by own time (the event loop's thread only; "
              "the queries run on aiosqlite's thread):")
        print("\n".join(line for line in out.getvalue().splitlines()[4:] if line.strip()))
        print()

    region = w.contacts.region
    reader: Any = getattr(w.store, "_reader_db", None)  # private: for the what-if only

    def assignment(rows: Sequence[Sequence[object]]) -> Assignment | None:
        if not rows:
            return None
        manager, vip, blacklisted, name, last = rows[0]
        return Assignment(manager, bool(vip), bool(blacklisted), name, last)  # type: ignore[arg-type]

    class LockFree:
        """Contacts.manager_for, but the query goes to the reader connection without Store's read lock."""

        async def manager_for(self, phone: str) -> Assignment | None:
            number = e164(phone, region)
            return None if number is None else assignment(await reader.execute_fetchall(LOOKUP, (number,)))

    class InLoop:
        """Contacts.manager_for, but the query runs on a read-only sqlite3 connection in the loop's thread."""

        async def manager_for(self, phone: str) -> Assignment | None:
            number = e164(phone, region)
            return None if number is None else assignment(raw_db.execute(LOOKUP, (number,)).fetchall())

    def router_over(contacts: object) -> Router:
        r = w.config.routing
        return Router(contacts=contacts, plans=w.plans, directory=w.directory, presence=w.presence,  # type: ignore[arg-type]
                      clock=lambda: NOW, normalise=lambda raw: e164(raw, region),
                      dial_string=lambda ext: r.dial_string.replace("{extension}", ext),
                      sticky_days=r.sticky_days, vip_fallback=r.vip_fallback)

    variants: list[tuple[str, Once]] = [
        ("Store.read (the project's path)", lambda c: w.store.read(LOOKUP, (c[1],))),
        ("decide (the project's path)", lambda c: w.router.decide(c[0], DIALLED)),
        ("decide, two e164() only (no lookup)", lambda c: _parse_twice(c[0], region)),
    ]
    if reader is not None:
        lock_free = router_over(LockFree())
        variants += [("what-if: the query without Store's read lock", lambda c: reader.execute_fetchall(LOOKUP, (c[1],))),
                     ("what-if: decide, queries without the read lock", lambda c: lock_free.decide(c[0], DIALLED))]
    in_loop = router_over(InLoop())
    variants.append(("what-if: decide, query in the loop's thread", lambda c: in_loop.decide(c[0], DIALLED)))
    rows: list[tuple[str, ...]] = [(
        "pipeline (2,000 calls per mode)", "seq p50 ms", "seq p99 ms", "seq CPU µs", f"{width} in flight p99 ms",
        "per s", f"bursts of {width} p99 ms")]
    pauses = GcPauses()
    for name, once in variants:
        cells = [name]
        for mode in ("seq", "closed", "burst"):
            items = draw(n)
            await run("seq", items[:200], once, 1)
            gc.collect()  # so that a full collection lands in no variant's timing by chance
            gc.callbacks.append(pauses.callback)
            cpu0 = time.process_time()
            try:
                samples, wall, _ = await run(mode, items, once, width)
            finally:
                cpu = time.process_time() - cpu0
                gc.callbacks.remove(pauses.callback)
            s = Series(name, samples)
            if mode == "seq":
                cells += [f"{s.pct(50) * 1000:.3f}", f"{s.pct(99) * 1000:.3f}", f"{cpu / len(samples) * 1e6:.0f}"]
            elif mode == "closed":
                cells += [f"{s.pct(99) * 1000:.3f}", f"{len(samples) / wall:,.0f}"]
            else:
                cells.append(f"{s.pct(99) * 1000:.3f}")
        rows.append(tuple(cells))
    print("what-if pipelines (not the project's code path; the same callers' mix). seq CPU µs: process CPU time")
    print("(every thread) per sequential call. A call that never yields (two e164(), query in the loop's")
    print(f"thread) runs the {width} 'in flight' one after another: their p99 there leaves out the wait, the")
    print("rate and the bursts (timed from the burst's start) do not.")
    _table(rows)
    print(f"garbage collector while timing them: {pauses.summary()}")


async def _parse_twice(raw: str, region: str) -> None:
    e164(e164(raw, region) or raw, region)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        if k == 0:
            print("  ".join("-" * width for width in widths))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.routing", description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=100_000, help="contacts in the store (default 100,000)")
    p.add_argument("--decisions", type=int, default=5000, help="timed calls per pipeline (default 5,000)")
    p.add_argument("--concurrency", type=int, default=50, help="decisions in flight at once (default 50)")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="arrivals per second of the open-loop run (default 1,000: 10x DESIGN.md's load)")
    p.add_argument("--known", type=float, default=0.8, help="share of callers in the store (default 0.8)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--seed", type=int, default=5, help="random seed (default 5)")
    p.add_argument("--profile", action="store_true", help="also print the diagnosis: cProfile, CPU per call, what-if pipelines (always when missed)")
    p.add_argument("--no-diagnosis", action="store_true",
                   help="never print the diagnosis, even when a target is missed (python -m bench uses it)")
    args = p.parse_args(argv)
    if args.contacts < 1 or args.decisions < 100 or args.concurrency < 1 or args.rate <= 0 \
            or not 0 <= args.known <= 1:
        p.error("need --contacts >= 1, --decisions >= 100, --concurrency >= 1, --rate > 0, 0 <= --known <= 1")
    return args


def figures(args: argparse.Namespace) -> list[Figure]:
    """Run the benchmark, print its detail, return its figures."""
    return asyncio.run(run_all(args))


def main(argv: Sequence[str] | None = None) -> None:
    run_alone(figures, parse_args(argv))


if __name__ == "__main__":
    main()
