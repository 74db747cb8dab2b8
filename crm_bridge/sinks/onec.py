"""1C:Enterprise over its standard OData interface: one interaction document
per finished call (in trade configurations the "phone call" document,
``Document_ТелефонныйЗвонок``), with the caller's contact found by phone or,
if configured, created.

Catalogue and field names differ between 1C configurations, so every field is
mapped in the config: 1C field -> a template of the call's values
(``PLACEHOLDERS``). A template that is one placeholder alone keeps its JSON
type (``"{inbound}"`` is a JSON bool, ``"{talk_seconds}"`` a number); any other
is text. The defaults are a best guess for "Управление торговлей 11" that a
live base must confirm.

OData has no idempotency key, so every attempt first looks the document up by
the field holding our call id (``call_id_field``, written with
``call_id_format``) and creates it only when absent: an attempt that stored
the document but lost the answer is not repeated. A contact this sink created
is found by the same phone lookup on the retry.

1C answers an error as ``{"odata.error": {"code", "message": {"value"}}}``:
its message goes to the dead-letter list. A 4xx (a field or entity set the
base does not have: the admin fixes the mapping, then "retry now") is
permanent, a 5xx temporary, as ``check_response`` sorts them. Internal calls
are not sent.
"""

from __future__ import annotations

import base64
import json
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import aiohttp
from yarl import URL

from crm_bridge.outbox import Entry
from crm_bridge.sinks import DeliveryError, SinkContext, check_response
from gateway.toml_table import Table

KIND = "onec"

# The values a template may use; ``phone``/``phone_digits`` also in ``contact_lookup``.
PLACEHOLDERS = frozenset({
    "call_id", "started_local", "ended_local", "started_utc", "inbound", "outbound", "customer", "phone",
    "phone_digits", "caller_name", "caller_name_or_phone", "outcome", "outcome_ru", "talk_seconds",
    "ring_seconds", "agent", "shop", "channel", "recording_link", "summary",
})
LOOKUP_PLACEHOLDERS = frozenset({"phone", "phone_digits"})

OUTCOME_RU = {"answered": "отвечен", "missed": "пропущен", "abandoned": "клиент не дождался ответа",
              "busy": "занято", "failed": "не состоялся"}

DEFAULT_FIELDS: dict[str, Any] = {
    "Date": "{started_local}",
    "Входящий": "{inbound}",
    "АбонентКакСвязаться": "{customer}",
    "АбонентПредставление": "{caller_name_or_phone}",
    "Тема": "Звонок {outcome_ru}: {caller_name_or_phone}",
    "Описание": "{summary}",
}
DEFAULT_CONTACT_FIELDS: dict[str, Any] = {
    "Description": "{caller_name_or_phone}",
    "КонтактнаяИнформация": [{"Тип": "Телефон", "Представление": "{customer}", "НомерТелефона": "{phone_digits}"}],
}
ENTITY_SET = re.compile(r"[A-Za-z]+_[\w.]+")  # Document_ТелефонныйЗвонок, Catalog_Партнеры
PROPERTY = re.compile(r"[^\W\d]\w*")  # a 1C name: letters, digits, '_'
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ALONE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class OneCSinkConfig:
    name: str
    base_url: str  # .../odata/standard.odata, no trailing slash
    username: str
    password: str = field(repr=False)
    document: str = "Document_ТелефонныйЗвонок"
    fields: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_FIELDS))
    call_id_field: str = "Комментарий"
    call_id_format: str = "cti:{call_id}"
    contact_set: str = "Catalog_Партнеры"
    contact_lookup: str = "КонтактнаяИнформация/any(d: d/НомерТелефона eq '{phone_digits}')"
    contact_field: str = "АбонентКонтакт"  # "": no contact on the document
    contact_type_field: str = "АбонентКонтакт_Type"  # "": the field is a plain reference (..._Key)
    contact_create: bool = False
    contact_fields: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONTACT_FIELDS))
    users: Mapping[str, str] = field(default_factory=dict)  # login -> Ref_Key of the 1C user
    agent_field: str = "Ответственный_Key"


# -- config -------------------------------------------------------------------------------------


def parse(t: Table, name: str, environ: Mapping[str, str], base: Path) -> OneCSinkConfig:
    d = OneCSinkConfig  # its class attributes are the defaults
    url_help = 'the OData root, like "http://1c.local/trade/odata/standard.odata"'
    base_url = t.get("base_url", str, None, url_help)
    if not base_url or not base_url.startswith(("https://", "http://")) or not urlsplit(base_url).netloc:
        raise t.fail("base_url", url_help, base_url)
    username = t.get("username", str, None, "the 1C user's name")
    if not username:
        raise t.fail("username", "the 1C user's name", username)
    password = t.required_secret("password", environ, "the 1C user's password", base)

    def entity_set(key: str, default: str) -> str:
        value = t.get(key, str, default, 'an entity set like "Document_ТелефонныйЗвонок"')
        if not ENTITY_SET.fullmatch(value):
            raise t.fail(key, 'an entity set like "Document_ТелефонныйЗвонок"', value)
        return str(value)

    def prop(key: str, default: str, *, optional: bool = False) -> str:
        expected = "a 1C field name" + (' or ""' if optional else "")
        value = t.get(key, str, default, expected)
        if not (PROPERTY.fullmatch(value) or (optional and value == "")):
            raise t.fail(key, expected, value)
        return str(value)

    def templates(key: str, default: Mapping[str, Any]) -> dict[str, Any]:
        value = t.get(key, dict, default, "a table of 1C field = template")
        for field_name, template in value.items():
            if not PROPERTY.fullmatch(field_name):
                raise t.fail(f"{key}.{field_name}", "a 1C field name", field_name)
            _check(t, f"{key}.{field_name}", template, PLACEHOLDERS)
        return dict(value)

    document = entity_set("document", d.document)
    fields = templates("fields", DEFAULT_FIELDS)
    call_id_field = prop("call_id_field", d.call_id_field)
    call_id_format = t.get("call_id_format", str, d.call_id_format, 'a template with {call_id}, like "cti:{call_id}"')
    _check(t, "call_id_format", call_id_format, frozenset({"call_id"}))
    if "{call_id}" not in call_id_format:
        raise t.fail("call_id_format", 'a template with {call_id}, like "cti:{call_id}"', call_id_format)
    contact_set = entity_set("contact_set", d.contact_set)
    contact_lookup = t.get("contact_lookup", str, d.contact_lookup, "an OData $filter with {phone} or {phone_digits}")
    _check(t, "contact_lookup", contact_lookup, LOOKUP_PLACEHOLDERS)
    if not _names(contact_lookup):
        raise t.fail("contact_lookup", "an OData $filter with {phone} or {phone_digits}", contact_lookup)
    contact_field = prop("contact_field", d.contact_field, optional=True)
    contact_type_field = prop("contact_type_field", d.contact_type_field, optional=True)
    contact_create = t.get("contact_create", bool, d.contact_create, "true or false")
    contact_fields = templates("contact_fields", DEFAULT_CONTACT_FIELDS)
    users = t.get("users", dict, {}, "a table of login = the 1C user's Ref_Key")
    for login, ref in users.items():
        if not isinstance(ref, str) or not GUID.fullmatch(ref.lower()):
            raise t.fail(f"users.{login}", 'a Ref_Key like "0f8fad5b-d9cb-469f-a165-70867728950e"', ref)
    agent_field = prop("agent_field", d.agent_field)
    for key, own in (("call_id_field", call_id_field), ("contact_field", contact_field),
                     ("contact_type_field", contact_type_field), ("agent_field", agent_field if users else "")):
        if own and own in fields:
            raise t.fail(f"fields.{own}", f"no field the sink fills itself (it is {key})", fields[own])
    return OneCSinkConfig(
        name=name, base_url=base_url.rstrip("/"), username=username, password=password, document=document,
        fields=fields, call_id_field=call_id_field, call_id_format=call_id_format, contact_set=contact_set,
        contact_lookup=contact_lookup, contact_field=contact_field, contact_type_field=contact_type_field,
        contact_create=contact_create, contact_fields=contact_fields,
        users={login: ref.lower() for login, ref in users.items()}, agent_field=agent_field)


def _names(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _check(t: Table, key: str, template: Any, allowed: frozenset[str]) -> None:
    """Templates inside strings, tables and arrays (a tabular section) use only ``allowed``."""
    if isinstance(template, Mapping):
        for k, v in template.items():
            _check(t, f"{key}.{k}", v, allowed)
    elif isinstance(template, list):
        for n, v in enumerate(template):
            _check(t, f"{key}[{n}]", v, allowed)
    elif isinstance(template, str):
        expected = f"a template of {{{'}, {'.join(sorted(allowed))}}}"
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError:
            raise t.fail(key, expected + " (write { and } as {{ and }})", template) from None
        for _, name, spec, conversion in parts:
            if name is not None and (name not in allowed or spec or conversion):
                raise t.fail(key, f"{expected}; unknown placeholder {{{name}}}", template)
    elif not isinstance(template, (bool, int, float)):
        raise t.fail(key, "a template, a number, true/false, a table or an array", template)


# -- values ---------------------------------------------------------------------------------------


def values_of(data: Mapping[str, Any], *, zone: str, recording_link: str | None) -> dict[str, Any]:
    """The placeholders' values for a call.finished event (``zone``: the shop's)."""
    customer = data.get("customer") or ""
    inbound = data["direction"] == "inbound"
    agent = data.get("owner_agent") or (data.get("agents") or {}).get(data.get("caller") or "")
    started = datetime.fromisoformat(data["started_at"])
    ended = datetime.fromisoformat(data["ended_at"]) if data.get("ended_at") else started
    local = ZoneInfo(zone)
    values: dict[str, Any] = {
        "call_id": data["call_id"],
        # 1C keeps dates without a zone, read as the base's local time.
        "started_local": started.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds"),
        "ended_local": ended.astimezone(local).replace(tzinfo=None).isoformat(timespec="seconds"),
        "started_utc": started.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds"),
        "inbound": inbound,
        "outbound": data["direction"] == "outbound",
        "customer": customer,
        "phone": customer,
        "phone_digits": customer.lstrip("+"),
        "caller_name": (data.get("caller_name") or "") if inbound else "",  # outbound: the agent's own name
        "outcome": data["outcome"],
        "outcome_ru": OUTCOME_RU.get(data["outcome"], data["outcome"]),
        "talk_seconds": round(data.get("talk_seconds") or 0),
        "ring_seconds": round(data.get("ring_seconds") or 0),
        "agent": agent or "",
        "shop": data.get("shop") or "",
        "channel": data.get("channel") or "",
        "recording_link": recording_link or "",
    }
    values["caller_name_or_phone"] = values["caller_name"] or customer or "скрытый номер"
    values["summary"] = _summary(values)
    return values


def _summary(v: Mapping[str, Any]) -> str:
    who = v["customer"] or "скрытый номер"
    if v["caller_name"]:
        who += f" ({v['caller_name']})"
    text = f"{'Входящий' if v['inbound'] else 'Исходящий'} звонок, {who}: {v['outcome_ru']}"
    if v["agent"]:
        text += f", сотрудник {v['agent']}"
    text += f"; ожидание {v['ring_seconds']} с, разговор {v['talk_seconds']} с"
    if v["shop"] or v["channel"]:
        text += f"; линия {v['shop']} {v['channel']}".rstrip()
    if v["recording_link"]:
        text += f". Запись: {v['recording_link']}"
    return text


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """A template filled in: a placeholder alone keeps its value's JSON type."""
    if isinstance(template, Mapping):
        return {k: render(v, values) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values) for v in template]
    if not isinstance(template, str):
        return template
    alone = _ALONE.fullmatch(template)
    if alone:
        return values[alone.group(1)]
    return template.format_map({k: _text(v) for k, v in values.items()})


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def odata_string(value: str) -> str:
    """An OData string literal: in single quotes, a quote inside doubled."""
    return "'" + value.replace("'", "''") + "'"


# -- the sink ------------------------------------------------------------------------------------


class OneCSink:
    kind = KIND
    events = frozenset({"call.finished"})

    def __init__(self, config: OneCSinkConfig, ctx: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.ctx = ctx
        self._session: aiohttp.ClientSession | None = None
        self._host = urlsplit(config.base_url).netloc

    async def deliver(self, entry: Entry) -> None:
        data = entry.data
        if data["direction"] == "internal":
            return
        c = self.config
        values = values_of(data, zone=self.ctx.zone_of(data.get("shop")),
                           recording_link=self.ctx.recording_link(data["call_id"]))
        marker = c.call_id_format.format(call_id=data["call_id"])
        found = await self._first(c.document, f"{c.call_id_field} eq {odata_string(marker)}")
        if found is None:
            body: dict[str, Any] = {k: render(v, values) for k, v in c.fields.items()}
            body[c.call_id_field] = marker
            contact = await self._contact(values) if c.contact_field and values["phone"] else None
            if contact is not None:
                body[c.contact_field] = contact
                if c.contact_type_field:
                    body[c.contact_type_field] = f"StandardODATA.{c.contact_set}"
            if values["agent"] in c.users:
                body[c.agent_field] = c.users[values["agent"]]
            found = await self._create(c.document, body)
        await self.ctx.outbox.set_link(self.name, data["call_id"], found)

    async def _contact(self, values: Mapping[str, Any]) -> str | None:
        """The contact's Ref_Key: found by phone, else created (if configured), else None."""
        c = self.config
        lookup = c.contact_lookup.format_map({k: odata_string(values[k])[1:-1] for k in LOOKUP_PLACEHOLDERS})
        found = await self._first(c.contact_set, lookup)
        if found is None and c.contact_create:
            found = await self._create(c.contact_set, render(c.contact_fields, values))
        return found

    async def _first(self, entity_set: str, odata_filter: str) -> str | None:
        """The Ref_Key of the first object of ``entity_set`` matching the filter."""
        query = f"$filter={quote(odata_filter, safe='')}&$select=Ref_Key&$top=1&$format=json"
        async with self._http().get(self._url(entity_set, query), allow_redirects=False) as response:
            answer = await _answer(response, f"GET {entity_set} on {self._host}")
        rows = answer.get("value")
        if not isinstance(rows, list):
            raise DeliveryError(f"GET {entity_set} on {self._host}: no \"value\" list in the answer")
        return _ref_key(rows[0], entity_set, self._host) if rows else None

    async def _create(self, entity_set: str, body: Mapping[str, Any]) -> str:
        payload = json.dumps(body, ensure_ascii=False).encode()
        async with self._http().post(self._url(entity_set, "$format=json"), data=payload, allow_redirects=False,
                                     headers={"content-type": "application/json; charset=utf-8"}) as response:
            answer = await _answer(response, f"POST {entity_set} on {self._host}")
        # Without a Ref_Key the object may still exist: the retry's lookup finds it.
        return _ref_key(answer, entity_set, self._host)

    def _url(self, entity_set: str, query: str) -> URL:
        # Encoded by us, not by the client: Cyrillic names, and a '+' in a
        # phone number that a server would read as a space.
        return URL(f"{self.config.base_url}/{quote(entity_set, safe='')}?{query}", encoded=True)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            # HTTP Basic in UTF-8: 1C user names are often Cyrillic.
            pair = f"{self.config.username}:{self.config.password}".encode()
            self._session = aiohttp.ClientSession(headers={
                "authorization": "Basic " + base64.b64encode(pair).decode(),
                "accept": "application/json", "user-agent": "cti-gateway"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def _answer(response: aiohttp.ClientResponse, what: str) -> dict[str, Any]:
    """The JSON of a 2xx answer; else DeliveryError carrying 1C's own message."""
    text = await response.text(errors="replace")
    try:
        answer = json.loads(text) if text else {}
    except ValueError:
        answer = None
    try:
        await check_response(response, what)
    except DeliveryError as exc:
        error = answer.get("odata.error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            raise
        message = error.get("message")
        said = message.get("value") if isinstance(message, dict) else message
        raise DeliveryError(f"{what}: HTTP {response.status} 1C: {str(said)[:300]} (code {error.get('code')})",
                            permanent=exc.permanent, retry_after=exc.retry_after) from None
    if not isinstance(answer, dict):
        raise DeliveryError(f"{what}: HTTP {response.status} with no JSON object in the answer")
    return answer


def _ref_key(row: Any, entity_set: str, host: str) -> str:
    ref = row.get("Ref_Key") if isinstance(row, dict) else None
    if not isinstance(ref, str) or not ref:
        raise DeliveryError(f"{entity_set} on {host}: no Ref_Key in the answer")
    return ref


def build(config: OneCSinkConfig, ctx: SinkContext) -> OneCSink:
    return OneCSink(config, ctx)
