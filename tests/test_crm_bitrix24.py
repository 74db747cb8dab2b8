"""The Bitrix24 sink through the whole gateway: real captures over the AMI
server, the outbox on a SQLite file, and a local aiohttp server standing in
for a Bitrix24 portal's REST (it records every method called, hands out
CALL_IDs like Bitrix24, refuses to finish a call twice and lists finished
calls in voximplant.statistic.get). Deliveries are driven round by round with
an injected clock, so the order of the methods is the order of the outbox.

OnExternalCallStart: the sample event POSTed to the gateway's route starts a
click-to-call (an Originate reaches the AMI server) and the finish of that
call uses the event's CALL_ID.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydub import AudioSegment  # type: ignore[import-untyped]

from connectors.ami.scenarios import CallFactory
from crm_bridge.bridge_config import CrmConfig, SinkEntry
from crm_bridge.sinks.bitrix24 import Bitrix24Config, BitrixEventError, CallStart, parse, parse_call_start
from gateway.numberplan import PlanBook
from gateway.toml_table import Table
from tests.harness import Harness
from tests.test_callbacks_live import capture, play
from tests.test_hub import FakeClock, running
from tests.test_numberplan import example_plan
from tests.test_recordings import settle, wav
from tests.local_server import serve

SAMPLES = Path(__file__).parent / "webhook_samples"
CODE = "1/abc123secret"  # the incoming webhook's user and code: a secret in the URL
TOKEN = "testapptoken0123456789abcdef0000"  # the sample event's application_token
USERS = {"anna": 17, "boris": 18}  # ext. 101 and 102; vera (103) is not mapped
DEFAULT_USER = 1
SHOP_B = "+74950000002"  # the sample's LINE_NUMBER 74950000100 is shop B's line (config ``lines``)
REGISTER, SHOW, HIDE, FINISH = (f"telephony.externalcall.{m}" for m in ("register", "show", "hide", "finish"))
ATTACH = "telephony.externalCall.attachRecord"


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / f"bitrix24_{name}.json").read_text())
    return loaded


def at(iso: str) -> FakeClock:
    clock = FakeClock()
    clock.now = datetime.fromisoformat(iso).timestamp()
    return clock


class Refused(Exception):
    def __init__(self, status: int, error: str, description: str = "") -> None:
        super().__init__(error)
        self.status, self.error, self.description = status, error, description


class FakeBitrix:
    """A Bitrix24 portal's REST on 127.0.0.1: an incoming webhook at
    /rest/<CODE>/<method>.json, OAuth methods at /rest/<method>.json with
    ``auth``, tokens refreshed at /oauth/token/ (the refresh token rotates)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.registered: dict[str, str] = {}  # register's parameters (JSON) -> CALL_ID
        self.open: set[str] = set()  # CALL_IDs of calls not finished
        self.finished: dict[str, dict[str, Any]] = {}
        self.records: dict[str, tuple[str, bytes]] = {}
        self.errors: dict[str, tuple[int, str]] = {}  # method -> the next answer's status and error code
        self.fail_next_finish = False  # store the finish, then answer 500 (the answer is lost)
        self.access: set[str] = set()
        self.refresh_token = "r0"
        self.refreshed_with: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/rest/{path:.+}", self.rest)
        app.router.add_get("/oauth/token/", self.token)
        self._runner, self.url = await serve(app)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def rest(self, request: web.Request) -> web.Response:
        path = request.match_info["path"].removesuffix(".json")
        params = await request.json()
        if path.startswith(CODE + "/"):
            method = path[len(CODE) + 1:]
        elif "/" in path or params.pop("auth", None) not in self.access:
            return _error(401, "expired_token", "The access token provided has expired.")
        else:
            method = path
        self.calls.append((method, params))
        try:
            if method in self.errors:
                raise Refused(*self.errors.pop(method))
            return web.json_response({"result": self.answer(method, params)})
        except Refused as refused:
            return _error(refused.status, refused.error, refused.description)

    def answer(self, method: str, params: dict[str, Any]) -> Any:
        name = method.lower()
        if name == REGISTER:
            key = json.dumps(params, sort_keys=True)
            call_id = self.registered.get(key)
            if call_id is None or call_id not in self.open:  # the same parameters: the same call (30 min)
                digest = hashlib.md5(f"{key}{len(self.registered)}".encode()).hexdigest()
                call_id = f"externalCall.{digest}.{1772435707 + len(self.registered)}"
                self.registered[key] = call_id
                self.open.add(call_id)
            return {"CALL_ID": call_id, "CRM_CREATED_LEAD": None, "CRM_ENTITY_TYPE": "LEAD", "CRM_ENTITY_ID": 1}
        if name in (SHOW, HIDE, FINISH) and params["CALL_ID"] not in self.open:
            raise Refused(400, "ERROR_CALL_NOT_FOUND", "Call is not found or already finished")
        if name == FINISH:
            self.open.discard(params["CALL_ID"])
            self.finished[params["CALL_ID"]] = params
            if self.fail_next_finish:
                self.fail_next_finish = False
                raise Refused(500, "INTERNAL_SERVER_ERROR")
            return {"CALL_ID": params["CALL_ID"]}
        if name in (SHOW, HIDE):
            return True
        if name == "voximplant.statistic.get":
            call_id = params["FILTER"]["CALL_ID"]
            return [{"CALL_ID": call_id, "CALL_DURATION": self.finished[call_id]["DURATION"]}] \
                if call_id in self.finished else []
        if name == ATTACH.lower():
            if params["CALL_ID"] not in self.finished:
                raise Refused(400, "ERROR_CALL_NOT_FOUND", "Call is not finished")
            self.records[params["CALL_ID"]] = (params["FILENAME"], base64.b64decode(params["FILE_CONTENT"]))
            return {"FILE_ID": 501}
        raise Refused(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")

    async def token(self, request: web.Request) -> web.Response:
        q = request.query
        if (q.get("grant_type"), q.get("client_id"), q.get("client_secret"), q.get("refresh_token")) != (
                "refresh_token", "app.client", "client-secret", self.refresh_token):
            return _error(400, "invalid_grant", "Invalid refresh token")
        self.refreshed_with.append(self.refresh_token)
        n = len(self.refreshed_with)
        self.access, self.refresh_token = {f"a{n}"}, f"r{n}"
        return web.json_response({"access_token": f"a{n}", "refresh_token": f"r{n}", "expires_in": 3600,
                                  "member_id": "0123456789abcdef0123456789abcdef"})


def _error(status: int, error: str, description: str = "") -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


@pytest.fixture
async def bitrix() -> AsyncIterator[FakeBitrix]:
    fake = FakeBitrix()
    await fake.start()
    yield fake
    await fake.close()


def config(bitrix: FakeBitrix, **changes: Any) -> Bitrix24Config:
    return replace(Bitrix24Config(name="bx", default_user_id=DEFAULT_USER, webhook_url=f"{bitrix.url}/rest/{CODE}/",
                                  application_token=TOKEN, users=USERS, lines={SHOP_B: "74950000100"}), **changes)


@asynccontextmanager
async def gateway(tmp_path: Path, clock: FakeClock, sink: Bitrix24Config) -> AsyncIterator[Harness]:
    crm = CrmConfig(sinks=(SinkEntry("bitrix24", "bx", sink),))
    async with running(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=clock, deliver_crm=False) as h:
        yield h


async def deliver(h: Harness) -> None:
    """Every entry due now, one round at a time (a call's entries in order)."""
    await h.gateway.drain()
    await h.bridge.drain()
    while await h.bridge.round("bx"):
        pass


async def outbox(h: Harness) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in await h.store.read("SELECT event, state, attempts FROM outbox ORDER BY entry_id")]


# -- calls --------------------------------------------------------------------------------


async def test_an_answered_call_is_registered_as_it_rings_and_finished_by_who_took_it(
        tmp_path: Path, bitrix: FakeBitrix) -> None:
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), config(bitrix)) as h:
        await capture(h, "a_answered")
        await deliver(h)
    (register, params), (finish, ended) = bitrix.calls
    assert (register, finish) == (REGISTER, FINISH)
    assert params == {"USER_ID": 17, "PHONE_NUMBER": "+79161110001", "TYPE": 2,  # anna (101)
                      "CALL_START_DATE": "2026-11-27T02:39:08+03:00",  # shop A's zone, Moscow
                      "CRM_CREATE": 1, "SHOW": 1, "LINE_NUMBER": "74950000001"}
    assert set(params) - {"USER_ID"} == set(sample("telephony.externalcall.register__inbound")) - {"USER_PHONE_INNER"}
    assert ended == {"CALL_ID": bitrix.registered[json.dumps(params, sort_keys=True)], "USER_ID": 17,
                     "DURATION": 3, "STATUS_CODE": "200", "ADD_TO_CHAT": 0}  # talked 3.01 s
    assert set(ended) == set(sample("telephony.externalcall.finish__inbound_answered"))


async def test_a_missed_call_lands_with_the_default_user_and_in_the_chat(tmp_path: Path, bitrix: FakeBitrix) -> None:
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), config(bitrix)) as h:
        await capture(h, "b_missed")
        await deliver(h)
        assert await outbox(h) == [("call.ringing", "done", 1), ("call.ring_stopped", "done", 1),
                                   ("call.finished", "done", 1)]
    (call_id,) = bitrix.finished
    assert bitrix.calls[1:] == [
        (HIDE, {"CALL_ID": call_id, "USER_ID": [17]}),  # anna's phone stopped ringing
        (FINISH, {"CALL_ID": call_id, "USER_ID": DEFAULT_USER, "DURATION": 0, "STATUS_CODE": "304",
                  "ADD_TO_CHAT": 1}),
    ]
    assert bitrix.calls[1][1].keys() <= bitrix.calls[0][1].keys() | {"CALL_ID"}
    assert set(bitrix.calls[2][1]) == set(sample("telephony.externalcall.finish__inbound_missed"))


@pytest.mark.parametrize(("capture_name", "now", "expected"), [
    # Dial(PJSIP/101&PJSIP/102): both ring, anna answers, boris's phone stops (answered elsewhere).
    ("k_agi_fallback", "2026-11-26T23:42:30Z",
     [(REGISTER, 17), (SHOW, 18), (HIDE, 18), (FINISH, 17)]),
    # A queue: anna rings without answering, then boris rings and answers.
    ("e_queue_answered", "2026-11-26T23:40:30Z",
     [(REGISTER, 17), (HIDE, 17), (SHOW, 18), (FINISH, 18)]),
    # anna answers and transfers to boris: the call is his, the last who talked (DESIGN: the owner of the talk).
    ("h1_blind_transfer", "2026-11-26T23:41:30Z",
     [(REGISTER, 17), (SHOW, 18), (HIDE, 17), (FINISH, 18)]),
])
async def test_one_card_per_ringing_user_hidden_for_those_who_did_not_answer(
        tmp_path: Path, bitrix: FakeBitrix, capture_name: str, now: str, expected: list[tuple[str, int]]) -> None:
    async with gateway(tmp_path, at(now), config(bitrix)) as h:
        await capture(h, capture_name)
        await deliver(h)
    assert [(method, params["USER_ID"] if method in (REGISTER, FINISH) else params["USER_ID"][0])
            for method, params in bitrix.calls] == expected
    (call_id,) = bitrix.open | set(bitrix.finished)
    assert all(params.get("CALL_ID", call_id) == call_id for _, params in bitrix.calls)
    assert bitrix.calls[-1][1]["STATUS_CODE"] == "200"


async def test_a_ring_heard_of_late_registers_without_a_card(tmp_path: Path, bitrix: FakeBitrix) -> None:
    async with gateway(tmp_path, at("2026-11-26T23:45:00Z"), config(bitrix)) as h:  # minutes after the ring
        await capture(h, "k_agi_fallback")
        await deliver(h)
    assert bitrix.methods() == [REGISTER, FINISH]  # no card shown, none to hide
    assert bitrix.calls[0][1]["SHOW"] == 0


async def test_a_finish_stored_before_a_500_is_not_finished_twice(tmp_path: Path, bitrix: FakeBitrix) -> None:
    clock = at("2026-11-26T23:39:30Z")
    async with gateway(tmp_path, clock, config(bitrix)) as h:
        await capture(h, "a_answered")
        bitrix.fail_next_finish = True
        await deliver(h)
        assert await outbox(h) == [("call.ringing", "done", 1), ("call.answered", "done", 1),
                                   ("call.finished", "pending", 1)]
        clock.now += 3600  # the retry is due
        await deliver(h)
        assert (await outbox(h))[-1] == ("call.finished", "done", 2)
    assert bitrix.methods() == [REGISTER, FINISH, FINISH, "voximplant.statistic.get"]
    assert len(bitrix.finished) == 1 and bitrix.calls[1] == bitrix.calls[2]  # the second was refused


async def test_errors_bitrix_answers_are_retried_or_dead_by_their_kind(tmp_path: Path, bitrix: FakeBitrix) -> None:
    clock = at("2026-11-26T23:39:30Z")
    async with gateway(tmp_path, clock, config(bitrix)) as h:
        await capture(h, "a_answered")
        bitrix.errors[REGISTER] = (503, "QUERY_LIMIT_EXCEEDED")
        await deliver(h)
        assert await outbox(h) == [("call.ringing", "pending", 1), ("call.answered", "pending", 0),
                                   ("call.finished", "pending", 0)]
        clock.now += 3600
        bitrix.errors[REGISTER] = (400, "ERROR_ARGUMENT")  # a wrong parameter: retrying cannot help
        await deliver(h)
        (ringing,) = await h.bridge.outbox.listed("dead")
        assert ringing.event == "call.ringing" and ringing.last_error is not None
        assert "ERROR_ARGUMENT" in ringing.last_error and CODE not in ringing.last_error  # the host, not the URL
    assert bitrix.methods()[:3] == [REGISTER, REGISTER, REGISTER]  # then the finish registers the call itself


async def test_an_outbound_call_no_ring_announced_is_registered_at_its_end_without_a_card(
        tmp_path: Path, bitrix: FakeBitrix) -> None:
    clock = at("2026-11-27T09:10:00Z")
    async with gateway(tmp_path, clock, config(bitrix)) as h:
        await play(h, CallFactory().click_to_call("102", "+79161110007", SHOP_B, channel_id="c2c-phone-1"), clock.now)
        await deliver(h)
    (register, params), (finish, ended) = bitrix.calls
    assert (register, finish) == (REGISTER, FINISH)
    user = {k: v for k, v in params.items() if k in ("USER_ID", "USER_PHONE_INNER")}
    assert user in ({"USER_ID": 18}, {"USER_PHONE_INNER": "102"})  # boris, by id once the record names him
    assert {k: v for k, v in params.items() if k not in user} == {
        "PHONE_NUMBER": "+79161110007", "TYPE": 1, "CALL_START_DATE": "2026-11-27T12:10:00+03:00",
        "CRM_CREATE": 0, "SHOW": 0}
    assert set(params) | {"LINE_NUMBER"} == set(user) | set(sample("telephony.externalcall.register__outbound")) - {
        "USER_ID"}
    assert (ended["STATUS_CODE"], ended["DURATION"], ended["ADD_TO_CHAT"]) == ("200", 4, 0)


# -- recordings ----------------------------------------------------------------------------


async def test_the_recording_is_attached_after_the_finish_as_mp3(tmp_path: Path, bitrix: FakeBitrix) -> None:
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), config(bitrix)) as h:
        await capture(h, "a_answered")
        (record,) = h.records
        assert record.recording_path is not None
        planted = h.asterisk_dir / record.recording_path.rsplit("/", 1)[-1]  # where Asterisk writes it
        planted.write_bytes(wav(3.4))
        settle(planted)
        assert await h.collector.collect_due() == 1  # kept as Opus
        await deliver(h)
    assert bitrix.methods() == [REGISTER, FINISH, ATTACH]
    (call_id,) = bitrix.finished
    filename, mp3 = bitrix.records[call_id]
    assert filename == "1795736348.0.mp3"
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)  # MPEG audio
    assert AudioSegment.from_file(io.BytesIO(mp3), format="mp3").duration_seconds == pytest.approx(3.4, abs=0.15)


async def test_a_recording_whose_file_is_gone_is_dead(tmp_path: Path, bitrix: FakeBitrix) -> None:
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), config(bitrix)) as h:
        await capture(h, "a_answered")
        (record,) = h.records
        assert record.recording_path is not None
        planted = h.asterisk_dir / record.recording_path.rsplit("/", 1)[-1]
        planted.write_bytes(wav(1.0))
        settle(planted)
        assert await h.collector.collect_due() == 1
        kept = await h.recordings.get(record.call_id)
        assert kept is not None and kept.file is not None
        (h.recordings_dir / kept.file).unlink()
        await deliver(h)
        (dead,) = await h.bridge.outbox.listed("dead")
    assert dead.event == "recording.ready"
    assert bitrix.methods() == [REGISTER, FINISH]


# -- OnExternalCallStart -----------------------------------------------------------------------


async def post(url: str, body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(
            url, data=body, headers={"content-type": "application/x-www-form-urlencoded"}) as response:
        return response.status, await response.json()


async def test_a_click_in_bitrix24_starts_a_call_whose_finish_uses_its_call_id(
        tmp_path: Path, bitrix: FakeBitrix) -> None:
    body = (SAMPLES / "bitrix24_onexternalcallstart__outbound.txt").read_bytes().strip()
    bitrix_call_id = "externalCall.bb1e2d3c4b5a69788796a5b4c3d2e1f0.1772443790"
    bitrix.open.add(bitrix_call_id)  # Bitrix24 made that call when the user clicked
    clock = at("2026-11-27T09:10:00Z")
    async with gateway(tmp_path, clock, config(bitrix)) as h:
        url = h.url  # the gateway's own app serves the route
        status, answer = await post(f"{url}/crm/bitrix24/bx/events", body.replace(TOKEN.encode(), b"x" * len(TOKEN)))
        assert (status, answer["error"]) == (401, "bad_token")
        assert h.ami.originates == []
        assert (await post(f"{url}/crm/bitrix24/nope/events", body))[0] == 404

        status, answer = await post(f"{url}/crm/bitrix24/bx/events", body)
        assert status == 200 and answer["ok"] is True, answer
        (originate,) = h.ami.originates
        assert (originate["Channel"], originate["Exten"], originate["ChannelId"]) == (
            "PJSIP/101", "+79990003344", answer["call_id"])  # user 17 is anna
        assert f"OUTCID={SHOP_B}" in originate["Variable"]  # the line chosen in Bitrix24

        await play(h, CallFactory().click_to_call("101", "+79990003344", SHOP_B, channel_id=answer["call_id"]),
                   clock.now)
        await deliver(h)
    assert bitrix.calls == [(FINISH, {"CALL_ID": bitrix_call_id, "USER_ID": 17, "DURATION": 4, "STATUS_CODE": "200",
                                      "ADD_TO_CHAT": 0})]  # never registered


def test_the_event_is_read_only_with_the_token_and_its_fields() -> None:
    cfg = Bitrix24Config(name="bx", default_user_id=1, webhook_url="https://x.bitrix24.ru/rest/1/c/",
                         application_token=TOKEN)
    body = (SAMPLES / "bitrix24_onexternalcallstart__outbound.txt").read_bytes().strip()
    assert parse_call_start(body, cfg) == CallStart(
        bitrix_call_id="externalCall.bb1e2d3c4b5a69788796a5b4c3d2e1f0.1772443790", user_id=17, phone="+79990003344",
        line_number="74950000100", crm_entity_type="CONTACT", crm_entity_id=797)
    assert parse_call_start(body.replace(b"event=ONEXTERNALCALLSTART", b"event=ONAPPUNINSTALL"), cfg) is None
    cases = [(body.replace(b"data%5BUSER_ID%5D=17", b"data%5BUSER_ID%5D="), "bad_request"),
             (body.replace(b"auth%5Bapplication_token%5D=", b"auth%5Bother%5D="), "bad_token"),
             (b"\xff\xfe", "bad_request")]
    for bad, code in cases:
        with pytest.raises(BitrixEventError) as refused:
            parse_call_start(bad, cfg)
        assert refused.value.code == code


# -- OAuth ------------------------------------------------------------------------------------


async def test_oauth_tokens_are_refreshed_stored_and_renewed_once_when_expired(
        tmp_path: Path, bitrix: FakeBitrix) -> None:
    oauth = config(bitrix, webhook_url=None, portal_url=bitrix.url, client_id="app.client",
                   client_secret="client-secret", refresh_token="r0", oauth_url=f"{bitrix.url}/oauth/token/")
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), oauth) as h:
        await capture(h, "a_answered")
        await h.bridge.drain()
        assert await h.bridge.round("bx")  # the ring: a first token, then register
        bitrix.access = set()  # the portal lets the access token expire
        await deliver(h)
        assert [state for _, state, _ in await outbox(h)] == ["done"] * 3
        stored = await h.store.read("SELECT sink, access_token, refresh_token FROM crm_tokens")
    assert bitrix.refreshed_with == ["r0", "r1"]  # each refresh token once: Bitrix24 rotates them
    assert [tuple(row) for row in stored] == [("bx", "a2", "r2")]
    assert bitrix.methods() == [REGISTER, FINISH]  # the refused finish was not recorded, then sent again
    # After a restart the stored pair is used: the config's r0 is spent.
    async with gateway(tmp_path, at("2026-11-26T23:39:30Z"), oauth) as h:
        await capture(h, "b_missed")
        await deliver(h)
        assert [state for _, state, _ in await outbox(h)][-3:] == ["done"] * 3
    assert bitrix.refreshed_with == ["r0", "r1"] and bitrix.methods()[2:] == [REGISTER, HIDE, FINISH]


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "key"), [
    ({"webhook_url_env": "BX_URL"}, "default_user_id"),
    ({"webhook_url_env": "BX_URL", "default_user_id": 1, "users": {"anna": "17"}}, "users.anna"),
    ({"webhook_url_env": "BX_BAD", "default_user_id": 1}, "webhook_url_env"),
    ({"webhook_url": "https://x.bitrix24.ru/rest/1/c/", "default_user_id": 1}, "webhook_url"),
    ({"default_user_id": 1}, "portal_url"),
    ({"portal_url": "https://x.bitrix24.ru", "default_user_id": 1}, "client_id"),
    ({"portal_url": "https://x.bitrix24.ru", "client_id": "a", "client_secret_env": "BX_SECRET",
      "default_user_id": 1}, "refresh_token_env"),
    ({"webhook_url_env": "BX_URL", "default_user_id": 1, "lines": {"74950000001": "1"}}, "lines.74950000001"),
    ({"webhook_url_env": "BX_URL", "default_user_id": 1, "live_seconds": 0}, "live_seconds"),
])
def test_config_errors_name_the_key_and_never_the_webhook_s_code(table: dict[str, Any], key: str) -> None:
    environ = {"BX_URL": "https://x.bitrix24.ru/rest/1/s3cretcode/", "BX_BAD": "https://x.bitrix24.ru/s3cretcode",
               "BX_SECRET": "shh"}
    with pytest.raises(ValueError) as refused:
        parse(Table(table, "gw.toml", "[[crm.bitrix24]] #1"), "bx", environ, Path("."))
    assert f"[[crm.bitrix24]] #1 {key}" in str(refused.value) and "s3cretcode" not in str(refused.value)


def test_a_good_config_reads_whole() -> None:
    table = {"webhook_url_env": "BX_URL", "application_token_env": "BX_TOKEN", "users": {"anna": 17},
             "default_user_id": 3, "crm_create": False, "show_cards": False, "lines": {SHOP_B: "74950000100"},
             "live_seconds": 30}
    t = Table(table, "gw.toml", "[[crm.bitrix24]] #1")
    got = parse(t, "bx", {"BX_URL": "https://x.bitrix24.ru/rest/1/code", "BX_TOKEN": TOKEN}, Path("."))
    t.check_unknown()
    assert got == Bitrix24Config(name="bx", default_user_id=3, webhook_url="https://x.bitrix24.ru/rest/1/code/",
                                 application_token=TOKEN, users={"anna": 17}, crm_create=False, show_cards=False,
                                 lines={SHOP_B: "74950000100"}, live_seconds=30.0)
    assert "code" not in repr(got) and TOKEN not in repr(got)
