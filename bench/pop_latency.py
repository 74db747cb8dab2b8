"""Pop latency and memory: N websocket agents connected to the gateway, calls
set up at R per second through the real AMI path, against a bare aiohttp
websocket server fed the same AMI stream, in the same run.

Run from the repository root: ``.venv/bin/python -m bench.pop_latency
[--agents N] [--rate R] [--seconds S]``. It prints figures and ratios; it never
asserts on time (see bench/README.md, "Pop latency", for what each figure means).

The server under test runs as a subprocess (``python -m gateway run --config
<generated toml>``), so its RSS is its own and the load generator does not
share its event loop. This process hosts the in-process AMI server
(``connectors.ami.server.AmiServer``) and the websocket clients. Calls come
from ``connectors.ami.scenarios.CallFactory`` and are sent with
``AmiServer.send_event``; the messages before a call's first ring are sent
back to back, the rest with the scenario's own delays, and the first ring of
call k is sent at start + k / R.

Latency of one pop: ``t1 - t0``, both ``time.perf_counter()`` in this process.
``t0`` is taken when ``send_event`` of the ``Newstate ... ChannelStateDesc:
Ringing`` message of an agent's leg returns: the server's per-client writer
task has run by then, so the bytes were handed to the socket (``transport.write``);
the time ``send_event`` took is printed as t0's uncertainty. ``t1`` is taken
when the agent's ``ws.receive()`` returns the ``pop`` frame whose pop_id is
``<Linkedid>/<extension>``.

The baseline is a bare aiohttp websocket server (this module with
``--serve-baseline``, also a subprocess) logged in to the same kind of AMI
server and sent the same calls: it splits the stream on CRLF CRLF and, for each
ringing Newstate of a connected agent's phone, sends that one client a frame of
the gateway's own pop payload (captured in the gateway run, pop_id and call_id
replaced) with ``await ws.send_str``. Nothing else: no tracker, no card, no
per-connection queue, no updates or withdraws.

Before figures are trusted, every phase is checked: each ring got exactly one
pop, at its own agent only; no frame reached another agent; no client was
disconnected; in the gateway run each pop's call_id, caller and dialled number
match the call that rang. Violations are counted and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
from aiohttp import web

from bench.figures import CheckFailed, Figure, Target, render, table
from connectors.ami.codec import AmiMessage
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import AmiServer
from gateway.auth import Signer, hash_password

REPO = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 50.0  # issue 4 / DESIGN.md, on the 2-core machine
TARGET_KIB_PER_AGENT = 64.0
FIRST_EXTENSION = 2000
DIDS = tuple(f"+7495000000{i}" for i in range(1, 5))
CALLER_NAMES = ("Иван Петров", "Ольга Кузнецова", "ООО Ромашка", "Anna Smith", "Пётр Сидоров-Ковалёв")
CALLER_POOL = 20_000  # distinct caller numbers: some call again, so some cards get history
AMI_USER = "gateway"
AMI_SECRET_ENV = "CTI_BENCH_AMI_SECRET"
HTTP_SECRET_ENV = "CTI_BENCH_HTTP_SECRET"
CLIENTS_PER_SESSION = 250  # aiohttp ClientSessions, each holding this many websockets
CONNECT_CONCURRENCY = 64  # handshakes in flight (the server's listen backlog is 128)
BUSY_MACHINE = 0.15  # other processes' share of a core during a load above which the figures are flagged
DRAIN_TIMEOUT = 5.0
PING_PERIOD = 25.0  # the operator page's keepalive (docs/websocket-protocol.md)
PING = json.dumps({"type": "ping"})  # after the last call: seconds to wait for pops still on their way


# -- calls ---------------------------------------------------------------------


def ringing_extension(msg: AmiMessage) -> str | None:
    """The extension whose phone this message says is ringing, else None."""
    if msg.get("Event") != "Newstate" or msg.get("ChannelStateDesc") != "Ringing":
        return None
    channel = msg.get("Channel")
    if not isinstance(channel, str) or not channel.startswith("PJSIP/"):
        return None
    resource_name = channel[len("PJSIP/"):channel.rfind("-")]
    return resource_name if resource_name.isdigit() else None


@dataclass(frozen=True)
class Ring:
    """One agent's phone starting to ring, as sent."""

    pop_id: str
    call_id: str
    extension: str
    caller: str
    did: str
    call: int  # index of the call in the schedule
    before: float  # perf_counter before send_event
    t0: float  # perf_counter when send_event returned
    measured: bool  # False during the warm-up


class CallDriver:
    """Builds calls with CallFactory and sends them at ``rate`` set-ups per second.

    The same seed gives the same calls (agents, callers, numbers, durations) in
    the gateway run and the baseline run. Call k's scenario (about 1 ms of
    work) is built at call k's own start, never between one of its rings and
    that ring's pop; it can delay another call's pop in flight, alike in both
    runs.
    """

    def __init__(self, server: AmiServer, agents: int, rate: float, seed: int) -> None:
        self.server = server
        self.agents = agents
        self.rate = rate
        self.factory = CallFactory(rng=random.Random(seed))
        self.rng = random.Random(seed + 1)
        self.rings: list[Ring] = []
        self.kinds: Counter[str] = Counter()
        self.calls = 0

    def _build(self) -> tuple[Scenario, str, str, str]:
        rng = self.rng
        caller = f"+7916{rng.randrange(CALLER_POOL):07d}"
        name = rng.choice(CALLER_NAMES)
        did = rng.choice(DIDS)
        ring, talk = rng.uniform(0.5, 2.5), rng.uniform(0.5, 2.5)
        exts = [str(FIRST_EXTENSION + i) for i in rng.sample(range(self.agents), min(self.agents, 3))]
        roll = rng.random()
        if roll < 0.5:
            kind = "direct_answered"
            scenario = self.factory.direct_answered(caller, name, did, agent=exts[0], ring=ring, talk=talk)
        elif roll < 0.85 and len(exts) >= 2:
            group = exts[: rng.choice((2, 3))] if len(exts) == 3 else exts
            kind = f"ring_group x{len(group)}"
            scenario = self.factory.ring_group(caller, name, did, agents=group, answering=rng.choice(group),
                                               ring=ring, talk=talk)
        else:
            kind = "abandoned_ringing"
            scenario = self.factory.abandoned_ringing(caller, name, did, agent=exts[0], ring=ring)
        return scenario, caller, did, kind

    async def _play(self, index: int, scenario: Scenario, caller: str, did: str, measured: bool) -> None:
        ringing = False
        for delay, msg in scenario:
            # Up to the first ring the dialplan's few milliseconds are dropped;
            # from it on the scenario's own delays (ring and talk time) hold.
            if ringing and delay > 0:
                await asyncio.sleep(delay)
            extension = ringing_extension(msg)
            if extension is None:
                await self.server.send_event(msg)
                continue
            ringing = True
            before = time.perf_counter()
            await self.server.send_event(msg)
            t0 = time.perf_counter()
            call_id = str(msg["Linkedid"])
            self.rings.append(Ring(f"{call_id}/{extension}", call_id, extension, caller, did, index, before, t0,
                                   measured))

    async def run(self, count: int, *, measured_from: int = 0,
                  at_measured_start: Callable[[], None] | None = None,
                  after_last_start: Callable[[], None] | None = None) -> None:
        """Start ``count`` calls at the rate; return once every one has ended."""
        tasks: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        start = time.perf_counter() + 0.05
        for k in range(count):
            wait = start + k / self.rate - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if k == measured_from and at_measured_start is not None:
                at_measured_start()
            scenario, caller, did, kind = self._build()
            if k >= measured_from:
                self.kinds[kind] += 1
            task = asyncio.create_task(self._play(self.calls, scenario, caller, did, k >= measured_from))
            self.calls += 1
            tasks.add(task)
            task.add_done_callback(done)
        if after_last_start is not None:
            after_last_start()
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        if failures:
            raise RuntimeError(f"{len(failures)} calls failed to play: {failures[0]!r}")


# -- agents ----------------------------------------------------------------------


@dataclass
class Inbox:
    """What every agent received, with arrival times."""

    arrivals: dict[str, list[float]] = field(default_factory=dict)  # pop_id -> t1 of each pop frame
    pop_frames: dict[str, dict[str, Any]] = field(default_factory=dict)  # pop_id -> its first pop frame
    frames: Counter[str] = field(default_factory=Counter)
    foreign: list[str] = field(default_factory=list)
    unreadable: int = 0
    disconnected: list[str] = field(default_factory=list)
    closing: bool = False

    def take(self, extension: str, data: str, t1: float) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.unreadable += 1
            return
        kind = str(frame.get("type"))
        self.frames[kind] += 1
        pop_id = frame.get("pop_id")
        if pop_id is None:
            return
        if not isinstance(pop_id, str) or pop_id.rpartition("/")[2] != extension:
            self.foreign.append(f"agent {extension} got a {kind} for {pop_id!r}")
            return
        if kind == "pop":
            self.arrivals.setdefault(pop_id, []).append(t1)
            self.pop_frames.setdefault(pop_id, frame)


@dataclass
class Agents:
    sessions: list[aiohttp.ClientSession]
    sockets: list[aiohttp.ClientWebSocketResponse]
    readers: list[asyncio.Task[None]]
    pinger: asyncio.Task[None]

    async def close(self, inbox: Inbox) -> None:
        inbox.closing = True
        self.pinger.cancel()
        await asyncio.gather(self.pinger, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for session in self.sessions:
            await session.close()


async def _read_frames(extension: str, ws: aiohttp.ClientWebSocketResponse, inbox: Inbox) -> None:
    while True:
        msg = await ws.receive()
        t1 = time.perf_counter()
        if msg.type is aiohttp.WSMsgType.TEXT:
            inbox.take(extension, msg.data, t1)
        elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                          aiohttp.WSMsgType.ERROR):
            if not inbox.closing:
                inbox.disconnected.append(f"agent {extension}: {msg.type.name}, close code {ws.close_code}")
            return


async def _ping(sockets: list[aiohttp.ClientWebSocketResponse]) -> None:
    """Each agent sends ``{"type": "ping"}`` every PING_PERIOD seconds, as the
    operator page does; the agents take turns, so the pings are spread evenly.

    The server's 30 s websocket heartbeat is reset by any frame it receives, so
    it never fires. Without these pings it would ping all agents within the
    same second, 30 s after they connected (they connect within a second or
    two), and that burst would land in the middle of the measurement.
    """
    step = PING_PERIOD / len(sockets)
    start = time.perf_counter()
    for i in itertools.count():
        wait = start + i * step - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        ws = sockets[i % len(sockets)]
        if not ws.closed:
            await ws.send_str(PING)


async def connect_agents(url: str, extensions: list[str], tokens: list[str], inbox: Inbox) -> Agents:
    """Open one websocket per agent, authenticate, wait for ``ready``, start its reader."""
    sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                for _ in range(math.ceil(len(extensions) / CLIENTS_PER_SESSION))]
    sockets: list[aiohttp.ClientWebSocketResponse | None] = [None] * len(extensions)
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(i: int) -> None:
        async with gate:
            ws = await sessions[i // CLIENTS_PER_SESSION].ws_connect(url, compress=0, autoping=True)
            sockets[i] = ws
            await ws.send_str(json.dumps({"type": "auth", "token": tokens[i]}))
            msg = await ws.receive(timeout=30)
            frame = json.loads(msg.data) if msg.type is aiohttp.WSMsgType.TEXT else {}
            if frame.get("type") != "ready":
                raise RuntimeError(f"agent {extensions[i]}: expected ready, got {msg.type.name} {msg.data!r}")

    try:
        await asyncio.gather(*(one(i) for i in range(len(extensions))))
    except BaseException:
        await asyncio.gather(*(ws.close() for ws in sockets if ws is not None), return_exceptions=True)
        for session in sessions:
            await session.close()
        raise
    opened = [ws for ws in sockets if ws is not None]
    readers = [asyncio.create_task(_read_frames(ext, ws, inbox)) for ext, ws in zip(extensions, opened)]
    return Agents(sessions, opened, readers, asyncio.create_task(_ping(opened)))


# -- the server under test ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, *, ami_port: int, http_port: int, store: Path, agents: int, password_hash: str) -> None:
    lines = [
        "[ami]", 'host = "127.0.0.1"', f"port = {ami_port}", f'username = "{AMI_USER}"',
        f'secret_env = "{AMI_SECRET_ENV}"', "",
        "[http]", 'host = "127.0.0.1"', f"port = {http_port}", f'secret_env = "{HTTP_SECRET_ENV}"',
        'allowed_origins = ["http://crm.example.com"]', "",
        "[store]", f"path = {json.dumps(str(store))}", "",
    ]
    for i in range(agents):
        ext = FIRST_EXTENSION + i
        lines += ["[[users]]", f'login = "agent{ext}"', f'name = "Agent {ext}"', 'role = "agent"', 'team = "sales"',
                  f'password_hash = "{password_hash}"', f'extensions = ["{ext}"]', ""]
    path.write_text("\n".join(lines), encoding="utf-8")


class LoopLag:
    """How late this process's event loop wakes a 5 ms timer: the load generator's own stalls."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def tick() -> None:
            while True:
                due = time.perf_counter() + 0.005
                await asyncio.sleep(0.005)
                self.lags_ms.append((time.perf_counter() - due) * 1000)

        self._task = asyncio.create_task(tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Sampler:
    """The server process's RSS, polled for its peak."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> int:
        value = int(self.process.memory_info().rss)
        self.peak = max(self.peak, value)
        return value

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        async def poll() -> None:
            while True:
                self.rss()
                await asyncio.sleep(0.25)

        self._task = asyncio.create_task(poll())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine was busy (all cores) and had stolen, so far."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
    return float(busy), float(getattr(t, "steal", 0.0))


async def wait_listening(port: int, proc: asyncio.subprocess.Process, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}; its log:\n{_tail(log_path)}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s; log:\n{_tail(log_path)}")
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def scrape_histogram(url: str) -> dict[str, float]:
    """The gateway's own cti_hub_pop_latency_seconds buckets (le -> cumulative count), plus sum."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    buckets: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cti_hub_pop_latency_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[le] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("cti_hub_pop_latency_seconds_sum "):
            buckets["sum"] = float(line.rsplit(" ", 1)[1])
    return buckets


# -- one phase: the gateway or the baseline ----------------------------------------


@dataclass
class Phase:
    name: str
    pid: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    negative: int = 0
    rss_idle: int = 0
    rss_agents: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    server_cpu: float = 0.0
    bench_cpu: float = 0.0
    other_cpu: float = 0.0  # every other process on the machine, during the load
    steal_cpu: float = 0.0  # stolen by the hypervisor
    load_wall: float = 0.0
    calls_measured: int = 0
    achieved_rate: float = 0.0
    connect_seconds: float = 0.0
    frames: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    internal: dict[str, float] = field(default_factory=dict)  # gateway only: histogram delta
    loop_lag_ms: list[float] = field(default_factory=list)  # the bench's own loop, during the load
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t0 since load start, latency, send)
    template: dict[str, Any] | None = None

    def violation(self, kind: str, example: str) -> None:
        self.violations[kind] += 1
        if len(self.examples) < 10:
            self.examples.append(example)


async def run_phase(name: str, args: argparse.Namespace, workdir: Path, password: str,
                    template_path: Path | None) -> Phase:
    phase = Phase(name)
    ami_secret = secrets.token_urlsafe(16)
    http_secret = secrets.token_urlsafe(32)  # 32 random bytes
    env = {**os.environ, AMI_SECRET_ENV: ami_secret, HTTP_SECRET_ENV: http_secret}
    http_port = free_port()
    extensions = [str(FIRST_EXTENSION + i) for i in range(args.agents)]
    log_path = workdir / f"{name}.log"
    async with AmiServer(username=AMI_USER, secret=ami_secret) as ami:
        if name == "gateway":
            config = workdir / "gateway.toml"
            write_config(config, ami_port=ami.port, http_port=http_port, store=workdir / "gateway.sqlite3",
                         agents=args.agents, password_hash=password)
            command = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
            signer = Signer(http_secret.encode(), time.time)  # what `cti-gateway token` does
            tokens = [signer.issue("ws", f"agent{ext}", 3600)[0] for ext in extensions]
        else:
            assert template_path is not None
            command = [sys.executable, "-m", "bench.pop_latency", "--serve-baseline", "--ami-port", str(ami.port),
                       "--port", str(http_port), "--template", str(template_path)]
            tokens = list(extensions)  # the bare server takes the extension as its "token"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(*command, cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=log_file, stderr=log_file)
        phase.pid = proc.pid
        sampler = Sampler(psutil.Process(proc.pid))
        agents: Agents | None = None
        inbox = Inbox()
        try:
            await asyncio.wait_for(ami.wait_for_login(30), 35)
            await wait_listening(http_port, proc, log_path)
            sampler.start()
            driver = CallDriver(ami, args.agents, args.rate, args.seed)

            # Warm-up with nobody connected: imports, phone number metadata, the store's first writes.
            await driver.run(max(20, int(args.rate)), measured_from=10**9)
            await asyncio.sleep(1.0)
            phase.rss_idle = sampler.rss()

            started = time.perf_counter()
            agents = await connect_agents(f"ws://127.0.0.1:{http_port}/ws", extensions, tokens, inbox)
            phase.connect_seconds = time.perf_counter() - started
            await asyncio.sleep(1.0)
            phase.rss_agents = sampler.rss()
            if inbox.arrivals:
                phase.violation("pops before any call rang", f"{len(inbox.arrivals)} pops at connect")

            metrics_url = f"http://127.0.0.1:{http_port}/metrics"
            scrapes: list[asyncio.Task[dict[str, float]]] = []
            warm = int(args.warmup * args.rate)
            total = warm + int(args.seconds * args.rate)
            first_ring = len(driver.rings)
            # The load generator's own garbage collector is off during the load: with
            # hundreds of live scenarios its passes took 20-200 ms, which would be
            # measured as pop latency. The server's GC runs as usual.
            gc.collect()
            gc.freeze()
            gc.disable()
            cpu0, bench0, wall0, machine0 = sampler.cpu(), time.process_time(), time.perf_counter(), _machine_cpu()
            load_end: list[float] = []

            def measured_start() -> None:
                if name == "gateway":
                    scrapes.append(asyncio.create_task(scrape_histogram(metrics_url)))

            def load_over() -> None:
                load_end[:] = [sampler.cpu(), time.process_time(), time.perf_counter(), *_machine_cpu()]

            spy = await _start_py_spy(args, proc.pid, workdir) if name == "gateway" else None
            lag = LoopLag()
            lag.start()
            await driver.run(total, measured_from=warm, at_measured_start=measured_start, after_last_start=load_over)
            await lag.stop()
            phase.loop_lag_ms = lag.lags_ms
            phase.server_cpu = load_end[0] - cpu0
            phase.bench_cpu = load_end[1] - bench0
            phase.load_wall = load_end[2] - wall0
            phase.other_cpu = load_end[3] - machine0[0] - phase.server_cpu - phase.bench_cpu
            phase.steal_cpu = load_end[4] - machine0[1]
            rings = driver.rings[first_ring:]
            expected = {ring.pop_id for ring in rings}
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while not expected.issubset(inbox.arrivals) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # a duplicate would come right behind
            if spy is not None:
                await spy.wait()
            phase.rss_after = sampler.rss()
            if scrapes:
                before_hist = await scrapes[0]
                after_hist = await scrape_histogram(metrics_url)
                phase.internal = {le: after_hist.get(le, 0.0) - before_hist.get(le, 0.0) for le in after_hist}
            phase.kinds = driver.kinds
            check(phase, rings, inbox, check_cards=name == "gateway", origin=wall0)
            if inbox.pop_frames:
                phase.template = next(iter(inbox.pop_frames.values()))
        except BaseException:
            print(f"{name}: failed; the server's log ({log_path}):\n{_tail(log_path)}", file=sys.stderr)
            raise
        finally:
            gc.enable()
            gc.unfreeze()
            if agents is not None:
                await agents.close(inbox)
            await sampler.stop()
            phase.rss_peak = sampler.peak
            await stop_process(proc)
    return phase


def check(phase: Phase, rings: list[Ring], inbox: Inbox, *, check_cards: bool, origin: float) -> None:
    """Exactly one pop per ring, at its own agent only; figures from the measured rings."""
    by_pop = {ring.pop_id: ring for ring in rings}
    if len(by_pop) != len(rings):
        phase.violation("a phone rang twice in one call", "the schedule rang one (call, agent) twice")
    for ring in rings:
        arrivals = inbox.arrivals.get(ring.pop_id, [])
        if not arrivals:
            phase.violation("ringing agent got no pop", f"no pop {ring.pop_id}")
            continue
        if len(arrivals) > 1:
            phase.violation("duplicate pop", f"{len(arrivals)} pops {ring.pop_id}")
        if check_cards:
            frame = inbox.pop_frames[ring.pop_id]
            card = frame.get("card") or {}
            caller = (card.get("caller") or {}).get("raw")
            dialled = (card.get("dialled") or {}).get("e164")
            if frame.get("call_id") != ring.call_id or caller != ring.caller or dialled != ring.did:
                phase.violation("pop for the wrong call", f"{ring.pop_id}: call {frame.get('call_id')}, "
                                f"caller {caller}, dialled {dialled}; rang for {ring.caller} -> {ring.did}")
        if ring.measured:
            latency = (arrivals[0] - ring.t0) * 1000
            phase.latencies_ms.append(latency)
            phase.send_ms.append((ring.t0 - ring.before) * 1000)
            phase.samples.append((ring.t0 - origin, latency, (ring.t0 - ring.before) * 1000))
            phase.negative += latency < 0
    for pop_id in inbox.arrivals:
        if pop_id not in by_pop:
            phase.violation("pop nobody rang for", f"unexpected pop {pop_id}")
    for text in inbox.foreign:
        phase.violation("frame for another agent", text)
    for text in inbox.disconnected:
        phase.violation("agent disconnected", text)
    if inbox.unreadable:
        phase.violations["unreadable frame"] += inbox.unreadable
    phase.frames = inbox.frames
    measured = [ring for ring in rings if ring.measured]
    firsts: dict[int, float] = {}
    for ring in measured:
        firsts.setdefault(ring.call, ring.t0)
    phase.calls_measured = len(firsts)
    if len(firsts) > 1:
        span = max(firsts.values()) - min(firsts.values())
        phase.achieved_rate = (len(firsts) - 1) / span if span > 0 else 0.0


async def _start_py_spy(args: argparse.Namespace, pid: int, workdir: Path) -> asyncio.subprocess.Process | None:
    if not args.py_spy:
        return None
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("--py-spy: py-spy not found (.venv/bin/pip install py-spy)", file=sys.stderr)
        return None
    seconds = int(args.warmup + args.seconds)
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250", "--nonblocking",
        "--format", "speedscope" if str(args.py_spy).endswith(".json") else "flamegraph",
        "--output", str(args.py_spy), stdout=asyncio.subprocess.DEVNULL, stderr=(workdir / "py-spy.log").open("wb"),
    )


# -- the baseline server ------------------------------------------------------------


async def serve_baseline(ami_port: int, port: int, template_path: Path) -> None:
    """A bare aiohttp websocket server: pop-sized frames to the agent whose phone rings.

    Its input is the same AMI stream the gateway reads; it keeps only ringing
    Newstates (split on CRLF CRLF, two substring tests, the two headers it
    needs) and sends the gateway's pop payload, with this call's ids, to that
    agent's one websocket.
    """
    template: dict[str, Any] = json.loads(template_path.read_text(encoding="utf-8"))
    clients: dict[str, web.WebSocketResponse] = {}

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=4096, compress=False)  # as the gateway's /ws
        await ws.prepare(request)
        first = await ws.receive(timeout=10)
        extension = str(json.loads(first.data)["token"])
        clients[extension] = ws
        await ws.send_str(json.dumps({"type": "ready", "agent": {"login": f"agent{extension}",
                                                                 "extensions": [extension]}}))
        try:
            async for message in ws:  # answers pings as the gateway does
                if message.type is web.WSMsgType.TEXT and json.loads(message.data).get("type") == "ping":
                    await ws.send_str('{"type":"pong"}')
        finally:
            if clients.get(extension) is ws:
                del clients[extension]
        return ws

    app = web.Application()
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    reader, writer = await asyncio.open_connection("127.0.0.1", ami_port)
    await reader.readline()  # banner
    writer.write(f"Action: Login\r\nUsername: {AMI_USER}\r\nSecret: {os.environ[AMI_SECRET_ENV]}\r\n"
                 f"Events: on\r\n\r\n".encode())
    buffer = b""
    while data := await reader.read(64 * 1024):
        buffer += data
        *messages, buffer = buffer.split(b"\r\n\r\n")
        for message in messages:
            if not message.startswith(b"Event: Newstate\r\n") or b"\r\nChannelStateDesc: Ringing\r\n" not in message:
                continue
            headers = dict(line.split(b": ", 1) for line in message.split(b"\r\n") if b": " in line)
            channel = headers[b"Channel"].decode()
            call_id = headers[b"Linkedid"].decode()
            extension = channel[len("PJSIP/"):channel.rfind("-")]
            ws = clients.get(extension)
            if ws is None:
                continue
            frame = {**template, "pop_id": f"{call_id}/{extension}", "call_id": call_id}
            await ws.send_str(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))
    await runner.cleanup()


# -- report -------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _mib(value: float) -> str:
    return f"{value / 2**20:.1f}"


def per_agent_kib(phase: Phase, agents: int) -> float:
    return (phase.rss_agents - phase.rss_idle) / agents / 1024


def _internal_summary(internal: dict[str, float]) -> str:
    """The gateway's own histogram (AMI message parsed -> pop frame queued), as shares per bucket."""
    count = internal.get("+Inf", 0.0)
    if count <= 0:
        return "no pops counted"
    parts = []
    for le in ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05"):
        if le in internal:
            parts.append(f"<= {float(le) * 1000:g} ms {internal[le] / count:.1%}")
    return f"{count:,.0f} pops, mean {internal.get('sum', 0.0) / count * 1000:.2f} ms; " + ", ".join(parts)


def figures_of(gw: Phase, base: Phase, agents: int) -> list[Figure]:
    base_name = "bare aiohttp"
    busy = max((p.other_cpu / p.load_wall for p in (gw, base) if p.load_wall), default=0.0)
    noisy = (f" Other processes used up to {busy:.0%} of a core during the loads; the tail follows them "
             "(bench/README.md, 'Noise').") if busy > BUSY_MACHINE else ""
    stall = max(gw.loop_lag_ms, default=0.0)
    inside = gw.internal.get("0.05", 0.0) / gw.internal["+Inf"] if gw.internal.get("+Inf") else math.nan
    if stall > TARGET_P99_MS:
        noisy += (f" The load generator's own event loop stalled up to {stall:,.0f} ms, which counts as latency; "
                  f"the gateway's own histogram (AMI message parsed -> frame queued) had {inside:.1%} of pops "
                  "within 50 ms.")
    return [
        Figure("pop latency p50", pct(gw.latencies_ms, 50), "ms", pct(base.latencies_ms, 50), base_name),
        Figure("pop latency p99", pct(gw.latencies_ms, 99), "ms", pct(base.latencies_ms, 99), base_name,
               target=Target("<", TARGET_P99_MS, "issue 4, DESIGN.md"),
               note="The target holds on a quiet machine (5-15 ms)." + noisy),
        Figure("pop latency max", max(gw.latencies_ms, default=math.nan), "ms",
               max(base.latencies_ms, default=math.nan), base_name),
        Figure(f"server RSS with {agents:,} agents", gw.rss_agents / 2**20, "MiB", base.rss_agents / 2**20,
               base_name),
        Figure("server RSS per connected agent", per_agent_kib(gw, agents), "KiB", per_agent_kib(base, agents),
               base_name, target=Target("<", TARGET_KIB_PER_AGENT, "issue 4")),
        Figure("pop correctness violations", sum(gw.violations.values()), "", sum(base.violations.values()),
               base_name, ratio=math.nan, target=Target("==", 0), is_check=True),
    ]


def report(gw: Phase, base: Phase, args: argparse.Namespace, total_seconds: float, load_average: float) -> None:
    print("Pop latency: AMI ringing event out of the fake PBX -> pop frame at the agent's websocket")
    print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}, {platform.python_implementation()} "
          f"{platform.python_version()}, aiohttp {aiohttp.__version__}; load average {load_average:.2f} "
          "before the run")
    mix = ", ".join(f"{kind} {count}" for kind, count in sorted(gw.kinds.items()))
    print(f"load: {args.agents:,} agents connected, {args.rate:g} call set-ups/s for {args.seconds:g} s measured "
          f"after {args.warmup:g} s of warm-up; seed {args.seed}; calls measured: {mix}")
    print("websocket compression off on both servers; t0 = AmiServer.send_event returned (bytes handed to the "
          "socket), t1 = the client's ws.receive() returned the pop\n")

    rows: list[list[str]] = []

    def row(label: str, fn: Callable[[Phase], str]) -> None:
        rows.append([label, fn(gw), fn(base)])

    row("server pid", lambda p: str(p.pid))
    row("agents connected in", lambda p: f"{p.connect_seconds:.1f} s")
    row("calls measured / achieved set-ups/s", lambda p: f"{p.calls_measured:,} / {p.achieved_rate:.1f}")
    row("pops measured", lambda p: f"{len(p.latencies_ms):,}")
    for q in (50.0, 90.0, 99.0, 99.9):
        rows.append([f"latency p{q:g}, ms", f"{pct(gw.latencies_ms, q):.2f}", f"{pct(base.latencies_ms, q):.2f}"])
    row("latency max, ms", lambda p: f"{max(p.latencies_ms, default=float('nan')):.2f}")
    row("latency mean, ms", lambda p: f"{sum(p.latencies_ms) / max(1, len(p.latencies_ms)):.2f}")
    row("t0 uncertainty: send_event p50 / p99 / max, ms",
        lambda p: f"{pct(p.send_ms, 50):.2f} / {pct(p.send_ms, 99):.2f} / {max(p.send_ms, default=0):.2f}")
    row("pops before t0 (negative latency)", lambda p: str(p.negative))
    row("bench loop lag p50 / p99 / max, ms",
        lambda p: f"{pct(p.loop_lag_ms, 50):.2f} / {pct(p.loop_lag_ms, 99):.2f} / {max(p.loop_lag_ms, default=0):.2f}")
    row("RSS 0 agents / N agents, MiB", lambda p: f"{_mib(p.rss_idle)} / {_mib(p.rss_agents)}")
    row("RSS after load / peak, MiB", lambda p: f"{_mib(p.rss_after)} / {_mib(p.rss_peak)}")
    row("RSS per agent, idle / after load, KiB",
        lambda p: f"{per_agent_kib(p, args.agents):.1f} / {(p.rss_after - p.rss_idle) / args.agents / 1024:.1f}")
    row("server CPU during load", lambda p: f"{p.server_cpu / p.load_wall:.0%} of a core" if p.load_wall else "-")
    row("bench CPU during load", lambda p: f"{p.bench_cpu / p.load_wall:.0%} of a core" if p.load_wall else "-")
    row("other processes' CPU / steal during load",
        lambda p: f"{max(0.0, p.other_cpu) / p.load_wall:.0%} / {p.steal_cpu / p.load_wall:.0%} of a core"
        if p.load_wall else "-")
    row("frames received", lambda p: ", ".join(f"{k} {v:,}" for k, v in sorted(p.frames.items())))
    row("correctness violations", lambda p: str(sum(p.violations.values())))
    print(table(rows, ["", "gateway", "bare aiohttp baseline"]))
    busy = [p.name for p in (gw, base) if p.load_wall and p.other_cpu / p.load_wall > BUSY_MACHINE]
    if busy:
        print(f"WARNING: other processes used more than {BUSY_MACHINE:.0%} of a core during the {' and the '.join(busy)} "
              "load: the tails measure them too; run again on a quiet machine")
    print(f"gateway's own histogram (AMI message parsed -> frame queued): {_internal_summary(gw.internal)}")
    for phase in (gw, base):
        if phase.violations:
            print(f"\n{phase.name}: VIOLATIONS: " + ", ".join(f"{k} {v}" for k, v in phase.violations.items()))
            for example in phase.examples:
                print(f"  {example}")
    print()

    print(render(figures_of(gw, base, args.agents)))
    print("\nRSS per connected agent = (RSS with N agents connected and idle - RSS with 0 agents, both after "
          "a warm-up) / N.")
    print(f"total time {total_seconds:.1f} s")


# -- main -----------------------------------------------------------------------------


def raise_fd_limit(agents: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * agents + 512  # our clients, plus the server's sockets (the subprocess inherits the limit)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            print(f"warning: open files limited to {new}; {agents} agents need about {wanted}", file=sys.stderr)


async def measure(args: argparse.Namespace) -> tuple[Phase, Phase]:
    """The gateway phase, then the baseline phase fed the gateway's own pop payload."""
    raise_fd_limit(args.agents)
    loop = asyncio.get_running_loop()
    password = await loop.run_in_executor(None, hash_password, secrets.token_urlsafe(12))
    with tempfile.TemporaryDirectory(prefix="pop-bench-") as tmp:
        workdir = Path(tmp)
        gw = await run_phase("gateway", args, workdir, password, None)
        if gw.template is None:
            raise CheckFailed("the gateway sent no pop at all: nothing to compare")
        template_path = workdir / "pop-template.json"
        template_path.write_text(json.dumps(gw.template, ensure_ascii=False), encoding="utf-8")
        base = await run_phase("baseline", args, workdir, password, template_path)
    return gw, base


def figures(args: argparse.Namespace) -> list[Figure]:
    """Run the benchmark, print its detail, return its figures."""
    started = time.perf_counter()
    load_average = os.getloadavg()[0]
    gw, base = asyncio.run(measure(args))
    report(gw, base, args, time.perf_counter() - started, load_average)
    if args.dump is not None:
        with args.dump.open("w", encoding="utf-8") as out:
            out.write("server,t0_s,latency_ms,send_event_ms\n")
            for phase in (gw, base):
                out.writelines(f"{phase.name},{t:.4f},{lat:.3f},{send:.3f}\n" for t, lat, send in phase.samples)
    return figures_of(gw, base, args.agents)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pop_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=2000, help="websocket agents connected (default 2,000)")
    parser.add_argument("--rate", type=float, default=100.0, help="call set-ups per second (default 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of measured load (default 30)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="the calls' random seed (same in both runs)")
    parser.add_argument("--py-spy", type=Path, default=None, metavar="FILE",
                        help="record the gateway with py-spy during the load (FILE.svg flame graph or "
                             "FILE.json speedscope)")
    parser.add_argument("--dump", type=Path, default=None, metavar="CSV",
                        help="write every measured pop (server, t0 in s since the load began, latency, "
                             "send_event time) to CSV")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ami-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--template", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.serve_baseline and (args.agents < 3 or args.rate <= 0 or args.seconds <= 0 or args.warmup < 0):
        parser.error("--agents must be >= 3, --rate and --seconds > 0, --warmup >= 0")
    return args


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_baseline:
        asyncio.run(serve_baseline(args.ami_port, args.port, args.template))
        return
    try:
        result = figures(args)
    except CheckFailed as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    sys.exit(1 if any(f.is_check and f.met is False for f in result) else 0)


if __name__ == "__main__":
    main()
