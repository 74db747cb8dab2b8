"""Security through the real app, for what the other test files leave open.

Already tested elsewhere (not repeated here): a foreign Origin refused without
a cookie, expired, forged and cross-purpose tokens, the 4 KiB frame limit
(tests/test_hub.py); API roles and session revocation (tests/test_web_api.py);
who may hear a recording, signed links, the collector's path checks
(tests/test_recordings.py); each provider's signature over its samples, wrong
tokens, sequential doubled deliveries and 413 with a Content-Length
(tests/test_zadarma.py, test_mango.py, test_sipuni.py, test_twilio.py).

Here: cross-site websocket hijacking with a valid session cookie; token reuse
and cross-agent use; 1,000 random calls routed while every agent listens; a
corpus of path-traversal spellings against every route that takes a call id
or a file; concurrent webhook replays and bodies that come without a
Content-Length or in pieces; and one whole session whose logs are searched
for every secret it handled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from connectors.ami.codec import AmiMessage
from connectors.ami.scenarios import DID_NAMES, CallFactory, Scenario
from connectors.ami.server import encode_message
from crm_bridge.bridge_config import CrmConfig, SinkEntry
from crm_bridge.sinks.amocrm import AmoCrmSinkConfig
from crm_bridge.sinks.bitrix24 import Bitrix24Config
from crm_bridge.sinks.onec import OneCSinkConfig
from crm_bridge.sinks.webhook import WebhookSinkConfig
from gateway.config import WebhooksConfig
from gateway.numberplan import PlanBook
from gateway.users import Role, User
from gateway.web import STATIC
from tests import test_mango as mango
from tests import test_sipuni as sipuni
from tests import test_twilio as twilio
from tests import test_zadarma as zadarma
from tests.harness import PASSWORD, SECRET, Harness, default_users, password_hash
from tests.test_crm_bitrix24 import SAMPLES as B24_SAMPLES
from tests.test_crm_bitrix24 import SHOP_B, TOKEN as B24_TOKEN, USERS as B24_USERS
from tests.test_hub import FakeClock, auth, open_ws, refused, running, tab
from tests.test_numberplan import example_plan
from tests.test_recordings import answered_call, ready

FORM = "application/x-www-form-urlencoded"


async def login(h: Harness, who: str, password: str = PASSWORD) -> str:
    """The session cookie's value after a real login."""
    async with aiohttp.ClientSession() as http, http.post(
            f"{h.url}/api/login", json={"login": who, "password": password}) as response:
        assert response.status == 200
        return response.cookies["cti_session"].value


async def page_token(h: Harness, cookie: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(
            f"{h.url}/api/token", headers={"Cookie": f"cti_session={cookie}"}) as response:
        assert response.status == 200
        token: str = (await response.json())["token"]
        return token


@dataclass
class Raw:
    status: int
    body: bytes


async def raw_http(h: Harness, method: str, target: bytes, *, headers: dict[str, str] | None = None,
                   body: Sequence[bytes] = (), pause: float = 0.0) -> Raw:
    """One request written byte for byte (no client normalises ``target``);
    ``body`` is sent part by part with ``pause`` between the parts."""
    reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
    try:
        head = [b"%s %s HTTP/1.1" % (method.encode(), target), f"Host: 127.0.0.1:{h.port}".encode(),
                b"Connection: close", *(f"{k}: {v}".encode() for k, v in (headers or {}).items())]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        for part in body:
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(part)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return Raw(int(status_line.split()[1]) if answer else 0, rest.partition(b"\r\n\r\n")[2])  # 0: no answer


# -- cross-site websocket hijacking and tokens ------------------------------------------------


@pytest.fixture
async def h_started(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as harness:
        yield harness


async def test_a_foreign_origin_is_refused_at_the_upgrade_even_with_a_valid_session_cookie(
        h_started: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """What a page on evil.example.com can make anna's browser do: open /ws with
    her cookie. It is refused before any frame; the same socket from the
    gateway's own page is accepted."""
    h = h_started
    cookie = await login(h, "anna")
    headers = {"Cookie": f"cti_session={cookie}"}
    for origin in ("http://evil.example.com", "null", f"http://127.0.0.1:{h.port + 1}", h.url.replace("http", "https")):
        with pytest.raises(InvalidStatus) as refused_upgrade:
            await open_ws(h, origin=origin, additional_headers=headers)
        assert refused_upgrade.value.response.status_code == 403, origin
        assert h.hub.online() == {}
    assert sum("origin" in r.getMessage() and "not allowed" in r.getMessage() for r in caplog.records) == 4
    ws = await open_ws(h, origin=h.url, additional_headers=headers)
    ready = await auth(ws, await page_token(h, cookie))
    assert (ready["type"], ready["agent"]["login"]) == ("ready", "anna")
    assert h.hub.online() == {"anna": 1}
    await ws.close()


async def test_a_token_may_open_its_agent_s_sockets_again_until_it_expires(tmp_path: Path) -> None:
    """docs/embed.md: a widget with a fixed ``data-token`` reconnects with the
    same token, so reuse is allowed while it lasts; it never names anyone else."""
    clock = FakeClock()
    async with running(tmp_path, clock=clock) as h:
        token = h.token("anna", ttl=120)
        first, second = await open_ws(h), await open_ws(h)
        assert [(await auth(ws, token))["agent"]["login"] for ws in (first, second)] == ["anna", "anna"]
        assert h.hub.online() == {"anna": 2}
        await first.close()
        await second.close()
        clock.now += 120
        error, code = await refused(await open_ws(h), token)
        assert (error["message"], code) == ("token expired", 4401)


async def test_anna_s_token_gets_anna_s_pops_only(h_started: Harness) -> None:
    """Cross-agent use: the token names the agent; a call ringing boris never
    reaches a socket opened with anna's token, and a token of hers is no
    session cookie for the API nor a recording link."""
    h = h_started
    async with tab(h, "anna") as anna, tab(h, "boris") as boris:
        await h.ami.play(CallFactory().direct_answered("+79161110042", "X", "+74950000001", agent="102"), speed=0)
        (record,) = await h.wait_records(1)
        await boris.until(lambda f: f.get("state") == "ended")
        assert await anna.quiet() == []
    token = h.token("anna")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{h.url}/api/me", headers={"Cookie": f"cti_session={token}"}) as response:
            assert response.status == 401
        async with http.get(f"{h.url}/api/calls/{record.call_id}/recording?t={token}") as response:
            assert (response.status, (await response.json())["error"]) == (401, "bad_link")


# -- the authorization matrix: 1,000 random calls ------------------------------------------------

AGENTS = {"101": "anna", "102": "boris", "103": "vera", "104": "gleb"}


def matrix_users() -> tuple[User, ...]:
    return (*default_users(), User("gleb", "Gleb Titov", Role.AGENT, password_hash(), team="support",
                                   extensions=("104",)))


def random_call(factory: CallFactory, rng: random.Random, n: int) -> Scenario:
    caller, name, did = f"+7916{rng.randrange(10**7):07d}", f"Caller {n}", rng.choice(sorted(DID_NAMES))
    agents = sorted(AGENTS)
    one, two = rng.sample(agents, 2)
    kind = rng.randrange(10)
    if kind == 0:
        return factory.direct_answered(caller, name, did, agent=one)
    if kind == 1:
        return factory.direct_missed(caller, name, did, agent=one)
    if kind == 2:
        return factory.abandoned_ringing(caller, name, did, agent=one)
    if kind == 3:
        return factory.busy(caller, name, did, agent=one)
    if kind in (4, 5):
        group = rng.sample(agents, rng.randint(2, 4))
        return factory.ring_group(caller, name, did, group, answering=rng.choice([*group, None]))
    if kind == 6:
        members = rng.sample(agents, rng.randint(2, 4))
        return factory.queue(caller, name, did, members, answering=rng.choice([*members, None]),
                             abandon_after=rng.choice([None, 5.0, 30.0]), timeout=rng.choice([None, 25.0]))
    if kind == 7:
        return factory.blind_transfer(caller, name, did, from_agent=one, to_agent=two)
    if kind == 8:
        return factory.redirect(caller, name, did, from_agent=one, to_agent=two)
    return factory.attended_transfer(caller, name, did, from_agent=one, to_agent=two)


def rang_in(scenario: Scenario) -> tuple[str, set[str]]:
    """The call id and the extensions whose phone rang, read from the PBX's own events."""
    call_id = next(str(m["Linkedid"]) for _, m in scenario if "Linkedid" in m)
    rang = {str(m["Channel"])[len("PJSIP/"):].split("-")[0] for _, m in scenario
            if m.get("Event") == "Newstate" and m.get("ChannelStateDesc") == "Ringing"
            and str(m.get("Channel", "")).startswith("PJSIP/")}
    return call_id, rang


def interleaved(scenarios: Sequence[Scenario], rng: random.Random, overlap: int = 4) -> list[AmiMessage]:
    """A few calls at a time, their messages shuffled together, each call's in order."""
    merged: list[AmiMessage] = []
    for start in range(0, len(scenarios), overlap):
        queues = [[m for _, m in s] for s in scenarios[start:start + overlap]]
        while any(queues):
            merged.append(rng.choice([q for q in queues if q]).pop(0))
    return merged


class Listener:
    """An agent's socket read without pause: every frame kept, nothing left to back up."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for text in self.ws:
            self.frames.append(json.loads(text))


async def settled(listeners: Iterable[Listener], quiet: float = 0.5) -> None:
    """Until no socket got a frame for ``quiet`` seconds."""
    before = -1
    while (now := sum(len(listener.frames) for listener in listeners)) != before:
        before = now
        await asyncio.sleep(quiet)


async def test_a_thousand_random_calls_pop_exactly_the_agents_whose_phones_rang(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    factory = CallFactory(start_epoch=1_795_700_000.0, rng=random.Random(7))
    scenarios = [random_call(factory, rng, n) for n in range(1000)]
    truth = dict(rang_in(s) for s in scenarios)
    assert len(truth) == 1000
    async with running(tmp_path, users=matrix_users()) as h:
        listeners: dict[str, Listener] = {}
        for login in AGENTS.values():
            ws = await open_ws(h)
            assert (await auth(ws, h.token(login)))["type"] == "ready"
            listeners[login] = Listener(ws)
        messages = interleaved(scenarios, rng)
        for start in range(0, len(messages), 500):
            await h.ami.send_raw(b"".join(encode_message(m) for m in messages[start:start + 500]))
        records = await h.wait_records(1000, timeout=120)
        await h.gateway.drain()
        await settled(listeners.values())
        assert not any(listener.task.done() for listener in listeners.values())  # nobody was dropped as slow
        for listener in listeners.values():
            await listener.ws.close()
            await listener.task

    # ``rang`` lists the agents a call was offered to: every phone that rang, and
    # also one dialled that answered busy at once (i_busy), which never rang.
    offered_to = {r.call_id: set(r.rang) for r in records}
    assert offered_to.keys() == truth.keys()
    assert all(truth[call] <= offered_to[call] for call in truth)
    offered = {(call_id, AGENTS[ext]) for call_id, rang in truth.items() for ext in rang}
    for login, listener in listeners.items():
        extension = next(ext for ext, who in AGENTS.items() if who == login)
        about = [f for f in listener.frames if "call_id" in f]
        strangers = {f["call_id"] for f in about} - {call for call, who in offered if who == login}
        assert not strangers, (login, sorted(strangers)[:5])
        assert all(f["pop_id"] == f"{f['call_id']}/{extension}" for f in about), login
        popped = {f["call_id"] for f in about if f["type"] == "pop"}
        assert popped == {call for call, who in offered if who == login}, login
    assert len(offered) > 1500  # ring groups, queues and transfers offered calls to several agents


# -- path traversal: every route that takes a call id or a file --------------------------------

# Spellings of "go up" that servers, proxies and file systems have been fooled by.
UP = [
    "../", "..%2f", "%2e%2e/", "%2e%2e%2f", "%2E%2E%2F", ".%2e/", "%252e%252e%252f", "..%252f",
    "..\\", "..%5c", "%2e%2e%5c", "..%255c", "%c0%ae%c0%ae/", "%c0%ae%c0%ae%c0%af", "%e0%80%ae%e0%80%ae/",
    "..%c0%af", "..%c1%9c", "%u002e%u002e/", "..%u2215", "%ef%bc%8e%ef%bc%8e%ef%bc%8f",  # fullwidth "../"
    "%e2%80%a4%e2%80%a4/", "....//", "..;/", ".../", "..%00/", "%00../", ".%00./", "..%0d%0a/", "/..",
]
TARGETS = ["secret.wav", "etc/passwd", "recordings/", "gw.sqlite3"]
OUTSIDE = b"SECRET-OUTSIDE-THE-RECORDINGS-0451"


def traversals(prefix: str = "") -> list[bytes]:
    spellings = []
    for up in UP:
        for depth in (1, 3, 8):
            for target in TARGETS:
                spellings.append((prefix + up * depth + target).encode())
    spellings += ["%2fetc%2fpasswd".encode(), b"C:%5cWindows%5cwin.ini", b"%5c%5c127.0.0.1%5cshare",
                  b"secret.wav%00.ogg", "．．／secret.wav".encode(), b"..\xc0\xafsecret.wav"]
    return spellings


async def test_no_spelling_of_a_path_leads_out_of_any_route(tmp_path: Path) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h:
        call_id = await answered_call(h)
        recording = await ready(h, call_id)
        assert recording.file is not None
        (tmp_path / "secret.wav").write_bytes(OUTSIDE)
        (h.recordings_dir.parent / "secret.ogg").write_bytes(OUTSIDE)
        kept = (h.recordings_dir / recording.file).read_bytes()
        cookie = {"Cookie": f"cti_session={await login(h, 'admin')}"}  # may hear and hold any call
        agent = {"Cookie": f"cti_session={await login(h, 'anna')}", "Content-Type": "application/json"}
        listen_page = (STATIC / "listen.html").read_bytes()
        result, hold = b'{"result": "order"}', b'{"hold": true}'
        routes: list[tuple[str, str, dict[str, str], Sequence[bytes]]] = [
            ("GET", "/api/calls/{}/recording", cookie, ()),
            ("GET", "/api/calls/{}/recording/link", cookie, ()),
            ("GET", "/calls/{}/recording", cookie, ()),
            ("POST", "/api/calls/{}/result", {**agent, "Content-Length": str(len(result))}, (result,)),
            ("POST", "/api/calls/{}/legal-hold",
             {**cookie, "Content-Type": "application/json", "Content-Length": str(len(hold))}, (hold,)),
        ]
        leaks: list[str] = []
        checked = 0
        for method, route, headers, body in routes:
            for spelling in traversals():
                answer = await raw_http(h, method, route.encode().replace(b"{}", spelling), headers=headers, body=body)
                checked += 1
                if route == "/calls/{}/recording" and answer.status == 200:
                    ok = answer.body == listen_page  # the static page: it asks the API, which checks
                else:
                    ok = 400 <= answer.status < 500 and answer.status not in (401, 403)
                if not ok or OUTSIDE in answer.body or kept[:64] in answer.body or b"root:" in answer.body:
                    leaks.append(f"{method} {route} {spelling!r}: {answer.status}")
        for spelling in traversals():  # the static files: a name from the request, inside gateway/static only
            for target in (b"/static/" + spelling, b"/static/" + spelling.replace(b"secret.wav", b"web.py")):
                answer = await raw_http(h, "GET", target, headers=cookie)
                checked += 1
                if answer.status != 404 and answer.status != 403 and answer.status != 400 \
                        or b"def build_app" in answer.body or OUTSIDE in answer.body:
                    leaks.append(f"GET {target!r}: {answer.status}")
        assert leaks == [], leaks[:10]
        assert checked > 1500
        assert await h.recordings.listens(since=0) == []  # nothing was heard on the way
        # The corpus reaches the routes: the real call id and a real static file still answer.
        assert (await raw_http(h, "GET", f"/api/calls/{call_id}/recording".encode(), headers=cookie)).status == 200
        assert (await raw_http(h, "GET", b"/static/listen.html")).status == 200


# -- webhooks: concurrent replays, bodies without a length or in pieces ---------------------------

# Regressions: connectors/webhook.py read the body once (only what had arrived), gateway/bitrix24_api.py
# could not build its 413, crm_bridge/bridge.py logged aiohttp errors with the request URL (a secret).

@dataclass(frozen=True)
class Provider:
    name: str
    webhooks: WebhooksConfig
    clock: float
    flow: list[tuple[str, dict[str, str], bytes]]  # (path, headers, body) of one whole call


def _providers() -> dict[str, Provider]:
    form = {"Content-Type": FORM}
    return {
        "zadarma": Provider("zadarma", zadarma.ZADARMA, zadarma.SAMPLE_DAY, [
            ("/webhooks/zadarma/main", {**form, "Signature": zadarma.SIGNATURES[n]}, zadarma.body(n))
            for n in zadarma.ANSWERED]),
        "mango": Provider("mango", mango.mango_config(), mango.SAMPLE_DAY, [
            (f"/webhooks/mango/main/{mango.path_of(n)}", form, mango.body(n)) for n in mango.ANSWERED]),
        "sipuni": Provider("sipuni", sipuni.SIPUNI, sipuni.SAMPLE_DAY, [
            (f"/webhooks/sipuni/main/{sipuni.TOKEN}", form, sipuni.query(n).encode()) for n in sipuni.ANSWERED]),
        "twilio": Provider("twilio", twilio.TWILIO, twilio.SAMPLE_START, [
            (f"/webhooks/twilio/main/{twilio.target(n)}", {**form, "X-Twilio-Signature": twilio.SIGNATURES[n][1]},
             twilio.body(n)) for n in twilio.ANSWERED]),
    }


PROVIDERS = _providers()
B24_CLICK = (B24_SAMPLES / "bitrix24_onexternalcallstart__outbound.txt").read_bytes().strip()


def b24_crm() -> CrmConfig:
    return CrmConfig(sinks=(SinkEntry("bitrix24", "bx", Bitrix24Config(
        name="bx", default_user_id=1, webhook_url="http://127.0.0.1:9/rest/1/unused/", application_token=B24_TOKEN,
        users=B24_USERS, lines={SHOP_B: "74950000100"})),))


@asynccontextmanager
async def provider_gateway(tmp_path: Path, provider: str) -> AsyncIterator[Harness]:
    clock = FakeClock()
    if provider == "bitrix24":
        async with running(tmp_path, plans=PlanBook(example_plan()), clock=clock, crm=b24_crm(),
                           deliver_crm=False) as h:
            yield h
        return
    clock.now = PROVIDERS[provider].clock
    async with running(tmp_path, plans=PlanBook(example_plan()), clock=clock,
                       webhooks=PROVIDERS[provider].webhooks) as h:
        yield h


async def inbox_count(h: Harness) -> int:
    return int((await h.store.read("SELECT count(*) FROM webhook_inbox"))[0][0])


async def post(http: aiohttp.ClientSession, h: Harness, path: str, headers: dict[str, str], body: bytes) -> int:
    async with http.post(f"{h.url}{path}", data=body, headers=headers) as response:
        await response.read()
        return response.status


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
async def test_a_call_delivered_three_times_at_once_is_one_record(tmp_path: Path, provider: str) -> None:
    """Replays race each other (a provider retrying while the first attempt is
    still in flight): the inbox's UNIQUE key absorbs them, not a memory set."""
    flow = PROVIDERS[provider].flow
    async with provider_gateway(tmp_path, provider) as h, aiohttp.ClientSession() as http:
        for path, headers, body in flow:
            statuses = await asyncio.gather(*(post(http, h, path, headers, body) for _ in range(3)))
            assert statuses == [200, 200, 200], path
        await h.webhooks.idle()
        await h.gateway.drain()
        assert await inbox_count(h) == len({body for _, _, body in flow})
        assert len(h.records) == 1 and len(await h.store.read("SELECT call_id FROM calls")) == 1


async def test_a_bitrix24_click_sent_three_times_at_once_dials_once(tmp_path: Path) -> None:
    async with provider_gateway(tmp_path, "bitrix24") as h, aiohttp.ClientSession() as http:
        statuses = await asyncio.gather(*(post(http, h, "/crm/bitrix24/bx/events", {"Content-Type": FORM}, B24_CLICK)
                                          for _ in range(3)))
        assert statuses == [200, 200, 200]
        await h.click_to_call.drain()
        assert len(h.ami.originates) == 1


def first_delivery(provider: str) -> tuple[str, dict[str, str], bytes]:
    if provider == "bitrix24":
        return "/crm/bitrix24/bx/events", {"Content-Type": FORM}, B24_CLICK
    return PROVIDERS[provider].flow[0]


def chunked(parts: Iterable[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(part), part) for part in parts] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("provider", [*sorted(PROVIDERS), "bitrix24"])
async def test_a_body_without_a_length_is_bounded_too(tmp_path: Path, provider: str) -> None:
    """A chunked body has no Content-Length to refuse up front: 413 once it
    passes 64 KiB, whatever pieces it comes in; nothing is kept or dialled."""
    path, headers, _ = first_delivery(provider)
    chunked_headers = {**headers, "Transfer-Encoding": "chunked"}
    async with provider_gateway(tmp_path, provider) as h:
        for piece in (70_000, 16_384, 1_000):
            answer = await raw_http(h, "POST", path.encode(), headers=chunked_headers,
                                    body=chunked([b"a" * piece] * (70_000 // piece + 1)), pause=0.001)
            assert answer.status == 413, (piece, answer)
        if provider == "bitrix24":  # the providers' 413 with a Content-Length is in their own test files
            answer = await raw_http(h, "POST", path.encode(), headers={**headers, "Content-Length": "70000"},
                                    body=[b"a" * 70_000])
            assert answer.status == 413, answer
        assert await inbox_count(h) == 0 and h.ami.originates == []


@pytest.mark.parametrize("provider", [*sorted(PROVIDERS), "bitrix24"])
async def test_a_signed_body_that_arrives_in_pieces_is_read_whole(tmp_path: Path, provider: str) -> None:
    """A slow network delivers a body in several TCP segments; the signature is
    over all of it, so the whole body must be read before it is checked."""
    path, headers, body = first_delivery(provider)
    half = len(body) // 2
    async with provider_gateway(tmp_path, provider) as h:
        answer = await raw_http(h, "POST", path.encode(), headers={**headers, "Content-Length": str(len(body))},
                                body=[body[:half], body[half:]], pause=0.05)
        assert answer.status == 200, answer
        answer = await raw_http(h, "POST", path.encode(), headers={**headers, "Transfer-Encoding": "chunked"},
                                body=chunked([body[:half], body[half:]]), pause=0.05)
        assert answer.status == 200, answer
        if provider == "bitrix24":
            await h.click_to_call.drain()
            assert len(h.ami.originates) == 1
        else:
            assert await inbox_count(h) == 1


# -- secrets never reach the logs --------------------------------------------------------------

AMI_SECRET = "s3cret"  # tests/harness.py's AMI user
WRONG_PASSWORD = "hunter2-wrong-password"
B24_CODE = "1/b24-webhook-code-s3cr3t-7731"
HOOK_SECRET = "crm-hook-signing-secret-5512"
AMO_TOKEN = "amo-long-lived-token-88aa9f"
ONEC_PASSWORD = "onec-password-0c0c0c77"


async def hostile_crm() -> asyncio.Server:
    """A 'CRM' that answers every request with bytes that are not HTTP: the
    client's errors then carry the request's URL, the place a secret hides."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 999999 Nonsense\r\nX: \x00\r\n\r\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


def crm_sinks(url: str) -> CrmConfig:
    return CrmConfig(public_base_url="http://cti.example.com", sinks=(
        SinkEntry("bitrix24", "bx", Bitrix24Config(name="bx", default_user_id=1, webhook_url=f"{url}/rest/{B24_CODE}/",
                                                   application_token=B24_TOKEN, users=B24_USERS)),
        SinkEntry("webhook", "erp", WebhookSinkConfig("erp", f"{url}/cti-events", HOOK_SECRET)),
        SinkEntry("amocrm", "amo", AmoCrmSinkConfig("amo", url, AMO_TOKEN, users={"anna": 5}, default_user_id=1)),
        SinkEntry("onec", "1c", OneCSinkConfig(name="1c", base_url=f"{url}/odata/standard.odata", username="cti",
                                               password=ONEC_PASSWORD)),
    ))


async def test_no_secret_or_token_is_ever_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    crm = await hostile_crm()
    crm_url = f"http://127.0.0.1:{crm.sockets[0].getsockname()[1]}"
    webhooks = WebhooksConfig(accounts=(*zadarma.ZADARMA.accounts, *sipuni.SIPUNI.accounts[:1],
                                        *mango.mango_config().accounts[:1], *twilio.TWILIO.accounts[:1]))
    clock = FakeClock()
    clock.now = zadarma.SAMPLE_DAY
    handed_out: list[str] = []  # tokens, cookies and links made during the session
    try:
        async with running(tmp_path, plans=PlanBook(example_plan()), clock=clock, webhooks=webhooks,
                           crm=crm_sinks(crm_url)) as h, aiohttp.ClientSession() as http:
            async with http.post(f"{h.url}/api/login", json={"login": "anna", "password": WRONG_PASSWORD}) as r:
                assert r.status == 401
            cookies = {who: await login(h, who) for who in ("anna", "olga", "admin")}
            handed_out += cookies.values()
            token = await page_token(h, cookies["anna"])
            handed_out.append(token)
            ws = await open_ws(h, origin=h.url)
            assert (await auth(ws, token))["type"] == "ready"
            for bad in (token[:-2] + "xx", h.signer.issue("ws", "anna", -1)[0], cookies["anna"]):
                handed_out.append(bad)
                await refused(await open_ws(h), bad)

            call_id = await answered_call(h)  # also queues the call for every CRM sink
            await ready(h, call_id)
            async with http.get(f"{h.url}/api/calls/{call_id}/recording/link",
                                headers={"Cookie": f"cti_session={cookies['olga']}"}) as r:
                link = (await r.json())["url"]
            handed_out.append(link.split("t=", 1)[1])
            for url in (link, link[:-3] + "abc"):
                async with http.get(h.url + url, headers={"Range": "bytes=0-9"}) as r:
                    await r.read()

            for path, headers, body in (zadarma_flow := PROVIDERS["zadarma"].flow[:2]):
                await post(http, h, path, headers, body)
                await post(http, h, path, {**headers, "Signature": "x" + headers["Signature"][1:]}, body)
            assert zadarma_flow
            sip_path, sip_headers, sip_body = PROVIDERS["sipuni"].flow[0]
            await post(http, h, sip_path, sip_headers, sip_body)
            await post(http, h, sip_path.replace(sipuni.TOKEN, sipuni.TOKEN[:-1] + "X"), sip_headers, sip_body)
            mango_path, mango_headers, mango_body = PROVIDERS["mango"].flow[0]
            await post(http, h, mango_path, mango_headers, mango_body)
            await post(http, h, mango_path, mango_headers, mango_body.replace(b"sign=", b"sign=0"))
            tw_path, tw_headers, tw_body = PROVIDERS["twilio"].flow[0]
            await post(http, h, tw_path, tw_headers, tw_body)
            await post(http, h, tw_path, {**tw_headers, "X-Twilio-Signature": "AAAA"}, tw_body)
            await post(http, h, "/crm/bitrix24/bx/events", {"Content-Type": FORM},
                       B24_CLICK.replace(B24_TOKEN.encode(), b"x" * len(B24_TOKEN)))
            await h.webhooks.idle()

            for _ in range(300):  # every sink tried (and failed) at least once
                rows = await h.store.read("SELECT DISTINCT sink FROM outbox WHERE attempts > 0")
                if len(rows) == 4:
                    break
                await asyncio.sleep(0.05)
            assert len(rows) == 4, rows
            errors = [str(row[0]) for row in await h.store.read("SELECT last_error FROM outbox WHERE last_error IS NOT NULL")]
            await ws.close()
    finally:
        crm.close()
        await crm.wait_closed()

    secrets = [PASSWORD, WRONG_PASSWORD, SECRET.decode(), AMI_SECRET, B24_CODE, B24_TOKEN, HOOK_SECRET, AMO_TOKEN,
               ONEC_PASSWORD, zadarma.SECRET, sipuni.TOKEN, mango.KEY, mango.SALT, twilio.TOKEN, *handed_out]
    # The websockets library's records are this test's own client talking, not the gateway.
    logged = [_everything_in(record) for record in caplog.records if not record.name.startswith("websockets")]
    assert sum("crm" in text for text in logged) >= 4  # the sinks' failures were logged...
    assert any("bad signature" in text for text in logged)  # ...and the refusals
    found = [(secret[:12], text[:200]) for secret in secrets for text in logged + errors
             if secret in text or (len(secret) > 16 and secret[:16] in text)]
    assert found == [], "\n".join(f"{s}: {t}" for s, t in found)


def _everything_in(record: logging.LogRecord) -> str:
    """A record as any handler could print it: message, raw args, exception, stack."""
    parts = [record.getMessage(), repr(record.args), str(record.msg)]
    if record.exc_info and record.exc_info[1] is not None:
        parts += [repr(record.exc_info[1]), logging.Formatter().formatException(record.exc_info)]
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)
