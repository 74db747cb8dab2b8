"""The daily digest: composed from a scripted day through the real gateway
service and store, sent to a real SMTP server (aiosmtpd) and to an aiohttp
server standing in for the Telegram Bot API, both on 127.0.0.1; nothing of
ours is replaced. Time moves by an injected clock, never by patching sleep.

The figures are worked out by hand from ``tests.test_kpi_vip``'s day
(2026-11-17 in Moscow), plus a meeting for anna, a 3000/month fee on the
direct line and one VIP client nobody called."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import date, time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP as SmtpServer

from crm_bridge.contacts import Contacts
from crm_bridge.store import Store
from dashboards.digest import (
    Digest, DigestConfig, Recipient, Schedule, SmtpSettings, TelegramSettings, compose, figures, parse_digest,
)
from dashboards.rollups import Rollups
from gateway.effects import CallFinished
from gateway.followup import Followup
from gateway.kpi import KpiRules, VipPlan
from gateway.numberplan import NumberPlan, PlanBook
from gateway.service import Gateway
from gateway.users import Directory
from tests.test_kpi_vip import at, day_calls, day_plan, day_users

TOKEN = "123456:SECRET-bot-token"


def fee_plan() -> NumberPlan:
    plan = day_plan()
    lines = {n: replace(line, monthly_fee=3000.0) if line.channel == "direct" else line
             for n, line in plan.lines.items()}
    return replace(plan, lines=lines)


@dataclass
class Day:
    store: Store
    followup: Followup
    plan: NumberPlan
    clock: list[float]


@asynccontextmanager
async def scripted_day(tmp_path: Path) -> AsyncIterator[Day]:
    clock = [at("08:00:00")]
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        plan = fee_plan()
        directory = Directory(day_users())
        plans = PlanBook(plan)
        contacts = Contacts(store, region="RU", is_login=lambda login: directory.by_login(login) is not None,
                            clock=lambda: clock[0])
        followup = Followup(store, plans=plans, directory=directory, kpi=KpiRules(), vip=VipPlan(),
                            clock=lambda: clock[0])
        gateway = Gateway(store, region="RU", plans=plans, contacts=contacts, directory=directory,
                          followup=followup, rollups=Rollups("Europe/Moscow"))
        await contacts.put("+79161110013", {"manager": "vera"}, set_by="admin")
        await contacts.put("+79162220001", {"vip": True, "name": "Иван Петров", "manager": "anna"}, set_by="admin")
        for record in day_calls():
            clock[0] = record.ended_at or record.started_at
            gateway.carry_out(CallFinished(record))
            await gateway.drain()
        await followup.interactions.record(login="anna", kind="meeting", at=at("15:00:00"), points=10.0,
                                           call_id=None, note=None, recorded_by="olga", request_id="m1")
        clock[0] = at("22:00:00")
        assert [t.phone for t in await followup.check_sla()] == ["+79161110013"]
        clock[0] = at("07:00:00", "2026-11-18")
        yield Day(store, followup, plan, clock)
        await gateway.drain()
    finally:
        await store.close()


# -- composing ----------------------------------------------------------------------------


async def test_a_scripted_day_gives_the_digest_figures(tmp_path: Path) -> None:
    async with scripted_day(tmp_path) as d:
        f = await figures(d.store, d.followup, d.plan, date(2026, 11, 17), "Europe/Moscow")
        # Internal c16 and tomorrow's c18 are left out.
        assert f["calls"] == {"inbound": {"answered": 4, "missed": 7, "abandoned": 1},
                              "outbound": {"answered": 3, "busy": 1}}
        # Missed: c06 c09 c11 c13 c14 c15 c17 and abandoned c08; six callers got a task
        # (c17 is withheld): P6 called back in time, P8 late, P11 called in, P13 escalated.
        assert {k: f[k] for k in ("missed_calls", "tasks", "in_sla", "late", "called_in", "closed", "open",
                                  "escalated")} == {"missed_calls": 8, "tasks": 6, "in_sla": 1, "late": 1,
                                                    "called_in": 1, "closed": 0, "open": 3, "escalated": 1}
        # direct: c01 c03 c06 c08 c11 c12 c13 c15 c17 (3 answered), a day of 3000 / 30;
        # yandex: c02 c09; avito: c14.
        assert [(c["channel"], c["calls"], c["answered_pct"], c["deals_won"], c["cost"], c["roi"])
                for c in f["channels"]] == [("direct", 9, 33.3333, 0, 100.0, -1.0), ("yandex", 2, 50.0, 0, 0.0, None),
                                            ("avito", 1, 0.0, 0, 0.0, None)]
        assert (f["totals"]["calls"], f["totals"]["cost"], f["totals"]["roi"]) == (12, 100.0, -1.0)
        # boris 7 / 7, anna 16 / 20, vera 6 / 20.
        assert [(a["login"], a["points"], a["target"]) for a in f["leaders"]] == [("boris", 7.0, 7.0),
                                                                                 ("anna", 16.0, 20.0)]
        assert [(a["login"], a["points"]) for a in f["laggards"]] == [("vera", 6.0)]
        assert (f["vip_behind"], f["vip_names"]) == (1, ["Иван Петров"])

        subject, text = await compose(d.store, d.followup, d.plan, date(2026, 11, 17), "Europe/Moscow", "ru")
        assert subject == "Сводка за 17.11.2026: звонков 16, пропущено 8"
        for line in ("Сводка за вторник, 17.11.2026 (Europe/Moscow)",
                     "  Входящие: 12 — отвечено 4, пропущено 7, брошено 1",
                     "  Исходящие: 4 — дозвонились 3, занято 1",
                     "  Пропущенных звонков: 8, клиентов к перезвону: 6",
                     "  Перезвонили в срок (SLA): 1", "  Перезвонили с опозданием: 1",
                     "  Ждут перезвона: 3", "  Просрочены и эскалированы: 1",
                     "  Лучшие: Борис Петров 7 / 7 (100%), Анна Иванова 16 / 20 (80%)",
                     "  Отстают: Vera Smirnova 6 / 20 (30%)",
                     "VIP-клиенты, отстающие от плана: 1", "  Иван Петров"):
            assert line in text.splitlines(), line
        table = text.split("Каналы\n")[1].split("\n\n")[0].splitlines()
        assert [row.split() for row in table] == [
            ["Канал", "Звонки", "Отвечено", "Сделки", "Расходы", "ROI"],
            ["direct", "9", "33%", "0", "100,00", "-100%"],
            ["yandex", "2", "50%", "0", "0,00", "—"],
            ["avito", "1", "0%", "0", "0,00", "—"],
            ["Итого", "12", "33%", "0", "100,00", "-100%"],
        ]

        subject, text = await compose(d.store, d.followup, d.plan, date(2026, 11, 17), "Europe/Moscow", "en")
        assert subject == "Digest for 2026-11-17: 16 calls, 8 missed"
        assert "  Inbound: 12 — answered 4, missed 7, abandoned 1" in text.splitlines()
        assert "  Called back within the SLA: 1" in text.splitlines()
        table = text.split("Channels\n")[1].split("\n\n")[0].splitlines()
        assert table[0].split() == ["Channel", "Calls", "Answered", "Deals", "Cost", "ROI"]
        assert table[1].split() == ["direct", "9", "33%", "0", "100.00", "-100%"]
        assert len({len(row) for row in table}) == 1  # columns line up


# -- the network fakes ------------------------------------------------------------------------


@dataclass
class Inbox:
    """aiosmtpd's handler: keeps every message it is given."""

    messages: list[tuple[str, list[str], email.message.EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 OK"


@asynccontextmanager
async def smtp_server() -> AsyncIterator[tuple[Inbox, int]]:
    inbox = Inbox()
    # In this loop, not aiosmtpd's Controller thread; hostname given: no DNS lookup.
    server = await asyncio.get_running_loop().create_server(
        lambda: SmtpServer(inbox, hostname="digest.test"), "127.0.0.1", 0)
    try:
        yield inbox, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Bot:
    """The Bot API's sendMessage; answers ``statuses`` in turn, then 200."""

    statuses: list[tuple[int, Mapping[str, Any]]] = field(default_factory=list)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def send_message(self, request: web.Request) -> web.Response:
        self.received.append((request.match_info["token"], await request.json()))
        if self.statuses:
            status, body = self.statuses.pop(0)
            return web.json_response(body, status=status)
        return web.json_response({"ok": True, "result": {"message_id": len(self.received)}})


@asynccontextmanager
async def bot_server(bot: Bot) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/bot{token}/sendMessage", bot.send_message)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def config(smtp_port: int, bot_url: str) -> DigestConfig:
    olga = Recipient("olga", time(8, 0), "Europe/Moscow", "ru", emails=("olga@shop.test", "boss@shop.test"),
                     telegram_chat_id="-100123")
    return DigestConfig(recipients=(olga,),
                        smtp=SmtpSettings("127.0.0.1", "gateway@shop.test", port=smtp_port, starttls=False, timeout=5),
                        telegram=TelegramSettings(TOKEN, api_base_url=bot_url, timeout=5))


# -- sending -------------------------------------------------------------------------------------


async def test_the_digest_goes_by_mail_and_telegram_and_a_failure_is_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dashboards.digest")
    bot = Bot(statuses=[(500, {"ok": False, "error_code": 500, "description": "Internal Server Error"})])
    async with scripted_day(tmp_path) as d, smtp_server() as (inbox, port), bot_server(bot) as url:
        digest = Digest(config(port, url), d.store, d.followup, clock=lambda: d.clock[0])

        d.clock[0] = at("07:59:59", "2026-11-18")
        assert await digest.run_once() == []

        d.clock[0] = at("08:00:00", "2026-11-18")
        sent = await digest.run_once()
        assert [(s.recipient.name, s.day, s.channel) for s in sent] == [("olga", date(2026, 11, 18), "email")]
        [(sender, to, message)] = inbox.messages
        assert (sender, to) == ("gateway@shop.test", ["olga@shop.test", "boss@shop.test"])
        assert message["Subject"] == "Сводка за 17.11.2026: звонков 16, пропущено 8"
        body = message.get_content()
        assert "  Входящие: 12 — отвечено 4, пропущено 7, брошено 1" in body
        assert "  Перезвонили в срок (SLA): 1" in body
        assert [token for token, _ in bot.received] == [TOKEN]
        failure = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "dashboards.digest"]
        assert len(failure) == 1
        assert "olga" in failure[0].getMessage() and "telegram" in failure[0].getMessage()
        assert "retrying in 1 min" in failure[0].getMessage()

        d.clock[0] = at("08:00:30", "2026-11-18")  # the retry waits its minute
        assert digest.due(d.clock[0]) == []
        d.clock[0] = at("08:01:00", "2026-11-18")
        assert [s.channel for s in await digest.run_once()] == ["telegram"]
        assert len(bot.received) == 2 and len(inbox.messages) == 1
        token, payload = bot.received[1]
        assert token == TOKEN and payload["chat_id"] == "-100123"
        assert payload["text"].startswith("Сводка за 17.11.2026: звонков 16, пропущено 8\n\nСводка за вторник")
        assert "  Ждут перезвона: 3" in payload["text"]
        assert TOKEN not in caplog.text and "SECRET" not in caplog.text

        rows = await d.store.read("SELECT recipient, day, channel, sent_at, attempts, error FROM digest_sent "
                                  "ORDER BY channel")
        assert [tuple(r) for r in rows] == [
            ("olga", "2026-11-18", "email", at("08:00:00", "2026-11-18"), 1, None),
            ("olga", "2026-11-18", "telegram", at("08:01:00", "2026-11-18"), 2, None),
        ]

        # A restart the same morning sends nothing again; the next morning is due.
        again = Digest(config(port, url), d.store, d.followup, clock=lambda: d.clock[0])
        d.clock[0] = at("09:30:00", "2026-11-18")
        assert await again.run_once() == []
        assert len(inbox.messages) == 1 and len(bot.received) == 2
        assert [(s.day, s.channel) for s in again.due(at("08:00:00", "2026-11-19"))] == [
            (date(2026, 11, 19), "email"), (date(2026, 11, 19), "telegram")]


async def test_a_send_that_cannot_heal_is_reported_at_error_level_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bot = Bot(statuses=[(403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})])
    async with scripted_day(tmp_path) as d, smtp_server() as (inbox, port), bot_server(bot) as url:
        digest = Digest(config(port, url), d.store, d.followup, clock=lambda: d.clock[0])
        d.clock[0] = at("08:05:00", "2026-11-18")
        assert [s.channel for s in await digest.run_once()] == ["email"]
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "dashboards.digest"]
        assert "olga" in error.getMessage() and "telegram" in error.getMessage()
        assert "bot was blocked" in error.getMessage() and TOKEN not in caplog.text
        d.clock[0] = at("12:00:00", "2026-11-18")
        assert digest.due(d.clock[0]) == [] and await digest.run_once() == []
        rows = await d.store.read("SELECT sent_at, attempts, error FROM digest_sent WHERE channel = 'telegram'")
        assert [tuple(r) for r in rows] == [(None, 1, "Telegram API 403: Forbidden: bot was blocked by the user")]


async def test_the_loop_sends_at_the_local_time(tmp_path: Path) -> None:
    bot = Bot()
    async with scripted_day(tmp_path) as d, smtp_server() as (inbox, port), bot_server(bot) as url:
        cfg = replace(config(port, url), check_seconds=0.01)
        digest = Digest(cfg, d.store, d.followup, clock=lambda: d.clock[0])
        d.clock[0] = at("07:59:00", "2026-11-18")
        task = asyncio.create_task(digest.run())
        try:
            await asyncio.sleep(0.05)
            assert inbox.messages == [] and bot.received == []
            d.clock[0] = at("08:00:00", "2026-11-18")
            for _ in range(500):
                if inbox.messages and bot.received:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(inbox.messages) == 1 and len(bot.received) == 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


# -- the schedule, by itself ---------------------------------------------------------------------


def test_retries_back_off_and_end_with_the_day() -> None:
    vladivostok = Recipient("ivan", time(22, 0), "Asia/Vladivostok", "en", telegram_chat_id="42")
    schedule = Schedule([vladivostok])
    local = "2026-11-18T{}+10:00"

    def ts(clock: str) -> float:
        from datetime import datetime
        return datetime.fromisoformat(local.format(clock)).timestamp()

    assert schedule.due(ts("21:59:59")) == []
    [send] = schedule.due(ts("22:00:00"))
    waits = []
    now = ts("22:00:00")
    while True:
        outcome = schedule.attempted(send, now, "Telegram API 502")
        if outcome.gave_up:
            break
        assert outcome.next_at is not None
        assert schedule.due(outcome.next_at - 1) == []
        assert schedule.due(outcome.next_at) == [send]
        waits.append((outcome.next_at - now) / 60)
        now = outcome.next_at
    # 22:00, 22:01, 22:06, 22:21, 23:21; the next hour would be tomorrow.
    assert waits == [1, 5, 15, 60]
    assert outcome.state.attempts == 5 and schedule.due(ts("23:59:00")) == []


# -- the config ------------------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "smtp": {"host": "smtp.shop.test", "port": 587, "starttls": True, "username": "gw",
             "password_env": "SMTP_PASSWORD", "from": "gateway@shop.test"},
    "telegram": {"token_env": "BOT_TOKEN", "api_base_url": "http://127.0.0.1:8081/"},
    "recipients": [
        {"name": "olga", "time": "08:00", "timezone": "Europe/Moscow", "language": "ru",
         "email": ["olga@shop.test"], "telegram_chat_id": -100123},
        {"name": "boss", "time": "07:30", "timezone": "Asia/Yekaterinburg", "language": "en",
         "email": "boss@shop.test"},
    ],
}
ENV = {"SMTP_PASSWORD": "pw-SECRET", "BOT_TOKEN": TOKEN}


def test_the_config_table_is_read_with_secrets_from_the_environment() -> None:
    cfg = parse_digest(GOOD, "gw.toml", ENV)
    assert cfg.smtp is not None and cfg.telegram is not None
    assert (cfg.smtp.password, cfg.telegram.token, cfg.telegram.api_base_url) == ("pw-SECRET", TOKEN,
                                                                                  "http://127.0.0.1:8081")
    assert cfg.recipients[0] == Recipient("olga", time(8, 0), "Europe/Moscow", "ru", ("olga@shop.test",), "-100123")
    assert cfg.recipients[1].emails == ("boss@shop.test",) and cfg.recipients[1].channels == ("email",)
    assert cfg.retry_minutes == (1.0, 5.0, 15.0, 60.0)
    assert "SECRET" not in repr(cfg)


@pytest.mark.parametrize(("change", "message"), [
    ({"recipients": [{**GOOD["recipients"][0], "time": "8:00"}]},
     "[[digest.recipients]] #1 time: expected a local time \"HH:MM\", got '8:00'"),
    ({"recipients": [{**GOOD["recipients"][0], "timezone": "Mars/Olympus"}]},
     "[[digest.recipients]] #1 timezone: expected a time zone"),
    ({"recipients": [{**GOOD["recipients"][0], "language": "de"}]},
     "[[digest.recipients]] #1 language: expected ru or en, got 'de'"),
    ({"recipients": [{"name": "x", "timezone": "UTC"}]},
     "[[digest.recipients]] #1 email: expected email and/or telegram_chat_id"),
    ({"smtp": {**GOOD["smtp"], "port": "25"}}, "[digest.smtp] port: expected a port number 1-65535, got '25'"),
    ({"smtp": {**GOOD["smtp"], "starttls": "yes"}}, "[digest.smtp] starttls: expected true or false, got 'yes'"),
    ({"smtp": {**GOOD["smtp"], "password": "x"}}, "[digest.smtp] password: secrets are not kept in the file"),
    ({"smtp": {**GOOD["smtp"], "password_env": "NOPE"}},
     "[digest.smtp] password_env: expected an environment variable holding the SMTP password, got 'NOPE'"),
    ({"telegram": {"api_base_url": "http://x"}}, "[digest.telegram] token_env: expected"),
    ({"telegram": None}, "[digest] telegram: expected a table [digest.telegram], got None"),
    ({"colour": "red"}, "[digest] colour: expected one of"),
])
def test_a_bad_config_names_its_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_digest({**GOOD, **change}, "gw.toml", ENV)
    assert str(caught.value).startswith(f"gw.toml: {message}"), str(caught.value)
    assert "SECRET" not in str(caught.value)


def test_a_chat_needs_the_telegram_table() -> None:
    table = {k: v for k, v in GOOD.items() if k != "telegram"}
    with pytest.raises(ValueError, match=r"\[\[digest.recipients\]\] #1 telegram_chat_id: expected a chat only"):
        parse_digest(table, "gw.toml", ENV)
