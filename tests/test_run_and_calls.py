"""The live path end to end: ``cti-gateway run`` (a real subprocess) against the
in-process AMI server replaying real captures over TCP, then ``cti-gateway
calls`` prints the same records as ``cti-gateway replay`` of those captures."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from connectors.ami.server import AmiServer, capture_stream
from tests.conftest import CAPTURES
from tests.test_replay_captures import EXPECTED

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = sorted(EXPECTED)
COMPARED = ("call_id", "direction", "caller", "caller_name", "dialled", "outcome", "answered_by", "rang",
            "talked", "hangup_cause", "reason", "interrupted", "ended", "recording_path")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM calls").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


async def test_run_then_calls_gives_the_records_of_replay(tmp_path: Path) -> None:
    db = tmp_path / "var" / "gw.sqlite3"
    env = {**os.environ, "TEST_AMI_SECRET": "s3cret-value"}
    async with AmiServer(username="gateway", secret="s3cret-value") as server:
        config = tmp_path / "gw.toml"
        config.write_text(
            f'[ami]\nhost = "127.0.0.1"\nport = {server.port}\nusername = "gateway"\n'
            f'secret_env = "TEST_AMI_SECRET"\n[store]\npath = "var/gw.sqlite3"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config),
            cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await server.wait_for_login(timeout=20)
            for scenario in SCENARIOS:
                await server.send_raw(capture_stream(CAPTURES / f"{scenario}.ami"))
            for _ in range(400):
                if _stored(db) == len(SCENARIOS):
                    break
                await asyncio.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    assert b"s3cret-value" not in stderr  # the secret never reaches the log

    result = _cli("calls", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    stored = {r["call_id"]: r for r in map(json.loads, result.stdout.splitlines())}

    replayed = {}
    for scenario in SCENARIOS:
        out = _cli("replay", str(CAPTURES / f"{scenario}.ami"))
        assert out.returncode == 0, out.stderr
        (record,) = map(json.loads, out.stdout.splitlines())
        replayed[record["call_id"]] = record
    assert len(stored) == len(SCENARIOS)
    for call_id, record in replayed.items():
        assert {k: stored[call_id][k] for k in COMPARED} == {k: record[k] for k in COMPARED}

    as_csv = _cli("calls", "--config", str(config), "--format", "csv", env=env)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["call_id"] for row in rows} == set(stored)
    assert {row["outcome"] for row in rows} == {"answered", "missed", "abandoned"}

    future = _cli("calls", "--config", str(config), "--since", "2100-01-01T00:00:00+00:00", env=env)
    assert future.returncode == 0 and future.stdout == ""
