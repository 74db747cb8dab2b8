"""The ``cti-gateway`` command: run, demo, replay, calls, backup, check-config."""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import os
import random
import secrets
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from connectors.ami.capture import CaptureError
from connectors.ami.dialer import AmiDialer
from connectors.ami.fastagi import AgiRequest, Decide, FastAgiServer
from connectors.ami.link import AmiLink, LinkSettings
from connectors.ami.normalise import AmiNormaliser, ChannelClassifier
from connectors.ami.rights import ExcessiveRights, Policy, rights_guard
from crm_bridge.backup import backup_store
from crm_bridge.contacts import Contacts, e164
from crm_bridge.store import Store, StoreError
from aiohttp import web

from gateway.auth import Signer, hash_password
from gateway.click_to_call import ClickToCall
from gateway.config import Config, ConfigError, load_config, load_store_config
from gateway.logs import configure_logging
from gateway.contacts_api import CONTACTS
from gateway.contacts_api import add_routes as add_contact_routes
from gateway.crm_api import BRIDGE, build_bridge
from gateway.crm_api import add_routes as add_crm_routes
from gateway.bitrix24_api import add_routes as add_bitrix24_routes
from gateway.followup import Followup
from gateway.calllog_api import add_routes as add_calllog_routes
from gateway.followup_api import FOLLOWUP
from gateway.followup_api import add_routes as add_followup_routes
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.numberplan import NumberPlan, PlanBook
from gateway.presence import Presence
from gateway.routing import Router
from gateway.webhooks import Webhooks, connectors_for
from crm_bridge.inbox import Inbox
from recordings.api import PLAYER, Player
from recordings.api import add_routes as add_recording_routes
from recordings.collector import Collector
from dashboards.api import REPORTS, Reports
from dashboards.api import add_routes as add_dashboard_routes
from dashboards.deals import Deals, parse_deal
from dashboards.digest import Digest
from dashboards.rollups import Rollups, rebuild
from recordings import retention
from recordings.privacy_api import PRIVACY, PrivacyDesk
from recordings.privacy_api import add_routes as add_privacy_routes
from recordings.storage import Recordings
from gateway.record import CallRecord
from gateway.replay import replay_capture
from gateway.service import Gateway
from gateway.users import Directory, Role, User
from gateway.web import ROLLUPS, build_app

log = logging.getLogger("cti_gateway")

DEFAULT_CONFIG = "/etc/cti-gateway/cti-gateway.toml"  # where deploy/cti-gateway.service reads it

CSV_FIELDS = (
    "call_id", "direction", "caller", "caller_name", "dialled", "outcome", "answered_by", "rang", "talked",
    "started_at", "answered_at", "ended_at", "ring_seconds", "talk_seconds", "hangup_cause", "reason",
    "interrupted", "ended", "recording_path", "shop", "channel",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging("text", args.log_level or "info")  # `run` reconfigures from [logging]
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
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="default: [logging] level of the config, else info")
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
    p.add_argument("--host", default="127.0.0.1", help="address of the demo's web page")
    p.add_argument("--port", type=int, default=8080, help="port of the demo's web page (0: any free port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("token", help="print a websocket token for an agent (for CRM widgets and scripts)")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("agent", help="the agent's login or extension")
    p.add_argument("--ttl", type=float, default=12.0, help="hours the token stays valid")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("hash-password", help="read a password (stdin or prompt) and print its hash for the config")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("replay", help="print one JSON record per call in an AMI capture")
    p.add_argument("capture", type=Path, help="*.ami raw bytes, *.jsonl JSON lines, or a JSON array")
    p.add_argument("--config", type=Path, default=None, help="use the agents configured there")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("calls", help="print the call records stored in the database")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--since", default=None, help="ISO 8601 time, e.g. 2026-11-27T00:00:00+03:00")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.set_defaults(func=cmd_calls)

    p = sub.add_parser("rebuild-rollups", help="recompute the reports' daily roll-ups from the stored calls")
    p.add_argument("--config", required=True, type=Path)
    p.set_defaults(func=cmd_rebuild_rollups)

    p = sub.add_parser("backup", help="copy the store to a file while the gateway runs, and check the copy")
    p.add_argument("target", type=Path, help="the backup file to write (replaced if it exists)")
    p.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help=f"default: {DEFAULT_CONFIG}")
    p.add_argument("--pages", type=int, default=256, help="database pages copied per step")
    p.add_argument("--pause", type=float, default=0.01, help="seconds between steps, so the gateway keeps the disk")
    p.set_defaults(func=cmd_backup)

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


# -- rebuild-rollups ----------------------------------------------------------


def cmd_rebuild_rollups(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.store.path.exists():
        print(f"cti-gateway rebuild-rollups: no database at {config.store.path}", file=sys.stderr)
        return 2

    async def run() -> int:
        store = await Store.open(config.store.path)
        try:
            def progress(stage: str, done: int, total: int) -> None:
                print(f"\rrebuilding roll-ups: {stage} {done}/{total} ({100 * done // max(total, 1)}%)   ",
                      end="", file=sys.stderr, flush=True)

            done = await rebuild(store, Rollups(config.kpi.timezone, config.reports.qualified_results),
                                 progress=progress)
        finally:
            await store.close()
        print(f"\nroll-ups rebuilt from {done} calls", file=sys.stderr)
        return 0

    return asyncio.run(run())


# -- backup --------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    source = load_store_config(args.config).path
    target: Path = args.target
    if args.pages < 1 or not args.pause >= 0:
        print("cti-gateway backup: --pages must be at least 1 and --pause at least 0", file=sys.stderr)
        return 2
    if not source.is_file():
        print(f"cti-gateway backup: no database at {source}", file=sys.stderr)
        return 2
    if target.resolve() == source.resolve():
        print(f"cti-gateway backup: {target} is the database itself", file=sys.stderr)
        return 2
    if os.geteuid() == 0 and source.stat().st_uid != 0:
        # A root connection could create -wal/-shm files the service user then cannot open.
        print(f"cti-gateway backup: run it as the owner of {source} (sudo -u cti-gateway ...), not as root",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        report = backup_store(source, target, pages=args.pages, pause=args.pause)
    except sqlite3.Error as exc:
        print(f"cti-gateway backup: {source} -> {target}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cti-gateway backup: {target}: {exc.strerror}", file=sys.stderr)
        return 1
    if report.problems:
        print(f"cti-gateway backup: the copy failed PRAGMA integrity_check, nothing written to {target}:\n  "
              + "\n  ".join(report.problems[:10]), file=sys.stderr)
        return 1
    print(f"backup: {target}: {report.calls} calls, schema version {report.schema_version}, "
          f"{report.pages} pages in {report.steps} steps, {time.monotonic() - started:.1f} s; integrity ok")
    return 0


# -- check-config ------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    ami = f"AMI {config.ami.username}@{config.ami.host}:{config.ami.port}" if config.ami else "no AMI"
    crm = ", ".join(f"{sink.kind} {sink.name}" for sink in config.crm.sinks) or "none"
    print(f"{args.file}: OK ({ami}; store {config.store.path}; {len(config.agents)} agent devices, "
          f"{len(config.users)} users configured; CRM sinks: {crm})")
    return 0


# -- run / demo ----------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.logging.format, args.log_level or config.logging.level)
    if config.ami is None:
        raise ConfigError(f"{args.config}: [ami]: missing; `run` needs the PBX to connect to")
    ami = config.ami
    settings = LinkSettings(
        host=ami.host, port=ami.port, username=ami.username, secret=ami.secret.value,
        connect_timeout=ami.connect_timeout, login_timeout=ami.login_timeout,
    )
    return asyncio.run(_serve(config, settings))


async def _serve(config: Config, settings: LinkSettings, *, stop_after: int = 0,
                 started: Callable[[int], None] | None = None,
                 alongside: Callable[[Deals], Coroutine[Any, Any, None]] | None = None) -> int:
    """Connect the link, consume, store, serve HTTP; until a signal (or ``stop_after`` calls)."""
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

    http = config.http
    if http.secret is None:
        log.warning("[http] secret_env/secret_file not set: sessions and tokens last until this process stops")
    signer = Signer(http.secret.value.encode() if http.secret else secrets.token_bytes(32), time.time)
    metrics = Metrics()
    directory = Directory(config.users)
    hub = Hub(directory, metrics)
    plans = PlanBook(config.plan)
    contacts = Contacts(store, region=http.default_region,
                        is_login=lambda login: directory.by_login(login) is not None)
    routing = config.routing
    gateway_ref: list[Gateway] = []
    presence = Presence(
        connected=lambda login: login in hub.online(),
        busy_extensions=lambda: gateway_ref[0].tracker.busy_extensions(),
        extensions_of=lambda login: u.extensions if (u := directory.by_login(login)) else (),
        clock=time.time,
        wrap_up_seconds=routing.wrap_up_seconds,
    )
    refused: list[ExcessiveRights] = []

    def refuse(exc: ExcessiveRights) -> None:
        """The AMI user may do too much: stop, exit 2 (``[ami] excessive_rights = "warn"`` to run anyway)."""
        refused.append(exc)
        log.critical("%s; stopping ([ami] excessive_rights = \"warn\" runs anyway)", exc)
        done.set()

    policy: Policy = "warn" if config.ami is not None and config.ami.excessive_rights == "warn" else "refuse"
    link = AmiLink(settings, on_login=rights_guard(policy, refuse))
    # Click-to-call: one Originate per request, through the dialplan's [click-to-call].
    click_to_call = ClickToCall(store, AmiDialer(link, dial_string=routing.dial_string), plans, directory, time.time,
                                region=http.default_region, contacts=contacts)
    followup = Followup(store, plans=plans, directory=directory, kpi=config.kpi, vip=config.vip, hub=hub)
    rollups = Rollups(config.kpi.timezone, config.reports.qualified_results)
    rec = config.recordings
    recordings = Recordings(store)
    collector = Collector(recordings, directory=rec.directory, asterisk_dir=rec.asterisk_dir,
                          asterisk_prefix=rec.asterisk_prefix, fmt=rec.format, bitrate=rec.bitrate,
                          keep_original=rec.keep_original, concurrency=rec.concurrency,
                          on_missing=metrics.recording_missing)
    bridge = build_bridge(config.crm, store=store, plans=plans, recordings=recordings, recordings_dir=rec.directory,
                          region=http.default_region, metrics=metrics)
    await bridge.start()  # the sinks' names, before the first event is written
    gateway = Gateway(store, hub=hub, metrics=metrics, region=http.default_region,
                      crm_url_template=http.crm_url_template, plans=plans, contacts=contacts,
                      presence=presence, click_to_call=click_to_call, followup=followup, collector=collector,
                      rollups=rollups, bridge=bridge if bridge.sinks else None, on_record=on_record)
    gateway_ref.append(gateway)
    router = Router(
        contacts=contacts, plans=plans, directory=directory, presence=presence, clock=time.time,
        normalise=lambda raw: e164(raw, http.default_region), dial_string=lambda ext: routing.dial_string.replace("{extension}", ext),
        sticky_days=routing.sticky_days, vip_fallback=routing.vip_fallback,
    )

    def reload() -> str:
        """SIGHUP or the admin API: a new number plan for the next calls; the
        rest of the config needs a restart."""
        if config.source is None:
            return "nothing to reload: no config file"
        try:
            fresh = load_config(config.source)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            raise
        plans.replace(fresh.plan, time.time())
        message = (f"number plan reloaded from {config.source}: {len(fresh.plan.shops)} shops, "
                   f"{len(fresh.plan.lines)} numbers; applies to calls that start from now")
        log.info("%s", message)
        return message

    normaliser = AmiNormaliser(
        ChannelClassifier(config.agent_devices()),
        recording_variable=config.ami.recording_variable if config.ami else "RECFILE",
        did_variable=config.ami.did_variable if config.ami else "DID",
    )
    app = build_app(http=http, store=store, hub=hub, signer=signer, directory=directory, metrics=metrics,
                    reload=reload, presence=presence, click_to_call=click_to_call)
    app[CONTACTS] = contacts
    add_contact_routes(app)
    app[FOLLOWUP] = followup
    add_followup_routes(app)
    add_calllog_routes(app)
    try:
        connectors = connectors_for(config.webhooks, own_url=f"http://{http.host}:{http.port}")
    except ValueError as exc:  # a provider's options, checked by its connector
        await store.close()
        raise ConfigError(f"{config.source or '<config>'}: {exc}") from None
    webhooks = Webhooks(gateway, Inbox(store), connectors)
    collector.fetchers.update({name: connector.fetch_recording for name, connector in connectors.items()})
    app[PLAYER] = Player(recordings, rec.directory, agents_hear_own=rec.agents_hear_own,
                         link_seconds=rec.link_minutes * 60)
    add_recording_routes(app)
    app[PRIVACY] = PrivacyDesk(store, plans, rec.directory, region=http.default_region)
    add_privacy_routes(app)
    app[ROLLUPS] = rollups
    app[REPORTS] = Reports(Deals(store, zone=config.kpi.timezone, region=http.default_region), plans,
                           config.kpi.timezone, config.reports.roi_basis)
    add_dashboard_routes(app)
    app[BRIDGE] = bridge
    add_crm_routes(app)
    add_bitrix24_routes(app)
    webhooks.add_routes(app, router.decide)
    await webhooks.recover()  # calls a crash left half-done, from the inbox
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, http.host, http.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await store.close()
        print(f"cti-gateway: cannot listen on {http.host}:{http.port}: {exc.strerror}", file=sys.stderr)
        return 1
    port = int(runner.addresses[0][1]) if runner.addresses else http.port
    agi: FastAgiServer | None = None
    if routing.fastagi:
        agi = FastAgiServer(agi_decider(router), host=routing.host, port=routing.port,
                            deadline=routing.deadline_ms / 1000)
        try:
            await agi.start()
        except OSError as exc:
            await runner.cleanup()
            await store.close()
            print(f"cti-gateway: cannot listen for FastAGI on {routing.host}:{routing.port}: {exc.strerror}",
                  file=sys.stderr)
            return 1
        log.info("FastAGI routing on %s:%s (deadline %d ms)", routing.host, agi.port, routing.deadline_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)

    def on_sighup() -> None:
        try:
            reload()
        except ConfigError:
            pass  # logged; the old plan stays

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    link.start()
    consumer = asyncio.create_task(gateway.consume_ami(link, normaliser), name="ami-consumer")
    sla_watch = asyncio.create_task(followup.watch(), name="sla-watch")
    webhook_consumer = asyncio.create_task(webhooks.run(), name="webhooks")
    collecting = asyncio.create_task(collector.run(), name="recordings")
    purging = asyncio.create_task(retention.watch(store, plans, rec.directory), name="retention")
    watching = asyncio.create_task(metrics.watch(store), name="metrics")  # loop lag, inbox and recording backlogs
    delivering = asyncio.create_task(bridge.run(), name="crm-bridge")
    digest = asyncio.create_task(Digest(config.digest, store, followup).run(), name="digest") \
        if config.digest.recipients else None
    extra = asyncio.create_task(alongside(app[REPORTS].deals), name="alongside") if alongside else None
    log.info("gateway running: AMI %s:%s, HTTP http://%s:%s/, store %s", settings.host, settings.port,
             http.host, port, config.store.path)
    if started is not None:
        started(port)
    try:
        await done.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await link.close()
        await click_to_call.drain()  # a call being placed gets its final status stored
        if agi is not None:
            await agi.close()
        consumer.cancel()
        sla_watch.cancel()
        await asyncio.gather(consumer, sla_watch, return_exceptions=True)
        await gateway.drain()
        await runner.cleanup()  # no new webhooks...
        try:
            await asyncio.wait_for(webhooks.idle(), 10)  # ...and the stored ones processed
        except asyncio.TimeoutError:
            log.warning("webhooks still queued at shutdown: they are rebuilt from the inbox at the next start")
        webhook_consumer.cancel()
        collecting.cancel()
        purging.cancel()
        watching.cancel()
        delivering.cancel()
        for task in (digest, extra):
            if task is not None:
                task.cancel()
        await asyncio.gather(webhook_consumer, collecting, purging, watching, delivering,
                             *(t for t in (digest, extra) if t), return_exceptions=True)
        await gateway.drain()
        await bridge.close()
        await store.close()
    if refused:
        print(f"cti-gateway: {refused[0]}", file=sys.stderr)
        return 2
    return 0


def agi_decider(router: Router) -> Decide:
    """Asterisk's ``AGI(agi://HOST:PORT/route,${DID},${CALLERID(num)})`` -> the routing decision."""

    async def decide(request: AgiRequest) -> dict[str, str]:
        dialled = request.args[0] if request.args else None
        caller = request.args[1] if len(request.args) > 1 and request.args[1] else request.caller
        return (await router.decide(caller, dialled)).variables()

    return decide


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from connectors.ami.demo_pbx import DemoPbx
    from connectors.ami.server import AmiServer
    from gateway.config import HttpConfig, RecordingsConfig, Secret, StoreConfig

    work = Path(tempfile.mkdtemp(prefix="cti-demo-"))
    store_path = args.store or work / "demo.sqlite3"
    users = await asyncio.get_running_loop().run_in_executor(None, demo_users)
    async with AmiServer(username="gateway", secret="demo-secret") as server:
        pbx = DemoPbx(server, rng=random.Random(args.seed), recordings_dir=work / "asterisk-monitor")
        player = asyncio.create_task(pbx.run(interval=args.interval, speed=args.speed), name="demo-pbx")
        http = HttpConfig(host=args.host, port=args.port, secret=Secret(secrets.token_hex(32)))
        recordings = RecordingsConfig(directory=work / "recordings", asterisk_dir=work / "asterisk-monitor",
                                      asterisk_prefix="/var/spool/asterisk/recordings/")
        config = Config(source=None, ami=None, http=http, store=StoreConfig(path=store_path), users=users,
                        plan=demo_plan(), recordings=recordings)
        settings = LinkSettings(host="127.0.0.1", port=server.port, username="gateway", secret="demo-secret")

        def started(port: int) -> None:
            print(f"demo: built-in PBX on 127.0.0.1:{server.port}, calls stored in {store_path}\n"
                  f"demo: open http://{args.host}:{port}/ and log in as anna, boris or vera (agents 101-103), "
                  f"olga (manager), mark (marketer) or admin; the password is \"demo\"", file=sys.stderr)

        try:
            return await _serve(config, settings, stop_after=args.calls, started=started,
                                alongside=lambda deals: demo_deals(deals, random.Random(args.seed), args.interval))
        finally:
            player.cancel()
            await asyncio.gather(player, return_exceptions=True)


async def demo_deals(deals: Deals, rng: random.Random, interval: float) -> None:
    """The demo's sales: now and then a customer who called buys (or not), and
    yandex posts its spend, so the dashboard has money in it from the start."""
    from datetime import date

    await deals.put_cost({"channel": "yandex", "shop": "A", "date": date.today().isoformat(), "amount": 2500})
    sale = 0
    while True:
        await asyncio.sleep(max(1.0, interval * 3))
        rows = await deals.store.read(
            "SELECT customer FROM calls WHERE direction = 'inbound' AND outcome = 'answered' AND customer IS NOT NULL "
            "ORDER BY started_at DESC LIMIT 20")
        if not rows:
            continue
        sale += 1
        amount = rng.choice((4900, 12500, 31000, 58000))
        await deals.put(parse_deal({"external_id": f"demo-{secrets.token_hex(4)}-{sale}",
                                    "phone": rng.choice(rows)[0], "amount": amount, "margin": round(amount * 0.35),
                                    "status": "won" if rng.random() < 0.6 else "lost",
                                    "date": date.today().isoformat()}, "RU"), time.time())


def demo_plan() -> NumberPlan:
    """The reference plan of the captures and the demo PBX."""
    from gateway.numberplan import Line, Shop

    # Short SLAs, so the demo shows overdue missed calls and their notices within minutes.
    a = Shop("A", "Магазин A", caller_id="+74950000001", supervisor="olga", default_owner="anna",
             callback_sla_minutes=3)
    b = Shop("B", "Shop B", caller_id="+74950000002", supervisor="olga", default_owner="boris",
             callback_sla_minutes=5)
    lines = [Line("+74950000001", a, "direct"), Line("+74950000002", b, "direct"),
             Line("+74950000003", a, "yandex", monthly_fee=3000.0), Line("+74950000004", b, "avito", monthly_fee=1500.0)]
    return NumberPlan(shops={"A": a, "B": b}, lines={line.number: line for line in lines}, default_shop="A")


def demo_users() -> tuple[User, ...]:
    """The demo's people; password "demo" for all. Never used outside ``demo``."""
    pw = hash_password("demo")
    return (
        User("anna", "Анна Иванова", Role.AGENT, pw, team="sales", extensions=("101",)),
        User("boris", "Борис Петров", Role.AGENT, pw, team="sales", extensions=("102",)),
        User("vera", "Vera Smirnova", Role.AGENT, pw, team="sales", extensions=("103",)),
        User("olga", "Ольга Кузнецова", Role.MANAGER, pw, leads=("sales",)),
        User("mark", "Mark Sokolov", Role.MARKETER, pw),
        User("admin", "Administrator", Role.ADMIN, pw),
    )


# -- tokens and passwords -------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.http.secret is None:
        raise ConfigError(f"{args.config}: [http] secret_env: needed to sign tokens the running gateway accepts")
    agent = Directory(config.users).agent(args.agent)
    if agent is None:
        print(f"cti-gateway token: no agent with login or extension {args.agent!r} in {args.config}",
              file=sys.stderr)
        return 2
    signer = Signer(config.http.secret.value.encode(), time.time)
    token, _ = signer.issue("ws", agent.login, args.ttl * 3600)
    print(token)
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("cti-gateway hash-password: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("cti-gateway hash-password: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
