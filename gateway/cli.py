"""The ``cti-gateway`` command: run, demo, replay, calls, check-config."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from connectors.ami.capture import CaptureError
from connectors.ami.link import AmiLink, LinkSettings
from connectors.ami.normalise import AmiNormaliser, ChannelClassifier
from crm_bridge.store import Store, StoreError
from gateway.config import Config, ConfigError, load_config
from gateway.record import CallRecord
from gateway.replay import replay_capture
from gateway.service import Gateway

log = logging.getLogger("cti_gateway")

CSV_FIELDS = (
    "call_id", "direction", "caller", "caller_name", "dialled", "outcome", "answered_by", "rang", "talked",
    "started_at", "answered_at", "ended_at", "ring_seconds", "talk_seconds", "hangup_cause", "reason",
    "interrupted", "ended", "recording_path",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"cti-gateway: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cti-gateway", description=__doc__)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="connect to the PBX in the config and log every call")
    p.add_argument("--config", required=True, type=Path)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="run against a built-in demo PBX (no setup needed)")
    p.add_argument("--store", type=Path, default=None, help="SQLite file (default: a temporary one)")
    p.add_argument("--interval", type=float, default=4.0, help="seconds between new demo calls")
    p.add_argument("--speed", type=float, default=1.0, help="play calls faster (>1) or instantly (0)")
    p.add_argument("--calls", type=int, default=0, help="stop after this many logged calls (0: never)")
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("replay", help="print one JSON record per call in an AMI capture")
    p.add_argument("capture", type=Path, help="*.ami raw bytes, *.jsonl JSON lines, or a JSON array")
    p.add_argument("--config", type=Path, default=None, help="use the agents configured there")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("calls", help="print the call records stored in the database")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--since", default=None, help="ISO 8601 time, e.g. 2026-11-27T00:00:00+03:00")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.set_defaults(func=cmd_calls)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_check_config)
    return parser


def _print_json(record: CallRecord) -> None:
    sys.stdout.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    sys.stdout.flush()


# -- replay ------------------------------------------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    devices = load_config(args.config).agent_devices() if args.config else None
    try:
        for record in replay_capture(args.capture, classifier=ChannelClassifier(devices)):
            _print_json(record)
    except CaptureError as exc:
        print(f"cti-gateway replay: {exc}", file=sys.stderr)
        return 2
    return 0


# -- calls -------------------------------------------------------------------


def cmd_calls(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    since = None
    if args.since:
        try:
            moment = datetime.fromisoformat(args.since)
        except ValueError:
            print(f"cti-gateway calls: --since: expected an ISO 8601 time, got {args.since!r}", file=sys.stderr)
            return 2
        since = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    if not config.store.path.exists():
        print(f"cti-gateway calls: no database at {config.store.path}", file=sys.stderr)
        return 2
    records = asyncio.run(_read_calls(config, since))
    if args.format == "jsonl":
        for record in records:
            _print_json(record)
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        for record in records:
            row = record.to_json()
            row["rang"] = " ".join(record.rang)
            row["talked"] = " ".join(record.talked)
            writer.writerow({key: row[key] for key in CSV_FIELDS})
    return 0


async def _read_calls(config: Config, since: float | None) -> list[CallRecord]:
    store = await Store.open(config.store.path)
    try:
        return await store.calls(since=since)
    finally:
        await store.close()


# -- check-config ------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    ami = f"AMI {config.ami.username}@{config.ami.host}:{config.ami.port}" if config.ami else "no AMI"
    print(f"{args.file}: OK ({ami}; store {config.store.path}; {len(config.agents)} agents configured)")
    return 0


# -- run / demo ----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.ami is None:
        raise ConfigError(f"{args.config}: [ami]: missing; `run` needs the PBX to connect to")
    ami = config.ami
    settings = LinkSettings(
        host=ami.host, port=ami.port, username=ami.username, secret=ami.secret.value,
        connect_timeout=ami.connect_timeout, login_timeout=ami.login_timeout,
    )
    return asyncio.run(_serve(config, settings))


async def _serve(config: Config, settings: LinkSettings, *, stop_after: int = 0) -> int:
    """Connect the link, consume, store; until a signal (or ``stop_after`` calls)."""
    try:
        store = await Store.open(config.store.path)
    except StoreError as exc:
        print(f"cti-gateway: {exc}", file=sys.stderr)
        return 1
    done = asyncio.Event()
    logged = 0

    def on_record(record: CallRecord) -> None:
        nonlocal logged
        logged += 1
        who = f"{record.caller} ({record.caller_name})" if record.caller_name else record.caller
        log.info("call %s %s %s -> %s: %s%s; rang %s, talked %s", record.call_id, record.direction, who,
                 record.dialled, record.outcome, f" by {record.answered_by}" if record.answered_by else "",
                 ",".join(record.rang) or "-", ",".join(record.talked) or "-")
        if stop_after and logged >= stop_after:
            done.set()

    gateway = Gateway(store, on_record=on_record)
    normaliser = AmiNormaliser(
        ChannelClassifier(config.agent_devices()),
        recording_variable=config.ami.recording_variable if config.ami else "RECFILE",
        did_variable=config.ami.did_variable if config.ami else "DID",
    )
    link = AmiLink(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    link.start()
    consumer = asyncio.create_task(gateway.consume_ami(link, normaliser), name="ami-consumer")
    log.info("gateway running: AMI %s:%s, store %s", settings.host, settings.port, config.store.path)
    try:
        await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await link.close()
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await gateway.drain()
        await store.close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    import random

    from connectors.ami.demo_pbx import DemoPbx
    from connectors.ami.server import AmiServer
    from gateway.config import HttpConfig, StoreConfig

    store_path = args.store or Path(tempfile.mkdtemp(prefix="cti-demo-")) / "demo.sqlite3"
    async with AmiServer(username="gateway", secret="demo-secret") as server:
        pbx = DemoPbx(server, rng=random.Random(args.seed))
        player = asyncio.create_task(pbx.run(interval=args.interval, speed=args.speed), name="demo-pbx")
        config = Config(source=None, ami=None, http=HttpConfig(), store=StoreConfig(path=store_path))
        settings = LinkSettings(host="127.0.0.1", port=server.port, username="gateway", secret="demo-secret")
        print(f"demo: built-in PBX on 127.0.0.1:{server.port}, calls stored in {store_path}", file=sys.stderr)
        try:
            return await _serve(config, settings, stop_after=args.calls)
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)
