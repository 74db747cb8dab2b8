"""The daily digest: yesterday's figures, by e-mail and Telegram, at each recipient's hour.

Three parts, kept apart:

- ``parse_digest``: the ``[digest]`` config table into frozen dataclasses
  (secrets from the environment, kept out of ``repr``).
- ``compose``: the text of one digest for one local day, read from the store
  (calls by outcome, missed calls and their callbacks, the channel table, KPI
  leaders and laggards, VIP clients behind plan), in Russian or English.
- ``Schedule`` (pure: no clock, no I/O) decides what is due at a given instant
  and what a send's result means for the next attempt; ``Digest`` is the thin
  shell that reads the clock, composes, sends, writes ``digest_sent`` and logs.

A send is one (recipient, local day, channel); ``channel`` is ``email`` (all
of the recipient's addresses in one message) or ``telegram``. A send is done
once its row has ``sent_at``; a restart reads the rows of the last days back,
so the same morning never sends twice. A failure is logged with the recipient
and channel and retried after 1, 5 and 15 minutes, then hourly, until the
recipient's local day ends; a failure that cannot heal by waiting (a refused
address, a bad bot token, a chat that does not exist) is not retried. Either
way the giving up is logged at error level, and the row keeps the last error.
The Telegram bot token is part of the request path: it is never logged, and
errors are built from status codes and the API's own description only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time as _time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import aiosmtplib

from crm_bridge.store import Store
from dashboards.reports import channel_report
from gateway.callbacks import CALLED_BACK
from gateway.followup import Followup
from gateway.kpi import day_bounds
from gateway.numberplan import NumberPlan
from gateway.toml_table import Table
from gateway.users import Role, User

log = logging.getLogger(__name__)

EMAIL, TELEGRAM = "email", "telegram"
LANGUAGES = ("ru", "en")
DEFAULT_RETRY_MINUTES = (1.0, 5.0, 15.0, 60.0)  # the last one repeats until the day ends
TELEGRAM_MAX_TEXT = 4096  # sendMessage refuses longer texts
MAX_ERROR = 500  # characters of an error kept in the table and the log
KEEP_DAYS = 3  # digest_sent rows read back on start: enough for any time zone's "today"
VIP_NAMES = 5
TOP = 3


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    name: str
    at: time  # local wall-clock time of the send
    timezone: str
    language: str = "ru"  # ru | en
    emails: tuple[str, ...] = ()
    telegram_chat_id: str | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return ((EMAIL,) if self.emails else ()) + ((TELEGRAM,) if self.telegram_chat_id else ())


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    from_address: str
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = 30.0


@dataclass(frozen=True)
class TelegramSettings:
    token: str = field(repr=False)
    api_base_url: str = "https://api.telegram.org"
    timeout: float = 30.0


@dataclass(frozen=True)
class DigestConfig:
    recipients: tuple[Recipient, ...] = ()
    smtp: SmtpSettings | None = None
    telegram: TelegramSettings | None = None
    retry_minutes: tuple[float, ...] = DEFAULT_RETRY_MINUTES
    check_seconds: float = 30.0  # how often the loop looks at the clock


_TIME = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_EMAIL = re.compile(r"[^@\s<>,]+@[^@\s<>,]+\.[^@\s<>,]+")


def parse_digest(table: Mapping[str, Any], where: str, environ: Mapping[str, str]) -> DigestConfig:
    """The ``[digest]`` table; ValueError names the key that is wrong."""
    top = Table(table, where, "[digest]")
    smtp_table = top.get("smtp", Mapping, None, "a table [digest.smtp]")
    telegram_table = top.get("telegram", Mapping, None, "a table [digest.telegram]")
    smtp = _smtp(Table(smtp_table, where, "[digest.smtp]"), environ) if smtp_table is not None else None
    telegram = (_telegram(Table(telegram_table, where, "[digest.telegram]"), environ)
                if telegram_table is not None else None)
    retry = top.get("retry_minutes", list, list(DEFAULT_RETRY_MINUTES), "a list of minutes, each > 0")
    if not retry or not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0 for m in retry):
        raise top.fail("retry_minutes", "a non-empty list of minutes, each > 0", retry)
    check = top.get("check_seconds", (int, float), 30.0, "seconds > 0")
    if check <= 0:
        raise top.fail("check_seconds", "seconds > 0", check)
    items = top.get("recipients", list, [], "an array of tables [[digest.recipients]]")
    recipients = []
    for n, item in enumerate(items, 1):
        r = Table(item, where, f"[[digest.recipients]] #{n}")
        recipient = _recipient(r)
        if recipient.emails and smtp is None:
            raise r.fail("email", "addresses only with a [digest.smtp] table", list(recipient.emails))
        if recipient.telegram_chat_id and telegram is None:
            raise r.fail("telegram_chat_id", "a chat only with a [digest.telegram] table", recipient.telegram_chat_id)
        recipients.append(recipient)
    names = [r.name for r in recipients]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise top.fail("recipients", "each recipient's name once", duplicate)
    top.check_unknown()
    return DigestConfig(recipients=tuple(recipients), smtp=smtp, telegram=telegram,
                        retry_minutes=tuple(float(m) for m in retry), check_seconds=float(check))


def _smtp(t: Table, environ: Mapping[str, str]) -> SmtpSettings:
    host = t.get("host", str, None, "a host name")
    if not host:
        raise t.fail("host", "a host name", host)
    port = t.get("port", int, 587, "a port number 1-65535")
    if not 0 < port < 65536:
        raise t.fail("port", "a port number 1-65535", port)
    sender = t.get("from", str, None, "an e-mail address")
    if sender is None or not _EMAIL.fullmatch(sender):
        raise t.fail("from", "an e-mail address", sender)
    timeout = t.get("timeout", (int, float), 30.0, "seconds > 0")
    if timeout <= 0:
        raise t.fail("timeout", "seconds > 0", timeout)
    settings = SmtpSettings(host=host, port=port, from_address=sender,
                            starttls=t.get("starttls", bool, True, "true or false"),
                            username=t.get("username", str, None, "a user name"),
                            password=t.secret("password", environ, "the SMTP password"), timeout=float(timeout))
    if settings.password is not None and settings.username is None:
        raise t.fail("username", "a user name with password_env", None)
    t.check_unknown()
    return settings


def _telegram(t: Table, environ: Mapping[str, str]) -> TelegramSettings:
    token = t.secret("token", environ, "the bot token")
    if not token:
        raise t.fail("token_env", "the name of an environment variable holding the bot token", None)
    base = t.get("api_base_url", str, "https://api.telegram.org", "an http(s) URL")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", base):
        raise t.fail("api_base_url", "an http(s) URL", base)
    timeout = t.get("timeout", (int, float), 30.0, "seconds > 0")
    if timeout <= 0:
        raise t.fail("timeout", "seconds > 0", timeout)
    t.check_unknown()
    return TelegramSettings(token=token, api_base_url=base.rstrip("/"), timeout=float(timeout))


def _recipient(r: Table) -> Recipient:
    name = r.get("name", str, None, "a name")
    if not name:
        raise r.fail("name", "a name", name)
    at = r.get("time", str, "08:00", 'a local time "HH:MM"')
    match = _TIME.fullmatch(at)
    if not match:
        raise r.fail("time", 'a local time "HH:MM"', at)
    zone = r.get("timezone", str, None, 'a time zone such as "Europe/Moscow"')
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise r.fail("timezone", 'a time zone such as "Europe/Moscow"', zone) from None
    language = r.get("language", str, "ru", "ru or en")
    if language not in LANGUAGES:
        raise r.fail("language", "ru or en", language)
    emails = r.get("email", (str, list), [], "an e-mail address or a list of them")
    emails = [emails] if isinstance(emails, str) else emails
    if not all(isinstance(e, str) and _EMAIL.fullmatch(e) for e in emails):
        raise r.fail("email", "an e-mail address or a list of them", emails)
    chat = r.get("telegram_chat_id", (str, int), None, "a Telegram chat id (a number or @channel)")
    if chat is not None and not re.fullmatch(r"-?\d+|@\w{4,}", str(chat)):
        raise r.fail("telegram_chat_id", "a Telegram chat id (a number or @channel)", chat)
    if not emails and chat is None:
        raise r.fail("email", "email and/or telegram_chat_id: somewhere to send to", None)
    r.check_unknown()
    return Recipient(name=name, at=time(int(match[1]), int(match[2])), timezone=zone, language=language,
                     emails=tuple(emails), telegram_chat_id=str(chat) if chat is not None else None)


# -- the text -----------------------------------------------------------------------------

_WORDS: dict[str, dict[str, str]] = {
    "ru": {
        "subject": "Сводка за {day}: звонков {calls}, пропущено {missed}",
        "title": "Сводка за {weekday}, {day} ({zone})",
        "calls": "Звонки",
        "inbound": "Входящие",
        "outbound": "Исходящие",
        "no_calls": "звонков не было",
        "in.answered": "отвечено", "in.missed": "пропущено", "in.abandoned": "брошено", "in.busy": "занято",
        "in.failed": "сбой",
        "out.answered": "дозвонились", "out.missed": "не ответили", "out.abandoned": "сброшено",
        "out.busy": "занято", "out.failed": "сбой",
        "missed": "Пропущенные",
        "missed_calls": "Пропущенных звонков: {calls}, клиентов к перезвону: {tasks}",
        "in_sla": "Перезвонили в срок (SLA): {n}",
        "late": "Перезвонили с опозданием: {n}",
        "called_in": "Клиент дозвонился сам: {n}",
        "closed": "Закрыты вручную: {n}",
        "open": "Ждут перезвона: {n}",
        "escalated": "Просрочены и эскалированы: {n}",
        "channels": "Каналы",
        "head": "Канал|Звонки|Отвечено|Сделки|Расходы|ROI",
        "no_channel": "(без канала)",
        "total": "Итого",
        "kpi": "KPI: баллы за день / план",
        "leaders": "Лучшие",
        "laggards": "Отстают",
        "nobody": "нет агентов",
        "vip": "VIP-клиенты, отстающие от плана: {n}",
        "more": "и ещё {n}",
        "no_name": "без имени",
    },
    "en": {
        "subject": "Digest for {day}: {calls} calls, {missed} missed",
        "title": "Daily digest for {weekday}, {day} ({zone})",
        "calls": "Calls",
        "inbound": "Inbound",
        "outbound": "Outbound",
        "no_calls": "no calls",
        "in.answered": "answered", "in.missed": "missed", "in.abandoned": "abandoned", "in.busy": "busy",
        "in.failed": "failed",
        "out.answered": "answered", "out.missed": "not answered", "out.abandoned": "abandoned",
        "out.busy": "busy", "out.failed": "failed",
        "missed": "Missed calls",
        "missed_calls": "Missed calls: {calls}, customers to call back: {tasks}",
        "in_sla": "Called back within the SLA: {n}",
        "late": "Called back late: {n}",
        "called_in": "Got through by themselves: {n}",
        "closed": "Closed by hand: {n}",
        "open": "Still waiting for a callback: {n}",
        "escalated": "Past the SLA and escalated: {n}",
        "channels": "Channels",
        "head": "Channel|Calls|Answered|Deals|Cost|ROI",
        "no_channel": "(no channel)",
        "total": "Total",
        "kpi": "KPI: points for the day / target",
        "leaders": "Leaders",
        "laggards": "Behind",
        "nobody": "no agents",
        "vip": "VIP clients behind plan: {n}",
        "more": "and {n} more",
        "no_name": "no name",
    },
}
_WEEKDAYS = {
    "ru": ("понедельник", "вторник", "среда", "четверг", "пятница", "суббота", "воскресенье"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}
_OUTCOMES = ("answered", "missed", "abandoned", "busy", "failed")
DIGEST_READER = User("digest", "Daily digest", Role.ADMIN, password_hash="")  # sees everything


def _day_text(day: date, language: str) -> str:
    return day.strftime("%d.%m.%Y") if language == "ru" else day.isoformat()


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _money(value: float, language: str) -> str:
    text = f"{value:,.2f}"
    return text.replace(",", "\u00a0").replace(".", ",") if language == "ru" else text


async def figures(store: Store, followup: Followup, plans: NumberPlan, day: date, zone: str) -> dict[str, Any]:
    """Every number of one local ``day``'s digest, language aside."""
    start, end = day_bounds(day, day, zone)
    calls: dict[str, dict[str, int]] = {"inbound": {}, "outbound": {}}
    for direction, outcome, n in await store.read(
            "SELECT direction, outcome, count(*) FROM calls WHERE started_at >= ? AND started_at < ? "
            "AND direction IN ('inbound', 'outbound') GROUP BY 1, 2", (start, end)):
        calls[direction][outcome] = n
    counts = (await store.read(
        "SELECT count(*), "
        "coalesce(sum(status = 'reached' AND close_reason = ?3 AND within_sla), 0), "
        "coalesce(sum(status = 'reached' AND close_reason = ?3 AND NOT within_sla), 0), "
        "coalesce(sum(status = 'reached' AND close_reason <> ?3), 0), "
        "coalesce(sum(status = 'closed'), 0), coalesce(sum(status = 'open'), 0), "
        "coalesce(sum(escalated_at IS NOT NULL), 0) "
        "FROM callback_tasks WHERE first_attempt_at >= ?1 AND first_attempt_at < ?2", (start, end, CALLED_BACK)))[0]
    tasks = dict(zip(("tasks", "in_sla", "late", "called_in", "closed", "open", "escalated"), map(int, counts)))
    report = await channel_report(store, plans, day, day, zone=zone)

    def row(c: Mapping[str, Any]) -> dict[str, Any]:
        return {"calls": int(c["calls"]), "answered_pct": c["answered_pct"], "deals_won": int(c["deals_won"]),
                "cost": c["cost"], "roi": c["roi"]}

    # A channel with a lead or a callback but no call, deal or cost that day is noise here.
    channels = [{"channel": c["channel"], **row(c)} for c in report["channels"]
                if c["calls"] or c["deals_won"] or c["cost"]]
    totals = row(report["totals"])
    kpi = await followup.kpi_report(followup.agents_of(DIGEST_READER), day, day)
    ranked = sorted(({"login": a["login"], "name": a["name"], "points": a["total"], "target": a["daily_target"],
                      "ratio": a["total"] / a["daily_target"] if a["daily_target"] else math.inf}
                     for a in kpi["agents"]), key=lambda a: (-a["ratio"], -a["points"], a["login"]))
    # Top and bottom three, never the same person in both: with few agents
    # the better half leads and the rest lag.
    leaders = ranked[:min(TOP, math.ceil(len(ranked) / 2))]
    laggards = ranked[len(leaders):][-TOP:][::-1]
    vip = await followup.vip_plan(DIGEST_READER)
    return {
        "day": day.isoformat(), "zone": zone, "calls": calls,
        "missed_calls": sum(calls["inbound"].get(o, 0) for o in ("missed", "abandoned")),
        **tasks, "channels": channels, "totals": totals, "leaders": leaders, "laggards": laggards,
        "vip_behind": len(vip["behind"]), "vip_names": [v["name"] for v in vip["behind"][:VIP_NAMES]],
    }


def render(f: Mapping[str, Any], language: str) -> tuple[str, str]:
    """(subject, plain text) of the figures ``figures`` gives."""
    w = _WORDS[language]
    day = date.fromisoformat(f["day"])
    total_calls = sum(sum(by.values()) for by in f["calls"].values())
    subject = w["subject"].format(day=_day_text(day, language), calls=total_calls, missed=f["missed_calls"])
    lines = [w["title"].format(weekday=_WEEKDAYS[language][day.weekday()], day=_day_text(day, language),
                               zone=f["zone"]), "", w["calls"]]
    for direction, prefix in (("inbound", "in"), ("outbound", "out")):
        by = f["calls"][direction]
        outcomes = [o for o in _OUTCOMES if by.get(o)] + sorted(o for o in by if o not in _OUTCOMES)
        detail = ", ".join(f"{w.get(f'{prefix}.{o}', o)} {by[o]}" for o in outcomes) or w["no_calls"]
        lines.append(f"  {w[direction]}: {sum(by.values())} — {detail}")
    lines += ["", w["missed"], "  " + w["missed_calls"].format(calls=f["missed_calls"], tasks=f["tasks"])]
    lines += [f"  {w[key].format(n=f[key])}" for key in ("in_sla", "late", "called_in", "closed", "open", "escalated")
              if f[key] or key in ("in_sla", "open", "escalated")]
    lines += ["", w["channels"]]
    table = [w["head"].split("|")]
    for c in [*f["channels"], {**f["totals"], "channel": w["total"]}]:
        table.append([c["channel"] or w["no_channel"], str(c["calls"]), _pct(c["answered_pct"]), str(c["deals_won"]),
                      _money(c["cost"], language), _pct(None if c["roi"] is None else 100 * c["roi"])])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  " + "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)).rstrip() for row in table]

    def agents(group: Sequence[Mapping[str, Any]]) -> str:
        return ", ".join(f"{a['name']} {a['points']:g} / {a['target']:g} "
                         f"({_pct(100 * a['ratio'] if a['target'] else None)})" for a in group) or "—"

    lines += ["", w["kpi"]]
    if f["leaders"] or f["laggards"]:
        lines += [f"  {w['leaders']}: {agents(f['leaders'])}", f"  {w['laggards']}: {agents(f['laggards'])}"]
    else:
        lines.append(f"  {w['nobody']}")
    lines += ["", w["vip"].format(n=f["vip_behind"])]
    if f["vip_names"]:
        names = ", ".join(name or w["no_name"] for name in f["vip_names"])
        more = f["vip_behind"] - len(f["vip_names"])
        lines.append(f"  {names}" + (f", {w['more'].format(n=more)}" if more > 0 else ""))
    return subject, "\n".join(lines) + "\n"


async def compose(store: Store, followup: Followup, plans: NumberPlan, day: date, zone: str,
                  language: str) -> tuple[str, str]:
    """(subject, plain text) of the digest for the local ``day`` in ``zone``."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return render(await figures(store, followup, plans, day, zone), language)


# -- the schedule (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Due:
    """One send to make now: ``day`` is the recipient's local date of the send;
    the digest covers the day before."""

    recipient: Recipient
    day: date
    channel: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.recipient.name, self.day.isoformat(), self.channel)


@dataclass(frozen=True, slots=True)
class SendState:
    attempts: int = 0
    last_attempt_at: float | None = None
    sent_at: float | None = None
    error: str | None = None
    given_up: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt's result means: the new state, and when it gave up."""

    state: SendState
    next_at: float | None  # None: sent or given up
    gave_up: bool


class Schedule:
    """Which sends are due when: rules on (recipient, local day, channel) states.
    No clock and no I/O: the caller passes ``now`` and keeps the states stored."""

    def __init__(self, recipients: Sequence[Recipient], retry_minutes: Sequence[float] = DEFAULT_RETRY_MINUTES) -> None:
        self.recipients = tuple(recipients)
        self.retry_seconds = tuple(60.0 * m for m in retry_minutes) or (3600.0,)
        self.states: dict[tuple[str, str, str], SendState] = {}

    def load(self, rows: Iterable[tuple[str, str, str, float | None, int, float | None, str | None]]) -> None:
        """States from stored rows (recipient, day, channel, sent_at, attempts, last_attempt_at, error)."""
        for name, day, channel, sent_at, attempts, last_at, error in rows:
            self.states[(name, day, channel)] = SendState(attempts, last_at, sent_at, error)

    def delay_after(self, attempts: int) -> float:
        return self.retry_seconds[min(attempts, len(self.retry_seconds)) - 1]

    def due(self, now: float) -> list[Due]:
        """Sends whose local time has come today and that are neither done, nor
        given up, nor waiting for their next retry."""
        out = []
        for recipient in self.recipients:
            local = datetime.fromtimestamp(now, ZoneInfo(recipient.timezone))
            if local.time() < recipient.at:
                continue
            for channel in recipient.channels:
                send = Due(recipient, local.date(), channel)
                state = self.states.get(send.key, SendState())
                if state.sent_at is not None or state.given_up:
                    continue
                if state.last_attempt_at is not None and now < state.last_attempt_at + self.delay_after(state.attempts):
                    continue
                out.append(send)
        return out

    def attempted(self, send: Due, at: float, error: str | None, *, retriable: bool = True) -> Outcome:
        """Note one attempt (``error`` None: it went out); retries end with the recipient's local day."""
        before = self.states.get(send.key, SendState())
        if error is None:
            state = SendState(before.attempts + 1, at, at, None)
            self.states[send.key] = state
            return Outcome(state, None, False)
        next_at = at + self.delay_after(before.attempts + 1)
        end_of_day = day_bounds(send.day, send.day, send.recipient.timezone)[1]
        gave_up = not retriable or next_at >= end_of_day
        state = SendState(before.attempts + 1, at, None, error[:MAX_ERROR], gave_up)
        self.states[send.key] = state
        return Outcome(state, None if gave_up else next_at, gave_up)

    def forget_before(self, day: date) -> None:
        """Drop states of days before ``day``: memory stays bounded by recipients x channels x days kept."""
        cutoff = day.isoformat()
        for key in [k for k in self.states if k[1] < cutoff]:
            del self.states[key]


# -- sending ------------------------------------------------------------------------------------


class DeliveryError(Exception):
    """A digest did not go out; ``retriable`` says whether waiting may help."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


def email_message(settings: SmtpSettings, recipient: Recipient, subject: str, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.from_address
    message["To"] = ", ".join(formataddr((recipient.name, address)) for address in recipient.emails)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.from_address.rsplit("@", 1)[1])
    message.set_content(text)
    return message


async def send_email(settings: SmtpSettings, recipient: Recipient, subject: str, text: str) -> None:
    """Send through SMTP (aiosmtplib); errors become DeliveryError."""
    message = email_message(settings, recipient, subject, text)
    try:
        # start_tls None would upgrade only if the server offers it: a config
        # that says starttls must not fall back to plain text silently.
        await aiosmtplib.send(message, hostname=settings.host, port=settings.port, start_tls=settings.starttls,
                              username=settings.username, password=settings.password, timeout=settings.timeout)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"SMTP refused every recipient: {exc}", retriable=False) from None
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"SMTP login refused: {exc.code} {exc.message}", retriable=False) from None
    except aiosmtplib.SMTPResponseException as exc:
        # 5xx is the server's final word; 4xx asks to come back later.
        raise DeliveryError(f"SMTP {exc.code} {exc.message}", retriable=not 500 <= exc.code < 600) from None
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        raise DeliveryError(f"SMTP {settings.host}:{settings.port}: {type(exc).__name__}: {exc}",
                            retriable=True) from None


async def send_telegram(settings: TelegramSettings, chat_id: str, text: str) -> None:
    """POST sendMessage; errors become DeliveryError with the status and the
    API's description, never the URL (it holds the token)."""
    if len(text) > TELEGRAM_MAX_TEXT:
        text = text[:TELEGRAM_MAX_TEXT - 1] + "…"
    url = f"{settings.api_base_url}/bot{settings.token}/sendMessage"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.timeout)) as session:
            async with session.post(url, json={"chat_id": chat_id, "text": text}) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # Connection errors name host and port, not the path; scrub anyway.
        reason = str(exc).replace(settings.token, "***")
        raise DeliveryError(f"Telegram API unreachable: {type(exc).__name__}: {reason}", retriable=True) from None
    ok = isinstance(body, dict) and body.get("ok") is True
    if status == 200 and ok:
        return
    description = body.get("description") if isinstance(body, dict) else None
    detail = f"Telegram API {status}" + (f": {str(description)[:200]}" if description else "")
    # 429 (too many requests) and 5xx heal by waiting; other 4xx (a bad token,
    # an unknown chat, a bot the user blocked) do not.
    raise DeliveryError(detail.replace(settings.token, "***"), retriable=status == 429 or status >= 500 or status == 200)


# -- the shell ------------------------------------------------------------------------------------------


class Digest:
    """Sends each recipient's digest at his local time, once a day, from the
    ``digest_sent`` table of ``store`` (schema version 11)."""

    def __init__(self, config: DigestConfig, store: Store, followup: Followup, *,
                 clock: Callable[[], float] = _time.time) -> None:
        self.config = config
        self.store = store
        self.followup = followup
        self.clock = clock
        self.schedule = Schedule(config.recipients, config.retry_minutes)
        self._loaded = False

    async def load(self) -> None:
        """Read back the sends of the last days (a restart must not send twice)."""
        since = (datetime.fromtimestamp(self.clock()).date() - timedelta(days=KEEP_DAYS)).isoformat()
        rows = await self.store.read(
            "SELECT recipient, day, channel, sent_at, attempts, last_attempt_at, error FROM digest_sent "
            "WHERE day >= ?", (since,))
        self.schedule.load(tuple(row) for row in rows)
        self._loaded = True

    def due(self, now: float) -> list[Due]:
        return self.schedule.due(now)

    async def run_once(self) -> list[Due]:
        """Make every send due now; the sends that went out."""
        if not self._loaded:
            await self.load()
        now = self.clock()
        due = self.due(now)
        if not due:
            return []
        # One text per recipient and day, however many channels: composed one
        # after the other (reads), then every delivery at once.
        texts: dict[tuple[str, date], tuple[str, str] | str] = {}
        for send in due:
            key = (send.recipient.name, send.day)
            if key not in texts:
                texts[key] = await self._compose(send)
        results = await asyncio.gather(*(self._send(send, texts[(send.recipient.name, send.day)]) for send in due))
        self.schedule.forget_before(date.fromtimestamp(now) - timedelta(days=KEEP_DAYS))
        return [send for send, ok in zip(due, results) if ok]

    async def run(self) -> None:
        """Check the clock every ``check_seconds`` until cancelled."""
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the store may be busy: try again next round
                log.warning("daily digest round failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(self.config.check_seconds)

    async def _compose(self, send: Due) -> tuple[str, str] | str:
        """(subject, text), or why it could not be composed (retried like a network error)."""
        try:
            return await compose(self.store, self.followup, self.followup.plans.current,
                                 send.day - timedelta(days=1), send.recipient.timezone, send.recipient.language)
        except Exception as exc:
            return f"cannot compose the digest: {type(exc).__name__}: {exc}"

    async def _deliver(self, send: Due, subject: str, text: str) -> None:
        recipient = send.recipient
        if send.channel == EMAIL:
            assert self.config.smtp is not None  # parse_digest allows no address without [digest.smtp]
            await send_email(self.config.smtp, recipient, subject, text)
        else:
            assert self.config.telegram is not None and recipient.telegram_chat_id is not None
            await send_telegram(self.config.telegram, recipient.telegram_chat_id, f"{subject}\n\n{text}")

    async def _send(self, send: Due, text: tuple[str, str] | str) -> bool:
        recipient = send.recipient
        error: str | None = text if isinstance(text, str) else None
        retriable = True
        if not isinstance(text, str):
            try:
                await self._deliver(send, *text)
            except DeliveryError as exc:
                error, retriable = str(exc), exc.retriable
        at = self.clock()
        outcome = self.schedule.attempted(send, at, error, retriable=retriable)
        state = outcome.state
        if error is None:
            log.info("daily digest for %s sent by %s (attempt %d)", recipient.name, send.channel, state.attempts)
        elif outcome.gave_up:
            log.error("daily digest for %s by %s of %s NOT SENT after %d attempt(s), giving up: %s",
                      recipient.name, send.channel, send.day.isoformat(), state.attempts, error)
        else:
            assert outcome.next_at is not None
            log.warning("daily digest for %s by %s failed (attempt %d), retrying in %.0f min: %s", recipient.name,
                        send.channel, state.attempts, (outcome.next_at - at) / 60, error)
        try:
            await self.store.write((
                "INSERT INTO digest_sent (recipient, day, channel, sent_at, attempts, last_attempt_at, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (recipient, day, channel) DO UPDATE SET "
                "sent_at = excluded.sent_at, attempts = excluded.attempts, "
                "last_attempt_at = excluded.last_attempt_at, error = excluded.error",
                (recipient.name, send.day.isoformat(), send.channel, state.sent_at, state.attempts, at, state.error),
            ))
        except Exception as exc:  # sent but not noted: a restart today may send it again
            log.error("daily digest for %s by %s: cannot note the send: %s", recipient.name, send.channel, exc)
        return error is None
