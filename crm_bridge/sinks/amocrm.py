"""The amoCRM (Kommo) sink: each finished call with a customer becomes a call
in amoCRM (SPEC §5.2), or an unsorted lead when the number matches no card.

``POST /api/v4/calls`` with one call (``uniq`` = our call id): amoCRM finds
the contact or company by the phone and writes a call note there (or in its
one active lead). A number it cannot place comes back as a per-item error
in a 200 answer; then, if ``unsorted`` is on, an inbound call becomes an
unsorted "sip" lead (``POST /api/v4/leads/unsorted/sip``) carrying the call.

amoCRM has no idempotency key that it enforces for us, so a retry (an
attempt after one that failed, maybe after amoCRM stored it) first looks for
the call: call notes written since the event (``params.uniq``) and unsorted
sip leads (``metadata.uniq``). What was stored is linked in the outbox
(``crm_links``), so a later attempt skips it without asking.

The recording's ``link`` is the gateway's own page for the call's recording,
set when the call is posted: it plays once the recording is collected, so
``recording.ready`` adds nothing and is not taken. Internal calls and calls
without a customer number are skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from crm_bridge.outbox import Entry
from crm_bridge.sinks import DeliveryError, SinkContext, check_response
from gateway.toml_table import Table

log = logging.getLogger(__name__)

KIND = "amocrm"

# call_status (SPEC §5.2): 4 talked, 6 not reached, 7 busy. An unanswered
# inbound call is 6 from the customer's side: he did not get through to us.
_TALKED, _NOT_REACHED, _BUSY = 4, 6, 7

# call_result, in Russian: amoCRM's users mostly read Russian.
_RESULTS = {
    "answered": "Разговор состоялся",
    "missed": "Пропущенный: никто не ответил",
    "abandoned": "Клиент не дождался ответа",
    "busy": "Занято",
    "failed": "Не дозвонились",
}

_NOTE_TYPES = ("leads", "contacts", "companies")  # where amoCRM puts a call's note
_PAGE = 250  # amoCRM's largest page
_MAX_PAGES = 20  # per list looked through on a retry: 5,000 notes since the event
_SKEW = 300.0  # seconds: the other side's clock may be behind ours


@dataclass(frozen=True)
class AmoCrmSinkConfig:
    name: str
    base_url: str  # https://example.amocrm.ru or https://example.kommo.com
    token: str = field(repr=False)  # a long-lived token
    users: Mapping[str, int] = field(default_factory=dict)  # gateway login -> amoCRM user id
    default_user_id: int | None = None
    source: str = "cti-gateway"
    unsorted: bool = True  # unknown callers become unsorted leads
    pipeline_id: int | None = None  # of the unsorted leads (None: the main pipeline)


def parse(t: Table, name: str, environ: Mapping[str, str], base: Path) -> AmoCrmSinkConfig:
    expected = 'the account\'s address, like "https://example.amocrm.ru" (https; no path)'
    url = t.get("base_url", str, None, expected)
    parts = urlsplit(url or "")
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost")
    if not url or (parts.scheme != "https" and not local) or not parts.hostname or parts.path.strip("/"):
        raise t.fail("base_url", expected, url)
    token = t.required_secret("token", environ, "a long-lived amoCRM token", base)
    users = t.get("users", dict, {}, "a table of gateway login = amoCRM user id")
    for login, user_id in users.items():
        if not _is_id(user_id):
            raise t.fail(f"users.{login}", "an amoCRM user id (a positive integer)", user_id)
    default_user_id = t.get("default_user_id", int, None, "an amoCRM user id (a positive integer)")
    if default_user_id is not None and not _is_id(default_user_id):
        raise t.fail("default_user_id", "an amoCRM user id (a positive integer)", default_user_id)
    source = t.get("source", str, "cti-gateway", "a source name of 1 to 64 characters")
    if not 0 < len(source) <= 64:
        raise t.fail("source", "a source name of 1 to 64 characters", source)
    unsorted = t.get("unsorted", bool, True, "true or false")
    pipeline_id = t.get("pipeline_id", int, None, "an amoCRM pipeline id (a positive integer)")
    if pipeline_id is not None and not _is_id(pipeline_id):
        raise t.fail("pipeline_id", "an amoCRM pipeline id (a positive integer)", pipeline_id)
    return AmoCrmSinkConfig(name=name, base_url=url.rstrip("/"), token=token, users=dict(users),
                            default_user_id=default_user_id, source=source, unsorted=unsorted,
                            pipeline_id=pipeline_id)


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _epoch(iso: str | None) -> int | None:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else None


class AmoCrmSink:
    kind = KIND
    events = frozenset({"call.finished"})

    def __init__(self, config: AmoCrmSinkConfig, ctx: SinkContext) -> None:
        self.name = config.name
        self.config = config
        self.ctx = ctx
        self._session: aiohttp.ClientSession | None = None

    # -- what amoCRM receives --------------------------------------------------------------

    def responsible(self, data: Mapping[str, Any]) -> int | None:
        """The amoCRM user of the agent who talked last (or placed an outbound
        call), else the configured default."""
        login = data.get("owner_agent")
        if login is None and data.get("direction") == "outbound":
            login = (data.get("agents") or {}).get(data.get("caller") or "")
        return self.config.users.get(login, self.config.default_user_id) if login else self.config.default_user_id

    def link(self, data: Mapping[str, Any]) -> str | None:
        return self.ctx.recording_link(data["call_id"]) if data.get("recording_expected") else None

    def call(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The call as ``POST /api/v4/calls`` takes it."""
        outcome = data["outcome"]
        status = _TALKED if outcome == "answered" else _BUSY if outcome == "busy" else _NOT_REACHED
        result = "; ".join(part for part in (
            _RESULTS.get(outcome, outcome),
            f"магазин {data['shop']}" if data.get("shop") else "",
            f"канал {data['channel']}" if data.get("channel") else "") if part)
        call: dict[str, Any] = {
            "direction": data["direction"], "uniq": data["call_id"], "duration": round(data["talk_seconds"]),
            "source": self.config.source, "phone": data["customer"], "call_status": status,
            "call_result": result, "created_at": _epoch(data["started_at"]),
        }
        if (link := self.link(data)) is not None:
            call["link"] = link
        if (user := self.responsible(data)) is not None:
            call["responsible_user_id"] = user
        return call

    def unsorted_lead(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The call as an unsorted "sip" lead with a new contact for the number."""
        started = _epoch(data["started_at"])
        caller = data.get("caller_name") or data["customer"]
        metadata: dict[str, Any] = {
            "is_call_event_needed": True, "uniq": data["call_id"], "duration": round(data["talk_seconds"]),
            "service_code": self.config.source, "phone": data["customer"], "called_at": started, "from": caller,
        }
        if (link := self.link(data)) is not None:
            metadata["link"] = link
        if data["outcome"] == "answered" and (user := self.responsible(data)) is not None:
            metadata["call_responsible"] = user
        lead: dict[str, Any] = {
            "source_name": self.config.source, "source_uid": self.config.source, "created_at": started,
            "metadata": metadata,
            "_embedded": {"contacts": [{"name": caller, "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": data["customer"], "enum_code": "WORK"}]}]}]},
        }
        if self.config.pipeline_id is not None:
            lead["pipeline_id"] = self.config.pipeline_id
        return lead

    # -- delivery --------------------------------------------------------------------------

    async def deliver(self, entry: Entry) -> None:
        data = entry.data
        if entry.event != "call.finished" or data.get("direction") == "internal" or not data.get("customer"):
            return
        call_id = data["call_id"]
        if await self.ctx.outbox.link(self.name, call_id) is not None:
            return  # an earlier attempt stored it, then failed before it was marked delivered
        if entry.attempts > 0 and await self._already_there(call_id, written=entry.created_at,
                                                            started=_epoch(data["started_at"]) or 0):
            return
        body = await self._post("/api/v4/calls", [self.call(data)])
        stored = ((body.get("_embedded") or {}).get("calls") or [])
        if stored:
            remote = stored[0]
            await self.ctx.outbox.set_link(self.name, call_id, f"call:{remote.get('id')}", {
                "entity_type": remote.get("entity_type"), "entity_id": remote.get("entity_id")})
            return
        errors = json.dumps(body.get("errors") or [], ensure_ascii=False)[:200]
        if "not found" not in errors.lower() and '"status": 404' not in errors:
            raise DeliveryError(f"amoCRM did not take the call: {errors}", permanent=True)
        if not self.config.unsorted or data["direction"] != "inbound":
            log.info("amocrm %s: call %s: the number matches no card in amoCRM, not logged there", self.name, call_id)
            return
        body = await self._post("/api/v4/leads/unsorted/sip", [self.unsorted_lead(data)])
        created = ((body.get("_embedded") or {}).get("unsorted") or [{}])[0]
        await self.ctx.outbox.set_link(self.name, call_id, f"unsorted:{created.get('uid')}", {})

    async def _already_there(self, call_id: str, *, written: float, started: float) -> bool:
        """Did an earlier attempt store the call? Its call note (on a lead,
        contact or company) changed since the event was ``written``, or its
        unsorted lead (created at the call's start, or later)."""
        for entity_type in _NOTE_TYPES:
            query = [("filter[note_type][]", "call_in"), ("filter[note_type][]", "call_out"),
                     ("filter[updated_at][from]", str(int(written - _SKEW)))]
            async with contextlib.aclosing(self._pages(f"/api/v4/{entity_type}/notes", query, "notes")) as notes:
                async for note in notes:
                    if (note.get("params") or {}).get("uniq") == call_id:
                        return True
        query = [("filter[category][]", "sip"), ("order[created_at]", "desc")]
        async with contextlib.aclosing(self._pages("/api/v4/leads/unsorted", query, "unsorted")) as leads:
            async for lead in leads:
                if (lead.get("metadata") or {}).get("uniq") == call_id:
                    return True
                if (lead.get("created_at") or 0) < started - _SKEW:
                    break  # newest first: the rest came before the call
        return False

    async def _pages(self, path: str, query: list[tuple[str, str]], key: str) -> AsyncGenerator[dict[str, Any], None]:
        for page in range(1, _MAX_PAGES + 1):
            session = self._open()
            params = [*query, ("limit", str(_PAGE)), ("page", str(page))]
            async with session.get(self.config.base_url + path, params=params, allow_redirects=False) as response:
                await check_response(response, f"GET {path}")
                if response.status == 204:
                    return  # amoCRM's answer to an empty list
                items = ((await response.json(content_type=None)).get("_embedded") or {}).get(key) or []
            for item in items:
                yield item
            if len(items) < _PAGE:
                return
        log.warning("amocrm %s: %s has more than %d pages since the event; looked no further",
                    self.name, path, _MAX_PAGES)

    async def _post(self, path: str, payload: list[dict[str, Any]]) -> dict[str, Any]:
        async with self._open().post(self.config.base_url + path, json=payload, allow_redirects=False) as response:
            await check_response(response, f"POST {path}")
            body = await response.json(content_type=None)
        return body if isinstance(body, dict) else {}

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={
                "Authorization": f"Bearer {self.config.token}", "User-Agent": "cti-gateway"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def build(config: AmoCrmSinkConfig, ctx: SinkContext) -> AmoCrmSink:
    return AmoCrmSink(config, ctx)
