"""The amoCRM sink against a stand-in for amoCRM on 127.0.0.1, the calls
played from real captures through the whole gateway.

The stand-in checks the Bearer token, records every request, and keeps what
amoCRM would: contacts by phone (a call to a known number becomes a call
note, an unknown one a per-item "not found" error), call notes and unsorted
leads, so the look-ups of a retry answer truthfully. Deliveries are driven by
``bridge.round`` and an injected clock, so backoff needs no waiting.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from crm_bridge.bridge_config import CrmConfig, SinkEntry, parse_crm
from crm_bridge.outbox import Entry
from crm_bridge.sinks.amocrm import AmoCrmSink, AmoCrmSinkConfig
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.test_callbacks_live import jsonl_stream
from tests.test_hub import FakeClock
from tests.test_numberplan import example_plan
from tests.local_server import serve

TOKEN = "amo-long-lived-token-0123456789"
USERS = {"anna": 7001, "boris": 7002}
DEFAULT_USER = 7000
PIPELINE = 555
PUBLIC = "https://cti.example.ru"
CALLS, UNSORTED = "/api/v4/calls", "/api/v4/leads/unsorted/sip"


def epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(timezone.utc).timestamp())


class AmoCrm:
    """amoCRM as the sink sees it (the field names of SPEC §5.2 and amoCRM's API v4)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.contacts = {11: "+79161110001", 17: "+79161110007"}  # a_answered's and g_click_to_call's customers
        self.notes: list[dict[str, Any]] = []
        self.unsorted: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, Any]] = []  # method, path, JSON body
        self.fail_after_storing: set[str] = set()  # paths answering 500 once, after storing
        self.answers: dict[str, web.Response] = {}  # paths answering this once, storing nothing
        self.url = ""
        self._runner: web.AppRunner | None = None

    def posts(self, path: str) -> list[Any]:
        return [body for method, p, body in self.requests if method == "POST" and p == path]

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post(CALLS, self._calls)
        app.router.add_post(UNSORTED, self._add_unsorted)
        app.router.add_get("/api/v4/leads/unsorted", self._list_unsorted)
        app.router.add_get("/api/v4/{entity_type}/notes", self._list_notes)
        self._runner, self.url = await serve(app)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"title": "Unauthorized", "status": 401, "detail": "Token is invalid"},
                                     status=401)
        if request.path in self.answers:
            return self.answers.pop(request.path)
        response: web.StreamResponse = await handler(request)
        if request.path in self.fail_after_storing:
            self.fail_after_storing.discard(request.path)
            return web.json_response({"title": "Internal Server Error", "status": 500}, status=500)
        return response

    async def _calls(self, request: web.Request) -> web.Response:
        calls, errors = [], []
        for n, call in enumerate(await request.json()):
            contact = next((cid for cid, phone in self.contacts.items() if phone == call["phone"]), None)
            if contact is None:
                errors.append({"request_id": str(n), "status": 404, "title": "Not Found",
                               "detail": "Entity not found"})
                continue
            note_id = 900 + len(self.notes)
            self.notes.append({
                "id": note_id, "entity_id": contact, "entity_type": "contacts", "updated_at": int(self.clock()),
                "note_type": "call_in" if call["direction"] == "inbound" else "call_out",
                "params": {k: call.get(k) for k in ("uniq", "duration", "source", "link", "phone")}})
            calls.append({"id": note_id, "entity_id": contact, "entity_type": "contact", "request_id": str(n)})
        return web.json_response({"_total_items": len(calls), "errors": errors, "_embedded": {"calls": calls}})

    async def _add_unsorted(self, request: web.Request) -> web.Response:
        created = []
        for n, lead in enumerate(await request.json()):
            uid = f"uid{len(self.unsorted) + 1:04d}"
            self.unsorted.append({**lead, "uid": uid, "category": "sip"})
            created.append({"uid": uid, "request_id": str(n)})
        return web.json_response({"_total_items": len(created), "_embedded": {"unsorted": created}})

    async def _list_unsorted(self, request: web.Request) -> web.Response:
        leads = [u for u in self.unsorted if u["category"] in request.query.getall("filter[category][]")]
        leads.sort(key=lambda u: u["created_at"], reverse=request.query.get("order[created_at]") == "desc")
        return self._page(request, "unsorted", leads)

    async def _list_notes(self, request: web.Request) -> web.Response:
        since = int(request.query.get("filter[updated_at][from]", "0"))
        types = request.query.getall("filter[note_type][]")
        notes = [n for n in self.notes if n["entity_type"] == request.match_info["entity_type"]
                 and n["note_type"] in types and n["updated_at"] >= since]
        return self._page(request, "notes", notes)

    @staticmethod
    def _page(request: web.Request, key: str, items: list[dict[str, Any]]) -> web.Response:
        limit, page = int(request.query["limit"]), int(request.query["page"])
        items = items[(page - 1) * limit:page * limit]
        if not items:
            return web.Response(status=204)  # amoCRM's empty list
        return web.json_response({"_page": page, "_embedded": {key: items}})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def amo(clock: FakeClock) -> AsyncIterator[AmoCrm]:
    server = AmoCrm(clock)
    await server.start()
    yield server
    await server.close()


def config(amo: AmoCrm, token: str = TOKEN) -> AmoCrmSinkConfig:
    return AmoCrmSinkConfig("amo", amo.url, token, users=USERS, default_user_id=DEFAULT_USER,
                            pipeline_id=PIPELINE)


@pytest.fixture
async def h(tmp_path: Path, amo: AmoCrm, clock: FakeClock) -> AsyncIterator[Harness]:
    crm = CrmConfig(public_base_url=PUBLIC, sinks=(SinkEntry("amocrm", "amo", config(amo)),))
    async with Harness(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=clock,
                       deliver_crm=False) as harness:
        yield harness


async def play(h: Harness, capture: str) -> Entry:
    """The capture's call through the gateway: its call.finished entry for the sink."""
    count = len(h.records)
    await h.ami.send_raw(jsonl_stream(capture))
    await h.wait_records(count + 1)
    await h.gateway.drain()
    entries = [e for e in await h.bridge.outbox.listed("pending", sink="amo") if e.event == "call.finished"]
    assert len(entries) == 1
    return entries[0]


async def attempt(h: Harness, entry: Entry) -> Entry:
    """One delivery round; the entry after it."""
    attempted = await h.bridge.round("amo")
    assert [e.entry_id for e in attempted] == [entry.entry_id]
    after = await h.bridge.outbox.get(entry.entry_id)
    assert after is not None
    return after


def later(clock: FakeClock, entry: Entry) -> None:
    """The clock past the entry's backoff."""
    clock.now = max(clock.now, entry.next_at) + 1


# -- what amoCRM receives ---------------------------------------------------------------------


async def test_an_answered_call_of_a_known_contact_is_one_call_of_its_agent(h: Harness, amo: AmoCrm) -> None:
    entry = await play(h, "a_answered")
    after = await attempt(h, entry)
    assert after.state == "done"
    assert amo.posts(CALLS) == [[{
        "direction": "inbound", "uniq": "1795736348.0", "duration": 3, "source": "cti-gateway",
        "phone": "+79161110001", "call_status": 4, "call_result": "Разговор состоялся; магазин A; канал direct",
        "created_at": epoch("2026-11-26T23:39:08.724+00:00"),
        "link": f"{PUBLIC}/calls/1795736348.0/recording", "responsible_user_id": USERS["anna"],
    }]]
    assert amo.posts(UNSORTED) == []
    assert [n["entity_id"] for n in amo.notes] == [11]
    assert await h.bridge.outbox.link("amo", "1795736348.0") == ("call:900", {"entity_type": "contact",
                                                                             "entity_id": 11})


async def test_a_missed_call_of_an_unknown_caller_becomes_an_unsorted_lead(h: Harness, amo: AmoCrm) -> None:
    entry = await play(h, "b_missed")
    after = await attempt(h, entry)
    assert after.state == "done"
    [[call]] = amo.posts(CALLS)
    assert (call["phone"], call["call_status"], call["duration"]) == ("+79161110002", 6, 0)
    assert call["call_result"] == "Пропущенный: никто не ответил; магазин A; канал direct"
    assert call["responsible_user_id"] == DEFAULT_USER
    started = epoch("2026-11-26T23:39:18.944+00:00")
    assert amo.posts(UNSORTED) == [[{
        "source_name": "cti-gateway", "source_uid": "cti-gateway", "created_at": started, "pipeline_id": PIPELINE,
        "metadata": {"is_call_event_needed": True, "uniq": "1795736358.2", "duration": 0,
                     "service_code": "cti-gateway", "phone": "+79161110002", "called_at": started,
                     "from": "Missed Caller", "link": f"{PUBLIC}/calls/1795736358.2/recording"},
        "_embedded": {"contacts": [{"name": "Missed Caller", "custom_fields_values": [
            {"field_code": "PHONE", "values": [{"value": "+79161110002", "enum_code": "WORK"}]}]}]},
    }]]
    assert amo.notes == []
    assert await h.bridge.outbox.link("amo", "1795736358.2") == ("unsorted:uid0001", {})


async def test_a_click_to_call_is_an_outbound_call(h: Harness, amo: AmoCrm) -> None:
    entry = await play(h, "g_click_to_call")
    assert (await attempt(h, entry)).state == "done"
    [[call]] = amo.posts(CALLS)
    assert {k: call[k] for k in ("direction", "uniq", "phone", "call_status", "duration", "call_result")} == {
        "direction": "outbound", "uniq": "c2c-1795736444-agent", "phone": "+79161110007", "call_status": 4,
        "duration": 4, "call_result": "Разговор состоялся"}
    assert [n["note_type"] for n in amo.notes] == ["call_out"]


async def test_a_click_to_call_belongs_to_the_agent_who_placed_it(h: Harness, amo: AmoCrm) -> None:
    entry = await play(h, "g_click_to_call")
    assert (await attempt(h, entry)).state == "done"
    [[call]] = amo.posts(CALLS)
    assert call["responsible_user_id"] == USERS["anna"]


async def test_internal_calls_and_withheld_numbers_are_not_sent(h: Harness, amo: AmoCrm) -> None:
    sink = h.bridge.sinks["amo"]
    assert isinstance(sink, AmoCrmSink)
    entry = await play(h, "a_answered")
    for change in ({"direction": "internal"}, {"customer": None}):
        await sink.deliver(dataclasses.replace(entry, data={**entry.data, **change}))
    assert amo.requests == []
    await sink.deliver(entry)
    assert len(amo.posts(CALLS)) == 1


# -- retries never make a second record ------------------------------------------------------------------


async def test_a_call_stored_before_a_500_is_found_and_not_posted_again(h: Harness, amo: AmoCrm,
                                                                         clock: FakeClock) -> None:
    amo.fail_after_storing = {CALLS}
    entry = await play(h, "a_answered")
    first = await attempt(h, entry)
    assert (first.state, first.attempts) == ("pending", 1)
    assert "HTTP 500" in (first.last_error or "")
    later(clock, first)
    assert (await attempt(h, first)).state == "done"
    assert len(amo.posts(CALLS)) == 1
    assert len(amo.notes) == 1
    assert ("GET", "/api/v4/contacts/notes", None) in amo.requests


async def test_an_unsorted_lead_stored_before_a_500_is_found_and_not_posted_again(
        h: Harness, amo: AmoCrm, clock: FakeClock) -> None:
    amo.fail_after_storing = {UNSORTED}
    entry = await play(h, "b_missed")
    first = await attempt(h, entry)
    assert first.state == "pending"
    later(clock, first)
    assert (await attempt(h, first)).state == "done"
    assert (len(amo.posts(CALLS)), len(amo.posts(UNSORTED)), len(amo.unsorted)) == (1, 1, 1)
    assert ("GET", "/api/v4/leads/unsorted", None) in amo.requests


async def test_a_retry_posts_what_the_failed_attempt_did_not_store(h: Harness, amo: AmoCrm,
                                                                   clock: FakeClock) -> None:
    amo.answers[CALLS] = web.json_response({"title": "Service Unavailable", "status": 503}, status=503)
    entry = await play(h, "a_answered")
    first = await attempt(h, entry)
    assert first.state == "pending" and amo.notes == []
    later(clock, first)
    assert (await attempt(h, first)).state == "done"
    assert len(amo.posts(CALLS)) == 2
    assert [n["params"]["uniq"] for n in amo.notes] == ["1795736348.0"]


# -- refusals ----------------------------------------------------------------------------------


async def test_a_validation_error_is_a_dead_entry_with_the_error(h: Harness, amo: AmoCrm) -> None:
    amo.answers[CALLS] = web.json_response({
        "validation-errors": [{"request_id": "0", "errors": [
            {"code": "NotSupportedChoice", "path": "call_status",
             "detail": "The value you selected is not a valid choice."}]}],
        "title": "Bad Request", "type": "https://httpstatus.es/400", "status": 400,
        "detail": "Request validation failed"}, status=400)
    entry = await play(h, "a_answered")
    after = await attempt(h, entry)
    assert (after.state, after.attempts) == ("dead", 1)
    assert "HTTP 400" in (after.last_error or "") and "NotSupportedChoice" in (after.last_error or "")
    assert amo.notes == []


async def test_too_many_requests_waits_as_long_as_amocrm_asks(h: Harness, amo: AmoCrm, clock: FakeClock) -> None:
    amo.answers[CALLS] = web.json_response({"title": "Too Many Requests", "status": 429}, status=429,
                                           headers={"Retry-After": "600"})
    entry = await play(h, "a_answered")
    after = await attempt(h, entry)
    assert after.state == "pending"
    assert after.next_at >= clock.now + 600


async def test_a_wrong_token_is_retried_and_never_shown(tmp_path: Path, amo: AmoCrm, clock: FakeClock) -> None:
    wrong = "wrong-token-9876543210"
    crm = CrmConfig(public_base_url=PUBLIC, sinks=(SinkEntry("amocrm", "amo", config(amo, token=wrong)),))
    async with Harness(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=clock, deliver_crm=False) as h:
        entry = await play(h, "a_answered")
        after = await attempt(h, entry)
    assert after.state == "pending"
    assert "HTTP 401" in (after.last_error or "") and wrong not in (after.last_error or "")
    assert amo.notes == []


# -- configuration ------------------------------------------------------------------------------


def parsed(table: dict[str, Any], environ: dict[str, str] | None = None) -> AmoCrmSinkConfig:
    crm = parse_crm({"amocrm": [{"name": "amo", **table}]}, "gw.toml",
                    {"AMO_TOKEN": TOKEN} if environ is None else environ, Path("/nonexistent"))
    [sink] = crm.sinks
    assert isinstance(sink.config, AmoCrmSinkConfig)
    return sink.config


def test_the_config_reads_users_and_keeps_the_token_out_of_repr() -> None:
    got = parsed({"base_url": "https://example.amocrm.ru/", "token_env": "AMO_TOKEN", "users": {"anna": 7001},
                  "default_user_id": 7000, "unsorted": False, "pipeline_id": 5})
    assert (got.base_url, got.token, dict(got.users), got.default_user_id, got.unsorted, got.pipeline_id,
            got.source) == ("https://example.amocrm.ru", TOKEN, {"anna": 7001}, 7000, False, 5, "cti-gateway")
    assert TOKEN not in repr(got)


@pytest.mark.parametrize(("table", "environ", "key"), [
    ({"token_env": "AMO_TOKEN"}, None, "base_url"),
    ({"base_url": "http://example.amocrm.ru", "token_env": "AMO_TOKEN"}, None, "base_url"),
    ({"base_url": "https://example.amocrm.ru/api/v4", "token_env": "AMO_TOKEN"}, None, "base_url"),
    ({"base_url": "https://example.amocrm.ru"}, None, "token_env"),
    ({"base_url": "https://example.amocrm.ru", "token_env": "AMO_TOKEN"}, {}, "token_env"),
    ({"base_url": "https://example.amocrm.ru", "token_env": "AMO_TOKEN", "users": {"anna": "7001"}}, None,
     "users.anna"),
    ({"base_url": "https://example.amocrm.ru", "token_env": "AMO_TOKEN", "default_user_id": 0}, None,
     "default_user_id"),
    ({"base_url": "https://example.amocrm.ru", "token_env": "AMO_TOKEN", "unsorted": "yes"}, None, "unsorted"),
])
def test_config_errors_name_the_key(table: dict[str, Any], environ: dict[str, str] | None, key: str) -> None:
    with pytest.raises(ValueError, match=rf"gw\.toml: \[\[crm\.amocrm\]\] #1 {re.escape(key)}:") as raised:
        parsed(table, environ)
    assert TOKEN not in str(raised.value)
