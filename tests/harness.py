"""A whole gateway in the test's event loop: the in-process AMI server, the
real link, tracker, store on a SQLite file, hub and HTTP app on 127.0.0.1.

Tests drive it from the PBX side (play scenarios or capture bytes into the AMI
server) and observe it from the people's side (HTTP, websockets, a browser).
Nothing of ours is replaced: the harness only wires the real parts together
the way ``cti-gateway run`` does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from connectors.ami.dialer import AmiDialer
from connectors.ami.link import AmiLink, LinkSettings
from connectors.ami.normalise import AmiNormaliser
from connectors.ami.server import AmiServer
from crm_bridge.bridge_config import CrmConfig
from crm_bridge.contacts import Contacts
from crm_bridge.store import Store
from gateway.contacts_api import CONTACTS
from gateway.crm_api import BRIDGE, build_bridge
from gateway.crm_api import add_routes as add_crm_routes
from gateway.bitrix24_api import add_routes as add_bitrix24_routes
from gateway.contacts_api import add_routes as add_contact_routes
from gateway.followup import Followup
from gateway.calllog_api import add_routes as add_calllog_routes
from gateway.followup_api import FOLLOWUP
from gateway.followup_api import add_routes as add_followup_routes
from gateway.kpi import KpiRules, VipPlan
from gateway.routing import Router
from gateway.webhooks import Webhooks, connectors_for
from gateway.config import WebhooksConfig
from crm_bridge.contacts import e164
from crm_bridge.inbox import Inbox
from recordings.api import PLAYER, Player
from recordings.api import add_routes as add_recording_routes
from recordings.collector import Collector
from dashboards.api import REPORTS, Reports
from dashboards.api import add_routes as add_dashboard_routes
from dashboards.deals import Deals
from dashboards.rollups import Rollups
from recordings.privacy_api import PRIVACY, PrivacyDesk
from recordings.privacy_api import add_routes as add_privacy_routes
from recordings.storage import Recordings
from gateway.auth import Signer, hash_password
from gateway.click_to_call import ClickToCall
from gateway.config import HttpConfig
from gateway.hub import Hub
from gateway.metrics import Metrics
from gateway.numberplan import NumberPlan, PlanBook
from gateway.presence import Presence
from gateway.record import CallRecord
from gateway.service import Gateway
from gateway.users import Directory, Role, User
from gateway.web import ROLLUPS, build_app

PASSWORD = "correct horse"
SECRET = b"test-signing-secret-0123456789"
_HASH: str | None = None


def password_hash() -> str:
    global _HASH  # computed once per test session: scrypt is slow on purpose
    if _HASH is None:
        _HASH = hash_password(PASSWORD)
    return _HASH


def default_users() -> tuple[User, ...]:
    pw = password_hash()
    return (
        User("anna", "Анна Иванова", Role.AGENT, pw, team="sales", extensions=("101",)),
        User("boris", "Борис Петров", Role.AGENT, pw, team="sales", extensions=("102",)),
        User("vera", "Vera Smirnova", Role.AGENT, pw, team="support", extensions=("103",)),
        User("olga", "Ольга Кузнецова", Role.MANAGER, pw, leads=("sales",)),
        User("pavel", "Pavel Orlov", Role.MANAGER, pw, leads=("support",)),
        User("mark", "Mark Sokolov", Role.MARKETER, pw),
        User("admin", "Administrator", Role.ADMIN, pw),
    )


class Harness:
    def __init__(self, tmp_path: Path, *, users: tuple[User, ...] | None = None,
                 http: HttpConfig | None = None, clock: Callable[[], float] = time.time,
                 plans: PlanBook | None = None, kpi: KpiRules | None = None, vip: VipPlan | None = None,
                 webhooks: WebhooksConfig | None = None, consume_webhooks: bool = True,
                 agents_hear_own: bool = False, crm: CrmConfig | None = None, deliver_crm: bool = True) -> None:
        self.agents_hear_own = agents_hear_own
        self.crm = crm or CrmConfig()
        self.deliver_crm = deliver_crm  # False: the test delivers with ``bridge.round`` (an injected clock)
        self.plans = plans
        self.webhooks_config = webhooks or WebhooksConfig()
        self.consume_webhooks = consume_webhooks  # False: as if the process died after each 2xx
        self.kpi, self.vip = kpi, vip
        self.tmp_path = tmp_path
        self.users = users if users is not None else default_users()
        self.http = http or HttpConfig(host="127.0.0.1", port=0, allowed_origins=("http://crm.example.com",))
        self.clock = clock
        self.ami = AmiServer(username="gateway", secret="s3cret")
        self.records: list[CallRecord] = []
        self.record_added = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._webhook_consumer: asyncio.Task[None] | None
        self._metrics_watch: asyncio.Task[None] | None = None
        self._delivering: asyncio.Task[None] | None = None

    async def start(self) -> Harness:
        await self.ami.start()
        self.store = await Store.open(self.tmp_path / "gw.sqlite3")
        self.metrics = Metrics()
        self.directory = Directory(self.users)
        self.signer = Signer(SECRET, self.clock)
        self.hub = Hub(self.directory, self.metrics, clock=self.clock)
        self.contacts = Contacts(self.store, region=self.http.default_region,
                                 is_login=lambda login: self.directory.by_login(login) is not None)
        self.presence = Presence(
            connected=lambda login: login in self.hub.online(),
            busy_extensions=lambda: self.gateway.tracker.busy_extensions(),
            extensions_of=lambda login: u.extensions if (u := self.directory.by_login(login)) else (),
            clock=self.clock,
        )
        self.link = AmiLink(LinkSettings("127.0.0.1", self.ami.port, "gateway", "s3cret", backoff_initial=0.05))
        plans = self.plans or PlanBook(NumberPlan())
        self.click_to_call = ClickToCall(self.store, AmiDialer(self.link), plans, self.directory, self.clock,
                                         region=self.http.default_region, contacts=self.contacts)
        self.recordings = Recordings(self.store)
        self.recordings_dir = self.tmp_path / "recordings"
        self.asterisk_dir = self.tmp_path / "asterisk-monitor"  # stands for Asterisk's MixMonitor directory
        self.asterisk_dir.mkdir(exist_ok=True)
        self.collector = Collector(self.recordings, directory=self.recordings_dir, asterisk_dir=self.asterisk_dir,
                                   asterisk_prefix="/var/spool/asterisk/recordings/", clock=self.clock,
                                   on_missing=self.metrics.recording_missing)
        self.rollups = Rollups(self.kpi.timezone if self.kpi else "Europe/Moscow", ("order",))
        self.followup = Followup(self.store, plans=plans, directory=self.directory, kpi=self.kpi, vip=self.vip,
                                 hub=self.hub, clock=self.clock)
        self.bridge = build_bridge(self.crm, store=self.store, plans=plans, recordings=self.recordings,
                                   recordings_dir=self.recordings_dir, region=self.http.default_region,
                                   metrics=self.metrics, clock=self.clock)
        await self.bridge.start()
        self.gateway = Gateway(self.store, hub=self.hub, metrics=self.metrics, region=self.http.default_region,
                               crm_url_template=self.http.crm_url_template, plans=plans,
                               contacts=self.contacts, presence=self.presence, click_to_call=self.click_to_call,
                               followup=self.followup, collector=self.collector, rollups=self.rollups,
                               bridge=self.bridge if self.bridge.sinks else None, on_record=self._on_record)
        self.router = Router(contacts=self.contacts, plans=plans, directory=self.directory, presence=self.presence,
                             clock=self.clock, normalise=lambda raw: e164(raw, self.http.default_region))
        self.webhooks = Webhooks(self.gateway, Inbox(self.store),
                                 connectors_for(self.webhooks_config, own_url="http://127.0.0.1"), clock=self.clock)
        self.collector.fetchers.update(
            {name: connector.fetch_recording for name, connector in self.webhooks.connectors.items()})
        self._webhook_consumer = None
        if self.consume_webhooks:
            await self.webhooks.recover()
            self._webhook_consumer = asyncio.create_task(self.webhooks.run())
        await self.start_http()
        self.normaliser = AmiNormaliser()
        self.link.start()
        self._consumer = asyncio.create_task(self.gateway.consume_ami(self.link, self.normaliser))
        self._metrics_watch = asyncio.create_task(self.metrics.watch(self.store))
        if self.deliver_crm:
            self._delivering = asyncio.create_task(self.bridge.run())
        await self.link.wait_connected(10)
        await self.ami.wait_for_login(10)
        return self

    async def start_http(self) -> None:
        app = build_app(http=self.http, store=self.store, hub=self.hub, signer=self.signer,
                        directory=self.directory, metrics=self.metrics, clock=self.clock,
                        presence=self.presence, click_to_call=self.click_to_call)
        app[CONTACTS] = self.contacts
        add_contact_routes(app)
        app[FOLLOWUP] = self.followup
        add_followup_routes(app)
        add_calllog_routes(app)
        self.webhooks.add_routes(app, self.router.decide)
        app[PLAYER] = Player(self.recordings, self.recordings_dir, agents_hear_own=self.agents_hear_own)
        add_recording_routes(app)
        app[PRIVACY] = PrivacyDesk(self.store, self.gateway.plans, self.recordings_dir,
                                   region=self.http.default_region, clock=self.clock)
        add_privacy_routes(app)
        app[ROLLUPS] = self.rollups
        app[REPORTS] = Reports(Deals(self.store, zone=self.rollups.zone.key, region=self.http.default_region),
                               self.gateway.plans, self.rollups.zone.key)
        add_dashboard_routes(app)
        app[BRIDGE] = self.bridge
        add_crm_routes(app)
        add_bitrix24_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop_http(self) -> None:
        """Stop the web server (websockets are closed), keep the port for ``start_http``."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, login: str, ttl: float = 300.0) -> str:
        return self.signer.issue("ws", login, ttl)[0]

    def _on_record(self, record: CallRecord) -> None:
        self.records.append(record)
        self.record_added.set()

    async def wait_records(self, count: int, timeout: float = 10.0) -> list[CallRecord]:
        async def wait() -> None:
            while len(self.records) < count:
                self.record_added.clear()
                await self.record_added.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.records

    async def close(self) -> None:
        if self._webhook_consumer is not None:
            await self.webhooks.idle()
            self._webhook_consumer.cancel()
            await asyncio.gather(self._webhook_consumer, return_exceptions=True)
        await self.link.close()
        await self.click_to_call.drain()
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
        await self.gateway.drain()
        if self._delivering is not None:
            self._delivering.cancel()
            await asyncio.gather(self._delivering, return_exceptions=True)
        await self.bridge.close()
        if self._metrics_watch is not None:
            self._metrics_watch.cancel()
            await asyncio.gather(self._metrics_watch, return_exceptions=True)
        await self.stop_http()
        await self.store.close()
        await self.ami.close()

    async def __aenter__(self) -> Harness:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
