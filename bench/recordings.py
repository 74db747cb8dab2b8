"""Recordings: transcoding speed, and many players streaming at once.

Run from the repository root: ``.venv/bin/python -m bench.recordings
[--minutes 10] [--files 4] [--players 50] [--chunk 65536]``. It prints figures
and ratios; it never asserts on time.

1. Transcoding: ``--files`` WAV sources of ``--minutes`` minutes each (8 kHz,
   mono, 16 bit, like a MixMonitor file) through ``recordings.transcode`` (pydub
   + ffmpeg, mono Opus 24 kbit/s), one after the other. The real-time factor is
   seconds of audio per second of CPU (this process and its ffmpeg children,
   from ``os.times``), and per second of wall time. The baseline is the ffmpeg
   command alone doing the same encoding from a WAV file (what pydub's
   decoding, resampling to mono and piping add shows in the ratio).
2. Streaming: one ready recording (the transcoded file) played by
   ``--players`` clients at once, each reading the whole file in Range
   requests of ``--chunk`` bytes, one after the other, through
   ``GET /api/calls/{id}/recording`` of the real app (session cookie, access
   check, audit row per request). The baseline is the same file, same load,
   served by aiohttp's plain static route in the same app and run. While each
   runs, a ticker measures the event loop's lag (how late a 10 ms sleep wakes
   up). Latencies are per Range request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.figures import Figure, render
from crm_bridge.store import Store
from gateway.auth import Signer, hash_password
from gateway.config import HttpConfig
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.record import CallRecord
from gateway.users import Directory, Role, User
from gateway.web import build_app
from recordings.api import PLAYER, Player
from recordings.api import add_routes as add_recording_routes
from recordings.storage import Recordings, job_statements
from recordings.transcode import transcode

PASSWORD = "bench-password"


def source_wav(seconds: float) -> bytes:
    from connectors.ami.demo_pbx import write_conversation

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "call.wav"
        write_conversation(path, seconds=seconds)
        return path.read_bytes()


def _cpu() -> float:
    """User + system seconds of this process and of its finished children (ffmpeg)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def ffmpeg_floor(wav: bytes, files: int) -> float:
    """Seconds of CPU for ffmpeg alone doing the same encoding from a file: the baseline."""
    with tempfile.TemporaryDirectory(prefix="cti-bench-ffmpeg-") as tmp:
        source = Path(tmp) / "call.wav"
        source.write_bytes(wav)
        cpu = _cpu()
        for _ in range(files):
            subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(source),
                            "-ac", "1", "-c:a", "libopus", "-b:a", "24k", "-f", "ogg", str(Path(tmp) / "out.ogg")],
                           check=True)
        return _cpu() - cpu


def transcoding(minutes: float, files: int) -> tuple[bytes, list[Figure]]:
    wav = source_wav(minutes * 60)
    cpu0, wall0 = _cpu(), time.perf_counter()
    for _ in range(files):
        done = transcode(wav)
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    floor = ffmpeg_floor(wav, files)
    audio = minutes * 60 * files
    print(f"transcoding: {files} x {minutes:g} min WAV ({len(wav) / 1e6:.1f} MB) -> Opus "
          f"({len(done.data) / 1e6:.2f} MB, {len(wav) / len(done.data):.0f}x smaller)")
    print(f"  real-time factor: {audio / cpu:.0f}x per CPU second, {audio / wall:.0f}x per wall second "
          f"(cpu {cpu:.2f} s, wall {wall:.2f} s for {audio / 60:g} min of audio); ffmpeg alone from a file "
          f"{audio / floor:.0f}x per CPU second (cpu {floor:.2f} s)")
    return done.data, [Figure("transcoding real-time factor (audio s per CPU s)", audio / cpu, "x", audio / floor,
                              "ffmpeg alone")]


async def lag_ticker(samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - t - 0.01)


async def stream(url: str, size: int, players: int, chunk: int, headers: dict[str, str]) -> dict[str, float]:
    latencies: list[float] = []
    lags: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(lag_ticker(lags, stop))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=players)) as http:
        async def player() -> int:
            got = 0
            for start in range(0, size, chunk):
                t = time.perf_counter()
                rng = {"Range": f"bytes={start}-{min(size, start + chunk) - 1}"}
                async with http.get(url, headers={**headers, **rng}) as response:
                    body = await response.read()
                    if response.status != 206:
                        raise RuntimeError(f"{url}: {response.status}")
                latencies.append(time.perf_counter() - t)
                got += len(body)
            return got

        started = time.perf_counter()
        totals = await asyncio.gather(*(player() for _ in range(players)))
        wall = time.perf_counter() - started
    stop.set()
    await ticker
    assert all(total == size for total in totals), totals
    ordered, lag = sorted(latencies), sorted(lags)
    return {"mb_s": sum(totals) / wall / 1e6, "req_s": len(ordered) / wall,
            "p50": statistics.median(ordered) * 1000, "p99": ordered[int(len(ordered) * 0.99)] * 1000,
            "lag_p99": lag[int(len(lag) * 0.99)] * 1000, "lag_max": lag[-1] * 1000}


async def streaming(data: bytes, players: int, chunk: int, rounds: int) -> list[Figure]:
    tmp = Path(tempfile.mkdtemp(prefix="cti-bench-recordings-"))
    directory = tmp / "recordings"
    directory.mkdir()
    (directory / "bench.ogg").write_bytes(data)
    store = await Store.open(tmp / "gw.sqlite3")
    record = CallRecord("bench-call", "inbound", "+79161110001", None, "+74950000001", "answered", "101", ("101",),
                        ("101",), 1.0, 2.0, 600.0, 1.0, 598.0, 16, None, False, True, recording_path="/x.wav")
    await store.save_call(record, also=job_statements("bench-call", "/x.wav", 1.0))
    recordings = Recordings(store)
    await recordings.ready("bench-call", "/x.wav", file="bench.ogg", content_type="audio/ogg", duration=600.0,
                           size=len(data), peaks=[0.5] * 200, now=2.0)
    admin = User("admin", "Admin", Role.ADMIN, hash_password(PASSWORD))
    directory_of_users, metrics = Directory([admin]), Metrics()
    app = build_app(http=HttpConfig(), store=store, hub=Hub(directory_of_users, metrics),
                    signer=Signer(os.urandom(32), time.time), directory=directory_of_users, metrics=metrics)
    app[PLAYER] = Player(recordings, directory)
    add_recording_routes(app)
    app.router.add_static("/bench-static/", directory)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/login", json={"login": "admin", "password": PASSWORD}) as response:
                cookie = {"Cookie": f"cti_session={response.cookies['cti_session'].value}"}
        best: dict[str, dict[str, float]] = {}
        for r in range(rounds):
            for name, url, headers in (("static", f"{base}/bench-static/bench.ogg", {}),
                                       ("gateway", f"{base}/api/calls/bench-call/recording", cookie)):
                got = await stream(url, len(data), players, chunk, headers)
                print(f"round {r + 1} {name:8s}: {got['mb_s']:6.1f} MB/s  {got['req_s']:6.0f} ranges/s  "
                      f"p50 {got['p50']:6.2f} ms  p99 {got['p99']:6.2f} ms  loop lag p99 {got['lag_p99']:5.2f} ms "
                      f"max {got['lag_max']:5.2f} ms", flush=True)
                if name not in best or got["req_s"] > best[name]["req_s"]:
                    best[name] = got
        audited = await store.read("SELECT count(*) FROM recording_listens")
        g, s = best["gateway"], best["static"]
        print(f"\n{players} players, {len(data) / 1e6:.2f} MB file in {chunk // 1024} KiB ranges: gateway "
              f"{g['req_s']:.0f} ranges/s (p99 {g['p99']:.1f} ms, loop lag p99 {g['lag_p99']:.1f} ms) vs plain static "
              f"{s['req_s']:.0f} ranges/s (p99 {s['p99']:.1f} ms): {g['req_s'] / s['req_s']:.2f}x the throughput")
        print(f"every gateway range audited: {audited[0][0]} listen rows")
    finally:
        await runner.cleanup()
        await store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return [Figure(f"recording ranges/s, {players} players", g["req_s"], "ranges/s", s["req_s"], "static file"),
            Figure(f"recording range p99, {players} players", g["p99"], "ms", s["p99"], "static file"),
            Figure("event loop lag p99 while streaming", g["lag_p99"], "ms", s["lag_p99"], "static file")]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.recordings", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--players", type=int, default=50)
    parser.add_argument("--chunk", type=int, default=64 * 1024)
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def figures(args: argparse.Namespace) -> list[Figure]:
    """Run the benchmark, print its detail, return its figures."""
    data, result = transcoding(args.minutes, args.files)
    result += asyncio.run(streaming(data, args.players, args.chunk, args.rounds))
    print(render(result))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    figures(parse_args(argv))


if __name__ == "__main__":
    main()
