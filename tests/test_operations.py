"""Running it for real: the systemd unit (checked by systemd's own tools, and
its MemoryDenyWriteExecute tried on the real gateway through the kernel's
prctl), ``cti-gateway backup`` while a gateway writes, restore, and the log
formats of ``cti-gateway run``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from connectors.ami.server import AmiServer
from crm_bridge.migrations import LATEST_VERSION
from gateway.config import ConfigError, parse_config
from gateway.logs import JsonFormatter

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "cti-gateway.service"
INSTALLED_COMMAND = "/opt/cti-gateway/venv/bin/cti-gateway"


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


# -- the systemd unit ---------------------------------------------------------------


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's command (verify checks it exists)."""
    command = Path(sys.executable).parent / "cti-gateway"
    if not command.exists():
        pytest.skip("the cti-gateway command is not installed in this environment")
    text = UNIT.read_text()
    assert INSTALLED_COMMAND in text
    unit = tmp_path / "cti-gateway.service"
    unit.write_text(text.replace(INSTALLED_COMMAND, str(command)))
    return unit


def _settings(unit: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_has_the_hardening_the_operations_docs_promise() -> None:
    unit = _settings(UNIT)
    assert unit["User"] == ["cti-gateway"] and unit["Group"] == ["cti-gateway"]
    assert unit["ExecStart"] == [f"{INSTALLED_COMMAND} run --config /etc/cti-gateway/cti-gateway.toml"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # the gateway reloads its number plan on SIGHUP
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["ReadWritePaths"] == ["/var/lib/cti-gateway"]  # the database and recordings, nothing else
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "MemoryDenyWriteExecute"):
        assert unit[key] == ["yes"], key
    assert unit["CapabilityBoundingSet"] == [""]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in unit["SystemCallFilter"]
    assert int(unit["LimitNOFILE"][0]) >= 4096  # 2,000 websockets and then some
    assert unit["Restart"] == ["on-failure"]
    assert unit["TimeoutStopSec"] == ["30s"]  # more than the 10 s the gateway waits for stored webhooks


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit_and_rates_its_sandbox_ok(tmp_path: Path) -> None:
    unit = _unit_for_this_machine(tmp_path)
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    # verify exits 0 even for unknown keys or bad values; it only prints them.
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    # Exposure 0-10 as systemd rates it; --threshold is on a 0-100 scale. 2.0 and below is "OK".
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert security.returncode == 0, security.stdout[-600:] + security.stderr


# Sets the kernel's memory-deny-write-execute rule (PR_SET_MDWE, Linux 6.3+; what
# MemoryDenyWriteExecute=yes does through seccomp) and execs the command under it.
MDWE = ("import ctypes, os, sys\n"
        "if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0: sys.exit(77)\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n")


def _under_mdwe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", MDWE, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)


def test_the_gateway_and_ffmpeg_run_with_memory_deny_write_execute(tmp_path: Path) -> None:
    probe = _under_mdwe(sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)")
    if probe.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert "PermissionError" in probe.stderr  # the rule is in force: a W+X mapping is refused

    demo = _under_mdwe(sys.executable, "-m", "gateway", "demo", "--calls", "3", "--speed", "0",
                       "--interval", "0.1", "--port", "0", "--seed", "1", "--store", str(tmp_path / "demo.sqlite3"))
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert demo.stderr.count("INFO cti_gateway: call ") >= 3

    if shutil.which("ffmpeg") is None:
        return
    source = tmp_path / "tone.wav"
    with wave.open(str(source), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(range(256)) * 125)  # 2 s of noise
    transcode = _under_mdwe(
        sys.executable, "-c",
        "import sys; from pathlib import Path; from recordings.transcode import transcode; "
        "print(transcode(Path(sys.argv[1]).read_bytes(), fmt='opus').duration)", str(source))
    assert transcode.returncode == 0, transcode.stderr[-2000:]
    assert float(transcode.stdout) > 1.5


# -- backup and restore -------------------------------------------------------------


def _call_ids(db: Path) -> set[str]:
    if not db.exists():
        return set()
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT call_id FROM calls")}
    except sqlite3.OperationalError:
        return set()  # the schema is still being created
    finally:
        conn.close()


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_backup_while_the_gateway_writes_then_restore(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    db = live / "gw.sqlite3"
    config = live / "gw.toml"
    config.write_text('[store]\npath = "gw.sqlite3"\n')
    target = tmp_path / "backups" / "gw-backup.sqlite3"
    target.parent.mkdir()
    # The whole gateway (AMI link, tracker, store) writing the demo PBX's calls, in its own process.
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--log-level", "warning", "demo", "--store", str(db), "--speed", "0",
         "--interval", "0.05", "--port", "0", "--seed", "7"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: len(_call_ids(db)) >= 20, "20 calls stored")
        before = _call_ids(db)  # committed before the backup begins
        backup = _cli("backup", str(target), "--config", str(config), "--pages", "2", "--pause", "0.05")
        _until(lambda: len(_call_ids(db)) > len(before) + 5, "more calls stored after the backup")
        after = _call_ids(db)
    finally:
        gateway.send_signal(signal.SIGTERM)
        _, errors = gateway.communicate(timeout=30)
    assert gateway.returncode == 0, errors[-2000:]
    assert backup.returncode == 0, backup.stderr
    steps = int(re.search(r"in (\d+) steps", backup.stdout).group(1))  # type: ignore[union-attr]
    assert steps > 1  # copied in paced steps, while the gateway went on committing
    assert not target.with_name(target.name + ".partial").exists()

    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one self-contained file
        assert conn.execute("PRAGMA user_version").fetchone() == (LATEST_VERSION,)
        copied = {row[0] for row in conn.execute("SELECT call_id FROM calls")}
    finally:
        conn.close()
    assert before <= copied <= after
    assert f"{len(copied)} calls" in backup.stdout

    # Restore (docs/operations.md): the gateway stopped, the copy put in place of the database.
    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(target, restored / "gw.sqlite3")
    (restored / "gw.toml").write_text('[store]\npath = "gw.sqlite3"\n')
    calls = _cli("calls", "--config", str(restored / "gw.toml"))
    assert calls.returncode == 0, calls.stderr
    assert {json.loads(line)["call_id"] for line in calls.stdout.splitlines()} == copied


def test_a_restored_database_newer_than_the_code_is_refused_at_start(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    (tmp_path / "ami-secret").write_text("s3cret\n")
    config = tmp_path / "gw.toml"
    config.write_text('[ami]\nhost = "127.0.0.1"\nport = 1\nusername = "gateway"\nsecret_file = "ami-secret"\n'
                      '[store]\npath = "gw.sqlite3"\n')  # the store is opened before anything listens
    run = _cli("run", "--config", str(config))
    assert run.returncode == 1
    assert f"schema version {LATEST_VERSION + 1} is newer than this code" in run.stderr


def test_backup_refuses_what_would_do_harm(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite3"
    config = tmp_path / "gw.toml"
    config.write_text('[store]\npath = "gw.sqlite3"\n')
    missing = _cli("backup", str(tmp_path / "copy.sqlite3"), "--config", str(config))
    assert missing.returncode == 2 and f"no database at {db}" in missing.stderr

    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE calls (call_id TEXT)")
    conn.close()
    onto_itself = _cli("backup", str(db), "--config", str(config))
    assert onto_itself.returncode == 2 and "is the database itself" in onto_itself.stderr

    if os.geteuid() == 0:  # root must not create -wal/-shm files the service user cannot open
        os.chown(db, 65534, 65534)
        as_root = _cli("backup", str(tmp_path / "copy.sqlite3"), "--config", str(config))
        assert as_root.returncode == 2 and "sudo -u cti-gateway" in as_root.stderr
        assert not (tmp_path / "gw.sqlite3-wal").exists()


# -- log format -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _run_briefly(tmp_path: Path, logging_table: str) -> str:
    """``cti-gateway run`` until it has logged in to the AMI; its stderr."""
    (tmp_path / "ami-secret").write_text("s3cret-value\n")
    async with AmiServer(username="gateway", secret="s3cret-value") as server:
        config = tmp_path / "gw.toml"
        config.write_text(f'[ami]\nhost = "127.0.0.1"\nport = {server.port}\nusername = "gateway"\n'
                          f'secret_file = "ami-secret"\n[http]\nport = {_free_port()}\n[store]\npath = "gw.sqlite3"\n'
                          f"[logging]\n{logging_table}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config),
            cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await server.wait_for_login(timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    text = stderr.decode()
    assert "s3cret-value" not in text
    return text


async def test_run_logs_one_json_object_per_line(tmp_path: Path) -> None:
    lines = (await _run_briefly(tmp_path, 'format = "json"\nlevel = "info"')).splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all(set(r) == {"time", "level", "logger", "message"} for r in records)
    for record in records:
        moment = datetime.fromisoformat(record["time"])
        assert moment.utcoffset() == timedelta(0)
    levels = {(r["level"], r["logger"]) for r in records}
    assert ("warning", "cti_gateway") in levels  # no [http] secret: sessions end with the process
    assert any(r["message"].startswith("gateway running: AMI 127.0.0.1") for r in records)
    assert any(r["logger"] == "connectors.ami.link" for r in records)


async def test_run_logs_text_at_the_configured_level(tmp_path: Path) -> None:
    lines = (await _run_briefly(tmp_path, 'format = "text"\nlevel = "warning"')).splitlines()
    assert lines
    text_line = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|ERROR) [\w.]+: ")
    assert all(text_line.match(line) for line in lines), lines
    assert any("secret_env/secret_file not set" in line for line in lines)
    assert not any("gateway running" in line for line in lines)  # info is below the level


def test_a_json_line_carries_the_exception_and_stays_one_line() -> None:
    logger = logging.getLogger("cti_gateway.test")
    empty: dict[str, str] = {}
    try:
        empty["missing"]
    except KeyError:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, 'bad "frame"\nnext: %s', ("x",),
                                   sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == 'bad "frame"\nnext: x'
    assert parsed["level"] == "error" and parsed["logger"] == "cti_gateway.test"
    assert parsed["exception"].startswith("Traceback (most recent call last):")
    assert parsed["exception"].rstrip().endswith("KeyError: 'missing'")
    assert parsed["time"].endswith("+00:00")


@pytest.mark.parametrize(("table", "complaint"), [
    ({"format": "xml"}, '[logging] format: expected "text" or "json", got \'xml\''),
    ({"level": "verbose"}, "[logging] level: expected one of"),
    ({"colour": True}, "[logging] colour: unknown key"),
])
def test_a_wrong_logging_table_names_the_key(table: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        parse_config({"logging": table}, source=Path("gw.toml"), environ={})
    assert parse_config({"logging": {"format": "json", "level": "WARNING"}}, source=None,
                        environ={}).logging.level == "warning"
