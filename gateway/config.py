"""Configuration: one TOML file plus the environment, read into frozen
dataclasses. Every error names the file, the key and what was expected.

Secrets never live in the file: the file names an environment variable
(``secret_env``) or a file (``secret_file``) that holds them, and they are kept
out of ``repr`` so they cannot reach a log.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from datetime import date, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crm_bridge.bridge_config import CrmConfig, parse_crm
from dashboards.digest import DigestConfig, parse_digest
from gateway.auth import is_password_hash
from gateway.phones import format_e164, parse_phone
from gateway.kpi import DEFAULT_POINTS, KpiRules, VipPlan
from gateway.logs import FORMATS as LOG_FORMATS
from gateway.logs import LEVELS as LOG_LEVELS
from gateway.numberplan import WEEKDAYS, Line, NumberPlan, Shop
from gateway.users import Role, User


class ConfigError(Exception):
    """A configuration problem, worded for the administrator who must fix it."""


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __str__(self) -> str:
        return "**********"


@dataclass(frozen=True)
class AmiConfig:
    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "gateway"
    secret: Secret = Secret("")
    connect_timeout: float = 5.0
    login_timeout: float = 5.0
    recording_variable: str = "RECFILE"
    did_variable: str = "DID"
    excessive_rights: str = "refuse"  # or "warn": the AMI user holds system/command/config write rights


DEFAULT_CALL_RESULTS = ("order", "question", "complaint", "spam", "wrong_number")


@dataclass(frozen=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    secret: Secret | None = None  # signs sessions and tokens; None: a random one per process
    allowed_origins: tuple[str, ...] = ()
    cookie_secure: bool = False
    session_hours: float = 12.0
    default_region: str = "RU"
    crm_url_template: str | None = None  # e.g. "https://crm.example.com/contacts?phone={phone}"
    call_results: tuple[str, ...] = DEFAULT_CALL_RESULTS


@dataclass(frozen=True)
class RoutingConfig:
    fastagi: bool = False  # serve FastAGI for Asterisk's AGI(agi://...) routing
    host: str = "127.0.0.1"
    port: int = 4573
    deadline_ms: int = 300  # answer within this, or set nothing (the dialplan falls back)
    sticky_days: float = 90.0  # callers seen within this go to their assigned manager
    vip_fallback: str | None = None  # ROUTE_FALLBACK for VIP callers: a queue name or a dial string
    wrap_up_seconds: float = 0.0  # after a call, an agent gets no routed calls for this long
    dial_string: str = "PJSIP/{extension}"


@dataclass(frozen=True)
class StoreConfig:
    path: Path = Path("var/cti-gateway.sqlite3")


@dataclass(frozen=True)
class LoggingConfig:
    format: str = "text"  # "json": one JSON object per line, for a log shipper
    level: str = "info"


@dataclass(frozen=True)
class AgentConfig:
    extension: str
    name: str
    devices: tuple[str, ...]


# The secrets each cloud PBX signs with (``{name}_env`` / ``{name}_file`` in its account table).
PROVIDER_SECRETS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "zadarma": (("secret", "the account's API secret (Zadarma: Settings > API)"),),
    "novofon": (("secret", "the account's API secret (Novofon: Settings > API)"),),
    "mango": (("key", "the VPBX API key (vpbx_api_key)"), ("salt", "the VPBX API salt (signing key)")),
    "sipuni": (("url_token", "a long random token that goes into the URL set in Sipuni"),),
    "twilio": (("auth_token", "the account's Auth Token"),),
}


@dataclass(frozen=True)
class WebhookAccount:
    """One account of a cloud PBX: its URL is /webhooks/{provider}/{name}/..."""

    provider: str
    name: str
    secrets: Mapping[str, Secret]
    allowed_ips: tuple[str, ...] = ()  # networks the provider calls from; empty: any
    timezone: str = "Europe/Moscow"  # for providers whose times carry no zone (Zadarma)
    api_base_url: str | None = None  # where commands go (Mango's commands/route)
    route_deadline_ms: int = 1000  # a routing reply later than this carries no route
    public_url: str | None = None  # the URL the provider calls when a proxy maps it elsewhere
    options: Mapping[str, str] = field(default_factory=dict)  # provider-specific settings (README per provider)


@dataclass(frozen=True)
class RecordingsConfig:
    directory: Path = Path("var/recordings")  # where the gateway keeps its transcoded files
    asterisk_dir: Path | None = None  # where the gateway reads the files MixMonitor wrote (a mount)
    asterisk_prefix: str = "/var/spool/asterisk/monitor/"  # the same directory as Asterisk names it
    format: str = "opus"  # opus (Ogg) or mp3
    bitrate: str = "24k"
    keep_original: bool = True  # False: delete Asterisk's file once transcoded
    concurrency: int = 2  # transcodings at once (each runs ffmpeg off the event loop)
    agents_hear_own: bool = False  # agents may play the calls they took part in
    link_minutes: float = 30.0  # how long a player's signed link stays valid


@dataclass(frozen=True)
class ReportsConfig:
    qualified_results: tuple[str, ...] = ("order",)  # call results that make a call "qualified"
    roi_basis: str = "margin"  # ROI = (margin - cost) / cost, or (revenue - cost) / cost


@dataclass(frozen=True)
class WebhooksConfig:
    public_base_url: str | None = None  # the gateway as providers reach it (signatures over URLs)
    accounts: tuple[WebhookAccount, ...] = ()


@dataclass(frozen=True)
class Config:
    source: Path | None
    ami: AmiConfig | None
    http: HttpConfig
    store: StoreConfig
    agents: tuple[AgentConfig, ...] = ()
    users: tuple[User, ...] = ()
    plan: NumberPlan = NumberPlan()
    routing: RoutingConfig = RoutingConfig()
    kpi: KpiRules = KpiRules()
    vip: VipPlan = VipPlan()
    webhooks: WebhooksConfig = field(default_factory=lambda: WebhooksConfig())
    recordings: RecordingsConfig = field(default_factory=lambda: RecordingsConfig())
    reports: ReportsConfig = ReportsConfig()
    digest: DigestConfig = DigestConfig()
    crm: CrmConfig = CrmConfig()
    logging: LoggingConfig = LoggingConfig()

    def agent_devices(self) -> dict[str, str]:
        """Device name -> extension, for the AMI channel classifier."""
        return {device: agent.extension for agent in self.agents for device in agent.devices}


class _Reader:
    """Typed access to one table of the file, naming the key on error."""

    def __init__(self, where: str, table: Mapping[str, Any], name: str) -> None:
        self.where, self.table, self.name = where, table, name
        self.used: set[str] = set()

    def _fail(self, key: str, expected: str, got: Any) -> ConfigError:
        return ConfigError(f"{self.where}: [{self.name}] {key}: expected {expected}, got {got!r}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, expected: str) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise self._fail(key, expected, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self._fail(key, expected, value)  # TOML allows nan and inf
        return value

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, "a string")
        if (required and value is None) or (value is not None and not value.strip()):
            raise self._fail(key, "a non-empty string", value)
        return str(value)

    def port(self, key: str, default: int) -> int:
        value = self.get(key, int, default, "an integer 1-65535")
        if not 1 <= value <= 65535:
            raise self._fail(key, "an integer 1-65535", value)
        return int(value)

    def seconds(self, key: str, default: float) -> float:
        value = self.get(key, float, default, "a number of seconds > 0")
        if value <= 0:
            raise self._fail(key, "a number of seconds > 0", value)
        return float(value)

    def check_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"{self.where}: [{self.name}] {unknown[0]}: unknown key (known: {', '.join(sorted(self.used))})")


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; relative paths in it are relative to it."""
    source = Path(path)
    return parse_config(_read_toml(source), source=source, environ=os.environ if environ is None else environ)


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc


def parse_config(data: Mapping[str, Any], *, source: Path | None, environ: Mapping[str, str]) -> Config:
    where = str(source) if source else "<config>"
    base = source.parent if source else Path.cwd()
    known = {"ami", "http", "store", "agents", "users", "shops", "numbers", "plan", "routing", "kpi", "vip",
             "webhooks", "recordings", "reports", "digest", "crm", "logging"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{where}: [{key}]: unknown section (known: {', '.join(sorted(known))})")

    def table(name: str) -> _Reader:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}]: expected a table, got {value!r}")
        return _Reader(where, value, name)

    ami = None
    if "ami" in data:
        r = table("ami")
        ami = AmiConfig(
            host=r.text("host", "127.0.0.1"),
            port=r.port("port", 5038),
            username=r.text("username", required=True),
            secret=_secret(r, base, environ),
            connect_timeout=r.seconds("connect_timeout", 5.0),
            login_timeout=r.seconds("login_timeout", 5.0),
            recording_variable=r.text("recording_variable", "RECFILE"),
            did_variable=r.text("did_variable", "DID"),
            excessive_rights=r.text("excessive_rights", "refuse"),
        )
        if ami.excessive_rights not in ("refuse", "warn"):
            raise r._fail("excessive_rights", '"refuse" or "warn"', ami.excessive_rights)
        r.check_unknown()

    r = table("http")
    has_secret = "secret_env" in r.table or "secret_file" in r.table
    http = HttpConfig(
        host=r.text("host", "127.0.0.1"),
        port=r.port("port", 8080),
        secret=_secret(r, base, environ) if has_secret else None,
        allowed_origins=tuple(_strings(r, "allowed_origins", (), "a list of origins like \"https://crm.example.com\"")),
        cookie_secure=r.get("cookie_secure", bool, False, "true or false"),
        session_hours=r.seconds("session_hours", 12.0),
        default_region=r.text("default_region", "RU").upper(),
        crm_url_template=r.get("crm_url_template", str, None, "a URL with {phone} or {contact_id}"),
        call_results=tuple(_strings(r, "call_results", DEFAULT_CALL_RESULTS, "a non-empty list of result names")),
    )
    if not http.call_results:
        raise r._fail("call_results", "a non-empty list of result names", [])
    for origin in http.allowed_origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise r._fail("allowed_origins", 'origins like "https://crm.example.com" (scheme and host, no path)', origin)
    if http.secret is not None and len(http.secret.value.encode()) < 16:
        raise ConfigError(f"{where}: [http] secret_env: expected a secret of at least 16 bytes (32 random bytes are best)")
    r.check_unknown()

    r = table("store")
    store_path = Path(r.text("path", "var/cti-gateway.sqlite3"))
    store = StoreConfig(path=store_path if store_path.is_absolute() else base / store_path)
    r.check_unknown()

    agents = _agents(data.get("agents", []), where)
    users = _users(data.get("users", []), where)
    plan = _plan(data, where, {u.login for u in users}, http.default_region)
    r = table("routing")
    dial_string = r.text("dial_string", "PJSIP/{extension}")
    if "{extension}" not in dial_string:
        raise r._fail("dial_string", 'a dial string containing {extension}, like "PJSIP/{extension}"', dial_string)
    deadline = r.get("deadline_ms", int, 300, "milliseconds between 10 and 5000")
    if not 10 <= deadline <= 5000:
        raise r._fail("deadline_ms", "milliseconds between 10 and 5000", deadline)
    wrap_up = r.get("wrap_up_seconds", float, 0.0, "seconds >= 0")
    if wrap_up < 0:
        raise r._fail("wrap_up_seconds", "seconds >= 0", wrap_up)
    routing = RoutingConfig(
        fastagi=r.get("fastagi", bool, False, "true or false"),
        host=r.text("host", "127.0.0.1"),
        port=r.port("port", 4573),
        deadline_ms=deadline,
        sticky_days=r.seconds("sticky_days", 90.0),
        vip_fallback=r.get("vip_fallback", str, None, "a queue name or a dial string"),
        wrap_up_seconds=wrap_up,
        dial_string=dial_string,
    )
    r.check_unknown()
    return Config(source=source, ami=ami, http=http, store=store, agents=agents, users=users, plan=plan,
                  routing=routing, kpi=_kpi(table("kpi")), vip=_vip(table("vip")),
                  webhooks=_webhooks(data.get("webhooks", {}), where, base, environ),
                  recordings=_recordings(table("recordings"), base),
                  reports=_reports(table("reports"), http.call_results),
                  digest=_digest(data.get("digest", {}), where, environ),
                  crm=_crm(data.get("crm", {}), where, environ, base),
                  logging=_logging(table("logging")))


def load_store_config(path: str | os.PathLike[str]) -> StoreConfig:
    """Only ``[store]`` of a config file: what ``backup`` needs, without the
    secrets the other sections name (an administrator's shell lacks them)."""
    source = Path(path)
    return parse_config({"store": _read_toml(source).get("store", {})}, source=source, environ={}).store


def _logging(r: _Reader) -> LoggingConfig:
    fmt = r.text("format", "text")
    if fmt not in LOG_FORMATS:
        raise r._fail("format", " or ".join(f'"{f}"' for f in LOG_FORMATS), fmt)
    level = r.text("level", "info").lower()
    if level not in LOG_LEVELS:
        raise r._fail("level", "one of " + ", ".join(f'"{name}"' for name in LOG_LEVELS), level)
    r.check_unknown()
    return LoggingConfig(format=fmt, level=level)


def _crm(table: Any, where: str, environ: Mapping[str, str], base: Path) -> CrmConfig:
    try:
        return parse_crm(table, where, environ, base)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _digest(table: Any, where: str, environ: Mapping[str, str]) -> DigestConfig:
    try:
        return parse_digest(table, where, environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _reports(r: _Reader, results: tuple[str, ...]) -> ReportsConfig:
    qualified = tuple(_strings(r, "qualified_results", ("order",), "a list of call results"))
    for result in qualified:
        if result not in results:
            raise r._fail("qualified_results", f"results from [http] call_results ({', '.join(results)})", result)
    roi = r.text("roi_basis", "margin")
    if roi not in ("margin", "revenue"):
        raise r._fail("roi_basis", '"margin" or "revenue"', roi)
    r.check_unknown()
    return ReportsConfig(qualified_results=qualified, roi_basis=roi)


def _recordings(r: _Reader, base: Path) -> RecordingsConfig:
    def path(key: str, default: str | None) -> Path | None:
        raw = r.get(key, str, default, "a directory path")
        if raw is None:
            return None
        value = Path(raw)
        return value if value.is_absolute() else base / value

    fmt = r.text("format", "opus")
    if fmt not in ("opus", "mp3"):
        raise r._fail("format", '"opus" (Ogg) or "mp3"', fmt)
    bitrate = r.text("bitrate", "24k")
    if not bitrate[:-1].isdigit() or bitrate[-1] != "k" or not 8 <= int(bitrate[:-1]) <= 320:
        raise r._fail("bitrate", 'kilobits per second like "24k" (8k to 320k)', bitrate)
    concurrency = r.get("concurrency", int, 2, "a whole number from 1 to 16")
    if not 1 <= concurrency <= 16:
        raise r._fail("concurrency", "a whole number from 1 to 16", concurrency)
    prefix = r.text("asterisk_prefix", "/var/spool/asterisk/monitor/")
    directory = path("directory", "var/recordings")
    assert directory is not None
    config = RecordingsConfig(
        directory=directory,
        asterisk_dir=path("asterisk_dir", None),
        asterisk_prefix=prefix if prefix.endswith("/") else prefix + "/",
        format=fmt,
        bitrate=bitrate,
        keep_original=r.get("keep_original", bool, True, "true or false"),
        concurrency=concurrency,
        agents_hear_own=r.get("agents_hear_own", bool, False, "true or false"),
        link_minutes=r.seconds("link_minutes", 30.0),
    )
    r.check_unknown()
    return config


def _webhooks(data: Any, where: str, base: Path, environ: Mapping[str, str]) -> WebhooksConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [webhooks]: expected a table, got {data!r}")
    top = _Reader(where, {k: v for k, v in data.items() if k not in PROVIDER_SECRETS}, "webhooks")
    public = top.get("public_base_url", str, None, 'the public URL of the gateway, like "https://gw.example.com"')
    if public is not None and (not public.startswith(("https://", "http://")) or public.count("/") != 2):
        raise top._fail("public_base_url", 'a URL like "https://gw.example.com" (scheme and host, no path)', public)
    top.check_unknown()
    accounts: list[WebhookAccount] = []
    for provider, secret_names in PROVIDER_SECRETS.items():
        seen: set[str] = set()
        for r in _table_list(data, provider, where):
            r.name = f"webhooks.{provider} #{r.name.split('#')[1]}"
            name = r.text("name", required=True)
            if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 40:
                raise r._fail("name", "letters, digits, '-' or '_' (it is part of the URL)", name)
            if name in seen:
                raise r._fail("name", f"a name not used by another {provider} account", name)
            seen.add(name)
            secrets = {key: _secret(r, base, environ, key, what) for key, what in secret_names}
            allowed = tuple(_strings(r, "allowed_ips", (), 'a list of addresses or networks like "185.45.152.40/30"'))
            for net in allowed:
                try:
                    ipaddress.ip_network(net, strict=False)
                except ValueError:
                    raise r._fail("allowed_ips", 'addresses or networks like "185.45.152.40/30"', net) from None
            deadline = r.get("route_deadline_ms", int, 1000, "milliseconds between 50 and 10000")
            if not 50 <= deadline <= 10000:
                raise r._fail("route_deadline_ms", "milliseconds between 50 and 10000", deadline)
            api = r.get("api_base_url", str, None, 'a URL like "https://app.mango-office.ru/vpbx"')
            if api is not None and not api.startswith(("https://", "http://")):
                raise r._fail("api_base_url", 'a URL like "https://app.mango-office.ru/vpbx"', api)
            own = r.get("public_url", str, None, 'the URL the provider calls, like "https://gw.example.com/twilio"')
            if own is not None and not own.startswith(("https://", "http://")):
                raise r._fail("public_url", 'the URL the provider calls, like "https://gw.example.com/twilio"', own)
            options = r.get("options", dict, {}, "a table of provider settings (strings)")
            for key, value in options.items():
                if not isinstance(value, str):
                    raise r._fail(f"options.{key}", "a string", value)
            accounts.append(WebhookAccount(provider=provider, name=name, secrets=secrets, allowed_ips=allowed,
                                           timezone=_zone(r, "timezone", "Europe/Moscow"),
                                           api_base_url=api.rstrip("/") if api else None,
                                           route_deadline_ms=deadline, public_url=own.rstrip("/") if own else None,
                                           options=dict(options)))
            r.check_unknown()
    return WebhooksConfig(public_base_url=public.rstrip("/") if public else None, accounts=tuple(accounts))


def _kpi(r: _Reader) -> KpiRules:
    points_raw = r.get("points", dict, dict(DEFAULT_POINTS), "a table of interaction kind = points")
    points: dict[str, float] = {}
    for kind, value in points_raw.items():
        if not isinstance(kind, str) or not kind.replace("_", "").isalnum() or len(kind) > 40:
            raise r._fail("points", "kinds made of letters, digits and '_' (like meeting = 10)", kind)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise r._fail(f"points.{kind}", "a number of points >= 0", value)
        points[kind] = float(value)
    target = r.get("daily_target", float, 20.0, "points a day, a number >= 0")
    if target < 0:
        raise r._fail("daily_target", "points a day, a number >= 0", target)
    zone = _zone(r, "timezone", "Europe/Moscow")
    r.check_unknown()
    return KpiRules(points=points, daily_target=float(target), timezone=zone)


def _vip(r: _Reader) -> VipPlan:
    calls = r.get("calls", int, 2, "a whole number of calls >= 0")
    if calls < 0:
        raise r._fail("calls", "a whole number of calls >= 0", calls)
    period = r.text("period", "month")
    if period not in ("month", "week"):
        raise r._fail("period", '"month" or "week"', period)
    r.check_unknown()
    return VipPlan(calls=calls, period=period)


def _zone(r: _Reader, key: str, default: str) -> str:
    zone = r.text(key, default)
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise r._fail(key, 'an IANA time zone like "Europe/Moscow"', zone) from None
    return zone


def _table_list(data: Mapping[str, Any], key: str, where: str) -> list[_Reader]:
    items = data.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigError(f"{where}: [[{key}]]: expected an array of tables, got {items!r}")
    return [_Reader(where, item, f"{key} #{n + 1}") for n, item in enumerate(items)]


def _e164(r: _Reader, key: str, region: str) -> str:
    raw = r.text(key, required=True)
    parsed = parse_phone(raw, region)
    if parsed is None:
        raise r._fail(key, "a phone number, best in E.164 like \"+74950000001\"", raw)
    return format_e164(parsed)


def _window(r: _Reader, key: str, text: str) -> tuple[time, time] | None:
    if text.strip().lower() in ("", "closed"):
        return None
    try:
        start, end = (t.strip() for t in text.split("-"))
        opens = time.fromisoformat(start)
        closes = time(0) if end == "24:00" else time.fromisoformat(end)
    except ValueError:
        raise r._fail(key, 'hours like "09:00-21:00" or "closed"', text) from None
    if closes == time(0):
        closes = time.max  # "09:00-24:00" or "-00:00": until midnight
    if not opens < closes:
        raise r._fail(key, "an opening time before the closing time", text)
    return (opens, closes)


def _plan(data: Mapping[str, Any], where: str, logins: set[str], region: str) -> NumberPlan:
    shops: dict[str, Shop] = {}
    for r in _table_list(data, "shops", where):
        shop_id = r.text("id", required=True)
        if shop_id in shops:
            raise r._fail("id", "a shop id not used by another shop", shop_id)
        zone = _zone(r, "timezone", "Europe/Moscow")
        hours_raw = r.get("hours", (str, dict), "00:00-24:00", 'hours like "09:00-21:00" or a table per weekday')
        hours: tuple[tuple[time, time] | None, ...]
        if isinstance(hours_raw, str):
            hours = (_window(r, "hours", hours_raw),) * 7
        else:
            unknown = set(hours_raw) - set(WEEKDAYS)
            if unknown:
                raise r._fail("hours", f"weekday keys {', '.join(WEEKDAYS)}", sorted(unknown)[0])
            hours = tuple(_window(r, f"hours.{day}", str(hours_raw.get(day, "closed"))) for day in WEEKDAYS)
        holidays = []
        for day in r.get("holidays", list, [], "a list of dates like \"2027-01-01\""):
            try:
                holidays.append(day if isinstance(day, date) else date.fromisoformat(str(day)))
            except ValueError:
                raise r._fail("holidays", 'dates like "2027-01-01"', day) from None
        supervisor = r.get("supervisor", str, None, "a user's login")
        if supervisor is not None and supervisor not in logins:
            raise r._fail("supervisor", "the login of a user in [[users]]", supervisor)
        default_owner = r.get("default_owner", str, None, "a user's login")
        if default_owner is not None and default_owner not in logins:
            raise r._fail("default_owner", "the login of a user in [[users]]", default_owner)
        sla = r.get("callback_sla_minutes", float, 30.0, "minutes of working time, a number > 0")
        if not sla > 0:
            raise r._fail("callback_sla_minutes", "minutes of working time, a number > 0", sla)
        keep_days = r.get("recordings_days", int, 365, "days to keep recordings, >= 0 (0: forever)")
        if keep_days < 0:
            raise r._fail("recordings_days", "days to keep recordings, >= 0 (0: forever)", keep_days)
        vip_calls = r.get("vip_calls", int, None, "a whole number of calls >= 0")
        if vip_calls is not None and vip_calls < 0:
            raise r._fail("vip_calls", "a whole number of calls >= 0", vip_calls)
        shops[shop_id] = Shop(
            shop_id=shop_id,
            name=r.text("name", shop_id),
            caller_id=_e164(r, "caller_id", region) if "caller_id" in r.table else None,
            timezone=zone,
            hours=hours,
            holidays=frozenset(holidays),
            supervisor=supervisor,
            default_owner=default_owner,
            callback_sla_minutes=float(sla),
            vip_calls=vip_calls,
            recordings_days=keep_days,
        )
        r.check_unknown()
    lines: dict[str, Line] = {}
    for r in _table_list(data, "numbers", where):
        number = _e164(r, "number", region)
        if number in lines:
            raise r._fail("number", "a number not listed twice", number)
        shop_id = r.text("shop", required=True)
        if shop_id not in shops:
            raise r._fail("shop", f"the id of a shop in [[shops]] ({', '.join(shops) or 'none defined'})", shop_id)
        fee = r.get("monthly_fee", float, 0.0, "a number >= 0")
        if fee < 0:
            raise r._fail("monthly_fee", "a number >= 0", fee)
        lines[number] = Line(number, shops[shop_id], r.text("channel", required=True),
                             r.get("campaign", str, None, "a campaign name"), fee)
        r.check_unknown()
    raw_plan = data.get("plan", {})
    if not isinstance(raw_plan, dict):
        raise ConfigError(f"{where}: [plan]: expected a table, got {raw_plan!r}")
    r = _Reader(where, raw_plan, "plan")
    default_shop = r.get("default_shop", str, None, "the id of a shop in [[shops]]")
    if default_shop is not None and default_shop not in shops:
        raise r._fail("default_shop", f"the id of a shop in [[shops]] ({', '.join(shops) or 'none defined'})",
                      default_shop)
    plan = NumberPlan(shops=shops, lines=lines, default_shop=default_shop,
                      default_channel=r.text("default_channel", "unknown"))
    r.check_unknown()
    return plan


def _strings(r: _Reader, key: str, default: tuple[str, ...], expected: str) -> list[str]:
    value = r.get(key, list, list(default), expected)
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise r._fail(key, expected, value)
    return list(value)


def _users(items: Any, where: str) -> tuple[User, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{where}: [[users]]: expected an array of tables, got {items!r}")
    users: list[User] = []
    logins: set[str] = set()
    owners: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: [[users]] #{index + 1}: expected a table, got {item!r}")
        r = _Reader(where, item, f"users #{index + 1}")
        login = r.text("login", required=True)
        if login in logins:
            raise r._fail("login", "a login not used by another user", login)
        logins.add(login)
        role_name = r.text("role", required=True)
        try:
            role = Role(role_name)
        except ValueError:
            raise r._fail("role", "one of agent, manager, marketer, admin", role_name) from None
        password_hash = r.text("password_hash", required=True)
        if not is_password_hash(password_hash):
            raise r._fail("password_hash", "a hash made by `cti-gateway hash-password` (scrypt$...)", "<not shown>")
        extensions = tuple(_strings(r, "extensions", (), "a list of extensions like \"101\""))
        if extensions and role is not Role.AGENT:
            raise r._fail("extensions", "no extensions: only agents have phones", list(extensions))
        for extension in extensions:
            if extension in owners:
                raise r._fail("extensions", f"an extension not already given to {owners[extension]}", extension)
            owners[extension] = login
        leads = tuple(_strings(r, "leads", (), "a list of team names"))
        if leads and role is not Role.MANAGER:
            raise r._fail("leads", "no teams: only managers lead teams", list(leads))
        user = User(
            login=login,
            name=r.text("name", login),
            role=role,
            password_hash=password_hash,
            team=r.get("team", str, None, "a team name"),
            leads=leads,
            extensions=extensions,
            daily_target=_target(r),
        )
        r.check_unknown()
        users.append(user)
    return tuple(users)


def _target(r: _Reader) -> float | None:
    target = r.get("daily_target", float, None, "KPI points a day, a number >= 0")
    if target is not None and target < 0:
        raise r._fail("daily_target", "KPI points a day, a number >= 0", target)
    return float(target) if target is not None else None


def _secret(r: _Reader, base: Path, environ: Mapping[str, str], name: str = "secret",
            what: str = "the AMI secret") -> Secret:
    """A secret from ``{name}_env`` (an environment variable) or ``{name}_file``."""
    env_key, file_key = f"{name}_env", f"{name}_file"
    env_name = r.get(env_key, str, None, "the name of an environment variable")
    file_name = r.get(file_key, str, None, "a file path")
    if env_name and file_name:
        raise ConfigError(f"{r.where}: [{r.name}] {env_key}, {file_key}: set one of them, not both")
    if env_name:
        if env_name not in environ:
            raise ConfigError(f"{r.where}: [{r.name}] {env_key}: environment variable {env_name} is not set")
        return Secret(environ[env_name])
    if file_name:
        secret_path = Path(file_name) if Path(file_name).is_absolute() else base / file_name
        try:
            return Secret(secret_path.read_text(encoding="utf-8").strip())
        except OSError as exc:
            raise ConfigError(f"{r.where}: [{r.name}] {file_key}: cannot read {secret_path}: {exc.strerror}") from exc
    raise ConfigError(f"{r.where}: [{r.name}] {env_key}: expected {env_key} or {file_key} naming {what}")


def _agents(items: Any, where: str) -> tuple[AgentConfig, ...]:
    if not isinstance(items, list):
        raise ConfigError(f"{where}: [[agents]]: expected an array of tables, got {items!r}")
    agents: list[AgentConfig] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: [[agents]] #{index + 1}: expected a table, got {item!r}")
        r = _Reader(where, item, f"agents #{index + 1}")
        extension = r.text("extension", required=True)
        name = r.text("name", extension)
        devices = r.get("devices", list, [f"PJSIP/{extension}"], "a list of device names like \"PJSIP/101\"")
        if not all(isinstance(d, str) and "/" in d for d in devices):
            raise r._fail("devices", 'a list of device names like "PJSIP/101"', devices)
        for device in devices:
            if device in seen:
                raise r._fail("devices", f"a device not already given to agent {seen[device]}", device)
            seen[device] = extension
        r.check_unknown()
        agents.append(AgentConfig(extension=extension, name=name, devices=tuple(devices)))
    return tuple(agents)
