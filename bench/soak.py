"""Soak: the gateway under half the design load for minutes, watched for
leaks and drift. Not a CI test; it prints, it never asserts on time.

Run from the repository root: ``.venv/bin/python -m bench.soak [--minutes 10]
[--agents 1000] [--rate 50] [--every 30]``.

Half the design load: DESIGN.md budgets 100 call set-ups per second with
2,000 agents connected, so the soak runs 50 set-ups per second with 1,000
agents (each agent rings as often as at the design load). The set-up is the
pop benchmark's (bench/pop_latency.py): ``python -m gateway run`` as a
subprocess with a generated config and a store on a temporary file, the
in-process AMI server sending ``CallFactory`` calls (direct, ring groups,
abandoned; ring and talk 0.5-2.5 s), and one websocket client per agent.

Every ``--every`` seconds it prints one line: the gateway's RSS, open file
descriptors, the store's WAL and database size, its CPU; and for the rings
sent since the previous line (each given 5 s to arrive) the pop latency p50,
p99 and max from the AMI bytes sent to the frame received, rings whose pop
did not arrive in time, the gateway's own pop histogram p99 (an upper bucket
bound), and this process's event loop lag (its stalls show in the latency).
At the end every ring is checked as in the pop benchmark: one pop each, at
its own agent only, with the right call, caller and number.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from bench.figures import machine
from bench.pop_latency import (
    AMI_SECRET_ENV, AMI_USER, FIRST_EXTENSION, HTTP_SECRET_ENV, REPO, Agents, CallDriver, Inbox, LoopLag, Phase,
    Sampler, check, connect_agents, free_port, pct, raise_fd_limit, scrape_histogram, stop_process, wait_listening,
    write_config,
)
from connectors.ami.server import AmiServer
from gateway.auth import Signer, hash_password

GRACE = 5.0  # seconds a ring's pop has to arrive before the window counts it late
HEADER = ["t s", "calls", "pops", "p50 ms", "p99 ms", "max ms", "late", "gw hist p99", "RSS MiB", "fds",
          "WAL MiB", "DB MiB", "gw CPU", "others CPU", "bench lag p99"]


@dataclass
class Window:
    """What the soak saw between two report lines."""

    seconds: float
    calls: int
    latencies_ms: list[float]
    late: int
    hist_p99: str
    rss: int
    fds: int
    wal: int
    db: int
    gw_cpu: float  # share of a core
    other_cpu: float
    lag_p99: float

    def cells(self) -> list[str]:
        lat = self.latencies_ms
        return [f"{self.seconds:.0f}", f"{self.calls:,}", f"{len(lat):,}", f"{pct(lat, 50):.2f}",
                f"{pct(lat, 99):.2f}", f"{max(lat, default=math.nan):.1f}", str(self.late), self.hist_p99,
                f"{self.rss / 2**20:.1f}", str(self.fds), f"{self.wal / 2**20:.2f}", f"{self.db / 2**20:.1f}",
                f"{self.gw_cpu:.0%}", f"{self.other_cpu:.0%}", f"{self.lag_p99:.1f}"]


def line(cells: Sequence[str]) -> str:
    return "  ".join(cell.rjust(max(len(head), 7)) for cell, head in zip(cells, HEADER))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def hist_p99(before: dict[str, float], after: dict[str, float]) -> str:
    """The smallest bucket bound holding 99% of the window's pops, from the gateway's own histogram."""
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after if le != "sum"}
    count = delta.get("+Inf", 0.0)
    if count <= 0:
        return "-"
    for le in sorted((le for le in delta if le != "+Inf"), key=float):
        if delta[le] >= 0.99 * count:
            return f"<= {float(le) * 1000:g} ms"
    return "> largest bucket"


@dataclass
class Watch:
    """Turns the rings sent and the pops received into one Window per report."""

    driver: CallDriver
    inbox: Inbox
    sampler: Sampler
    store: Path
    metrics_url: str
    lag: LoopLag
    windows: list[Window] = field(default_factory=list)
    _ring: int = 0
    _calls: int = 0
    _lag: int = 0
    _hist: dict[str, float] = field(default_factory=dict)
    _marks: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    async def start(self) -> None:
        self._hist = await scrape_histogram(self.metrics_url)
        self._marks = (time.perf_counter(), self.sampler.cpu(), _machine_busy(), time.process_time())
        self._ring, self._calls = len(self.driver.rings), self.driver.calls

    async def report(self, started: float) -> Window:
        now = time.perf_counter()
        rings = self.driver.rings
        latencies, late = [], 0
        while self._ring < len(rings) and rings[self._ring].t0 < now - GRACE:
            ring = rings[self._ring]
            arrivals = self.inbox.arrivals.get(ring.pop_id)
            if arrivals and arrivals[0] - ring.t0 <= GRACE:
                latencies.append((arrivals[0] - ring.t0) * 1000)
            else:
                late += 1
            self._ring += 1
        hist = await scrape_histogram(self.metrics_url)
        wall0, gw0, busy0, own0 = self._marks
        wall, gw, busy, own = time.perf_counter() - wall0, self.sampler.cpu(), _machine_busy(), time.process_time()
        lags = self.lag.lags_ms[self._lag:]
        window = Window(
            seconds=now - started, calls=self.driver.calls - self._calls, latencies_ms=latencies, late=late,
            hist_p99=hist_p99(self._hist, hist), rss=self.sampler.rss(), fds=int(self.sampler.process.num_fds()),
            wal=_size(self.store.with_name(self.store.name + "-wal")), db=_size(self.store),
            gw_cpu=(gw - gw0) / wall, other_cpu=max(0.0, (busy - busy0) - (gw - gw0) - (own - own0)) / wall,
            lag_p99=pct(lags, 99) if lags else math.nan,
        )
        self._hist, self._marks = hist, (time.perf_counter(), gw, busy, own)
        self._calls, self._lag = self.driver.calls, len(self.lag.lags_ms)
        self.windows.append(window)
        return window


async def soak(args: argparse.Namespace) -> int:
    ami_secret, http_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
    env = {**os.environ, AMI_SECRET_ENV: ami_secret, HTTP_SECRET_ENV: http_secret}
    password = await asyncio.get_running_loop().run_in_executor(None, hash_password, secrets.token_urlsafe(12))
    extensions = [str(FIRST_EXTENSION + i) for i in range(args.agents)]
    total = int(args.minutes * 60 * args.rate)
    raise_fd_limit(args.agents)
    print(f"soak: {args.minutes:g} min at {args.rate:g} call set-ups/s ({total:,} calls) with {args.agents:,} agents; "
          f"a line every {args.every:g} s; {machine()}; load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cti-soak-") as tmp:
        workdir = Path(tmp)
        store, log_path, config = workdir / "gateway.sqlite3", workdir / "gateway.log", workdir / "gateway.toml"
        http_port = free_port()
        async with AmiServer(username=AMI_USER, secret=ami_secret) as ami:
            write_config(config, ami_port=ami.port, http_port=http_port, store=store, agents=args.agents,
                         password_hash=password)
            with log_path.open("wb") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway", "run", "--config", str(config), cwd=REPO, env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file)
            sampler, inbox = Sampler(psutil.Process(proc.pid)), Inbox()
            agents: Agents | None = None
            try:
                await asyncio.wait_for(ami.wait_for_login(30), 35)
                await wait_listening(http_port, proc, log_path)
                driver = CallDriver(ami, args.agents, args.rate, args.seed)
                await driver.run(max(20, int(args.rate)), measured_from=10**9)  # warm-up, nobody connected
                signer = Signer(http_secret.encode(), time.time)
                tokens = [signer.issue("ws", f"agent{ext}", 3600 + int(args.minutes * 60))[0] for ext in extensions]
                agents = await connect_agents(f"ws://127.0.0.1:{http_port}/ws", extensions, tokens, inbox)
                return await _load(args, total, driver, inbox, sampler, store, http_port)
            except BaseException:
                print(f"the soak failed; the gateway's log ({log_path}):", file=sys.stderr)
                print("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
                raise
            finally:
                if agents is not None:
                    await agents.close(inbox)
                await stop_process(proc)


async def _load(args: argparse.Namespace, total: int, driver: CallDriver, inbox: Inbox, sampler: Sampler,
                store: Path, http_port: int) -> int:
    lag = LoopLag()
    watch = Watch(driver, inbox, sampler, store, f"http://127.0.0.1:{http_port}/metrics", lag)
    first_ring = len(driver.rings)
    gc.collect()
    gc.freeze()  # what exists now is never collected again: shorter collections during the load
    lag.start()
    await watch.start()
    started = time.perf_counter()
    print(line(HEADER), flush=True)

    async def reporter() -> None:
        while True:
            await asyncio.sleep(args.every - (time.perf_counter() - started) % args.every)
            print(line((await watch.report(started)).cells()), flush=True)

    task = asyncio.create_task(reporter())
    try:
        await driver.run(total)
        await asyncio.sleep(GRACE + 0.5)  # the last rings' pops, and a last line covering them
        print(line((await watch.report(started)).cells()) + "  (after the last call)", flush=True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await lag.stop()
        gc.unfreeze()
    phase = Phase("gateway")
    check(phase, driver.rings[first_ring:], inbox, check_cards=True, origin=started)
    summarise(watch.windows, phase)
    return 1 if phase.violations else 0


def summarise(windows: Sequence[Window], phase: Phase) -> None:
    if not windows:
        return
    first, last = windows[0], windows[-1]
    half = windows[len(windows) // 2]
    p99s = [pct(w.latencies_ms, 99) for w in windows if w.latencies_ms]
    print(f"\npops: {len(phase.latencies_ms):,} for {sum(w.calls for w in windows):,} calls; latency p50 "
          f"{pct(phase.latencies_ms, 50):.2f} ms, p99 {pct(phase.latencies_ms, 99):.2f} ms over the whole soak; "
          f"p99 per line {min(p99s, default=math.nan):.1f}-{max(p99s, default=math.nan):.1f} ms")
    print(f"RSS {first.rss / 2**20:.1f} -> {last.rss / 2**20:.1f} MiB (second half: "
          f"{(last.rss - half.rss) / 2**20:+.1f} MiB); fds {first.fds} -> {last.fds} (max "
          f"{max(w.fds for w in windows)}); WAL max {max(w.wal for w in windows) / 2**20:.2f} MiB, last "
          f"{last.wal / 2**20:.2f} MiB; database {last.db / 2**20:.1f} MiB")
    verdict = ", ".join(f"{k} {v}" for k, v in phase.violations.items()) or "none"
    print(f"correctness violations: {verdict}")
    for example in phase.examples:
        print(f"  {example}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    parser.add_argument("--agents", type=int, default=1000, help="websocket agents (default 1,000: half the design)")
    parser.add_argument("--rate", type=float, default=50.0, help="call set-ups per second (default 50: half the design)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between report lines (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="the calls' random seed")
    args = parser.parse_args(argv)
    if args.agents < 3 or args.rate <= 0 or args.minutes <= 0 or args.every <= GRACE:
        parser.error(f"need --agents >= 3, --rate > 0, --minutes > 0, --every > {GRACE:g}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(asyncio.run(soak(parse_args(argv))))


if __name__ == "__main__":
    main()
