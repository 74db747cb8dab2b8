"""The HTTP API end to end: login and sessions, the roles of every route, call
results, presence and /metrics, against the whole gateway of tests/harness.py.

Cookies are handled by hand (no cookie jar): a test says exactly which session
each request carries, and can replay one after logout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from connectors.ami.scenarios import CallFactory
from connectors.ami.server import capture_stream
from gateway.config import DEFAULT_CALL_RESULTS
from gateway.users import Role
from gateway.web import MAX_NOTE, SESSION_COOKIE
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, Harness, default_users
from tests.test_hub import (CALLER, DID, auth, capture_messages, open_ws, play_until, rings, running,
                             send_capture_until, tab)

A_CALL = "1795736348.0"  # a_answered: +79161110001 -> 101 (anna), answered
LOGINS = tuple(u.login for u in default_users())
ROLE = {u.login: u.role for u in default_users()}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as harness:
        yield harness


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def log_in(http: aiohttp.ClientSession, h: Harness, login: str, password: str = PASSWORD) -> str:
    """Log in; the session cookie's value."""
    async with http.post(f"{h.url}/api/login", json={"login": login, "password": password}) as response:
        assert response.status == 200, await response.text()
        return response.cookies[SESSION_COOKIE].value


def session(cookie: str | None) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}


async def call(http: aiohttp.ClientSession, h: Harness, method: str, path: str, cookie: str | None,
               **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, f"{h.url}{path}", headers=session(cookie), **kwargs) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body


async def set_result(http: aiohttp.ClientSession, h: Harness, cookie: str, call_id: str,
                     body: Any) -> tuple[int, Any]:
    return await call(http, h, "POST", f"/api/calls/{call_id}/result", cookie, json=body)


# -- login, sessions, logout --------------------------------------------------------------


async def test_login_sets_a_strict_http_only_session_cookie(h: Harness, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{h.url}/api/login", json={"login": "anna", "password": PASSWORD}) as response:
        assert response.status == 200
        body = await response.json()
        set_cookie = response.headers.getall("Set-Cookie")
    assert body == {"user": {"login": "anna", "name": "Анна Иванова", "role": "agent", "team": "sales",
                             "leads": [], "extensions": ["101"]}}
    [cookie] = set_cookie
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")}
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/"
    assert attributes["max-age"] == "Max-Age=43200"  # session_hours = 12
    assert "secure" not in attributes  # cookie_secure is off in the harness (plain http on 127.0.0.1)


@pytest.mark.parametrize("login", LOGINS)
async def test_me_names_the_logged_in_user(h: Harness, http: aiohttp.ClientSession, login: str) -> None:
    status, body = await call(http, h, "GET", "/api/me", await log_in(http, h, login))
    assert status == 200
    assert body["user"]["login"] == login and body["user"]["role"] == ROLE[login].value
    assert body["call_results"] == list(DEFAULT_CALL_RESULTS)
    assert "scrypt" not in str(body)  # no password hash leaves the server


async def test_wrong_password_and_unknown_user_get_the_same_401(h: Harness, http: aiohttp.ClientSession) -> None:
    answers = []
    for login, password in (("anna", "wrong horse"), ("nobody", PASSWORD), ("anna", "")):
        async with http.post(f"{h.url}/api/login", json={"login": login, "password": password}) as response:
            answers.append((response.status, await response.text(), "Set-Cookie" in response.headers))
    assert answers[0] == (401, '{"error": "bad_credentials", "message": "wrong login or password"}', False)
    assert answers[1] == answers[0] == answers[2]


@pytest.mark.parametrize(("kwargs", "status"), [
    ({"data": {"login": "anna", "password": PASSWORD}}, 415),  # a form: also how a cross-site page would post
    ({"data": "login=anna", "headers": {"Content-Type": "text/plain"}}, 415),
    ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400),
    ({"json": ["anna", PASSWORD]}, 400),
    ({"json": {"login": "anna"}}, 400),
    ({"json": {"login": "anna", "password": 12345678}}, 400),
])
async def test_login_wants_a_json_object_with_login_and_password(
        h: Harness, http: aiohttp.ClientSession, kwargs: dict[str, Any], status: int) -> None:
    async with http.post(f"{h.url}/api/login", **kwargs) as response:
        assert response.status == status
        assert "Set-Cookie" not in response.headers


async def test_logout_revokes_the_session(h: Harness, http: aiohttp.ClientSession) -> None:
    cookie = await log_in(http, h, "olga")
    other = await log_in(http, h, "olga")  # another browser of the same user
    assert (await call(http, h, "GET", "/api/me", cookie))[0] == 200
    async with http.post(f"{h.url}/api/logout", headers=session(cookie)) as response:
        assert response.status == 200
        [cleared] = response.headers.getall("Set-Cookie")
    assert cleared.startswith(f'{SESSION_COOKIE}=""') and "Max-Age=0" in cleared
    # The browser drops the cookie; a copy of it is refused all the same.
    assert await call(http, h, "GET", "/api/me", cookie) == (
        401, {"error": "login_required", "message": "log in first"})
    assert (await call(http, h, "GET", "/api/me", other))[0] == 200
    # Logging out without a session, or twice, is harmless.
    assert (await call(http, h, "POST", "/api/logout", None))[0] == 200
    assert (await call(http, h, "POST", "/api/logout", cookie))[0] == 200


@pytest.mark.parametrize("forge", ["ws_token", "flipped", "garbage", "empty"])
async def test_a_cookie_that_is_not_a_session_is_anonymous(
        h: Harness, http: aiohttp.ClientSession, forge: str) -> None:
    cookie = await log_in(http, h, "anna")
    value = {"ws_token": h.token("anna"), "flipped": cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1],
             "garbage": "x.y.z", "empty": ""}[forge]
    async with http.get(f"{h.url}/api/me", headers={"Cookie": f"{SESSION_COOKIE}={value}"}) as response:
        assert response.status == 401


async def test_a_cookie_with_non_ascii_characters_is_anonymous(h: Harness, http: aiohttp.ClientSession) -> None:
    """Regression: Signer.check raised TypeError, which the session middleware let through: a 500."""
    cookie = await log_in(http, h, "anna")
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie[:-1]}ü".encode().decode("latin-1")}
    async with http.get(f"{h.url}/api/me", headers=headers) as response:
        assert response.status == 401


async def test_the_page_token_opens_the_websocket(h: Harness, http: aiohttp.ClientSession) -> None:
    cookie = await log_in(http, h, "boris")
    async with http.get(f"{h.url}/api/token", headers=session(cookie)) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    assert set(body) == {"token", "expires_at"}
    assert 290 < datetime.fromisoformat(body["expires_at"]).timestamp() - time.time() <= 300
    ws = await open_ws(h)
    ready = await auth(ws, body["token"])
    assert ready["type"] == "ready" and ready["agent"]["login"] == "boris"
    await ws.close()


# -- roles ------------------------------------------------------------------------------------

# route -> the roles it admits
ROUTES: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", "/api/me"): frozenset(Role),
    ("GET", "/api/token"): frozenset({Role.AGENT, Role.MANAGER, Role.ADMIN}),
    ("GET", "/api/callbacks"): frozenset({Role.AGENT, Role.MANAGER, Role.ADMIN}),
    ("GET", "/api/kpi"): frozenset({Role.AGENT, Role.MANAGER, Role.ADMIN}),
    ("GET", "/api/vip-plan"): frozenset({Role.AGENT, Role.MANAGER, Role.ADMIN}),
    ("GET", "/api/agents"): frozenset({Role.MANAGER, Role.ADMIN}),
    ("GET", "/api/calls/recent"): frozenset({Role.AGENT}),
    ("POST", f"/api/calls/{A_CALL}/result"): frozenset({Role.AGENT}),
}


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
async def test_each_route_refuses_anonymous_users_and_the_wrong_roles(
        h: Harness, http: aiohttp.ClientSession, method: str, path: str) -> None:
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))  # rang anna (101) only
    await h.wait_records(1)
    body = {"json": {"result": "question"}} if method == "POST" else {}
    assert await call(http, h, method, path, None, **body) == (
        401, {"error": "login_required", "message": "log in first"})
    for login in LOGINS:
        status, answer = await call(http, h, method, path, await log_in(http, h, login), **body)
        if ROLE[login] not in ROUTES[(method, path)]:
            assert (status, answer["error"]) == (403, "forbidden"), login
        elif method == "POST" and login != "anna":
            assert (status, answer["error"]) == (404, "no_such_call"), login  # not a call of his
        else:
            assert 200 <= status < 300, (login, status, answer)


async def test_agents_shows_a_manager_his_teams_agents_with_presence(
        h: Harness, http: aiohttp.ClientSession) -> None:
    olga, pavel, admin = [await log_in(http, h, login) for login in ("olga", "pavel", "admin")]
    async with tab(h, "anna"), tab(h, "anna"), tab(h, "vera"):
        status, sales = await call(http, h, "GET", "/api/agents", olga)
        assert status == 200
        assert sales == {"agents": [
            {"login": "anna", "name": "Анна Иванова", "team": "sales", "extensions": ["101"], "connected": True,
             "connections": 2},
            {"login": "boris", "name": "Борис Петров", "team": "sales", "extensions": ["102"], "connected": False,
             "connections": 0},
        ]}
        support = (await call(http, h, "GET", "/api/agents", pavel))[1]["agents"]
        assert [(a["login"], a["connected"]) for a in support] == [("vera", True)]
        everyone = (await call(http, h, "GET", "/api/agents", admin))[1]["agents"]
        assert [(a["login"], a["connections"]) for a in everyone] == [("anna", 2), ("boris", 0), ("vera", 1)]
    for _ in range(50):  # the tabs are closed: presence follows
        if not h.hub.online():
            break
        await asyncio.sleep(0.02)
    sales = (await call(http, h, "GET", "/api/agents", olga))[1]["agents"]
    assert [a["connected"] for a in sales] == [False, False]


# -- call results -------------------------------------------------------------------------------


async def test_an_agent_sets_the_result_of_his_call(h: Harness, http: aiohttp.ClientSession) -> None:
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
    await h.wait_records(1)
    anna = await log_in(http, h, "anna")
    assert await set_result(http, h, anna, A_CALL, {"result": "order", "note": "2 шт., доставка завтра"}) == (
        200, {"call_id": A_CALL, "result": "order", "note": "2 шт., доставка завтра"})
    status, recent = await call(http, h, "GET", "/api/calls/recent", anna)
    assert status == 200
    [summary] = recent["calls"]
    assert summary == {
        "call_id": A_CALL, "started_at": summary["started_at"], "direction": "inbound", "caller": "+79161110001",
        "dialled": "+74950000001", "outcome": "answered", "answered_by": "101",
        "talk_seconds": summary["talk_seconds"], "result": "order", "note": "2 шт., доставка завтра",
    }
    # Setting it again replaces it; an empty note is no note.
    assert (await set_result(http, h, anna, A_CALL, {"result": "question", "note": ""}))[0] == 200
    [summary] = (await call(http, h, "GET", "/api/calls/recent", anna))[1]["calls"]
    assert (summary["result"], summary["note"]) == ("question", None)


@pytest.mark.parametrize(("body", "error"), [
    ({"result": "sold"}, "bad_result"),
    ({"result": "ORDER"}, "bad_result"),
    ({}, "bad_result"),
    ({"result": None}, "bad_result"),
    ({"result": "order", "note": "x" * (MAX_NOTE + 1)}, "bad_note"),
    ({"result": "order", "note": 42}, "bad_note"),
    (["order"], "bad_json"),
])
async def test_a_bad_result_is_refused(h: Harness, http: aiohttp.ClientSession, body: Any, error: str) -> None:
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
    await h.wait_records(1)
    anna = await log_in(http, h, "anna")
    status, answer = await set_result(http, h, anna, A_CALL, body)
    assert (status, answer["error"]) == (400, error)
    [summary] = (await call(http, h, "GET", "/api/calls/recent", anna))[1]["calls"]
    assert summary["result"] is None  # nothing stored


async def test_a_note_of_the_maximum_length_is_kept(h: Harness, http: aiohttp.ClientSession) -> None:
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
    await h.wait_records(1)
    anna = await log_in(http, h, "anna")
    note = "я" * MAX_NOTE
    assert (await set_result(http, h, anna, A_CALL, {"result": "complaint", "note": note}))[0] == 200
    [summary] = (await call(http, h, "GET", "/api/calls/recent", anna))[1]["calls"]
    assert summary["note"] == note


@pytest.mark.parametrize(("data", "content_type"), [('{"result": "order"}', "text/plain"),
                                                    ("result=order", "application/x-www-form-urlencoded"),
                                                    ('{"result": "order"}', None)])
async def test_a_result_must_be_sent_as_json(
        h: Harness, http: aiohttp.ClientSession, data: str, content_type: str | None) -> None:
    anna = await log_in(http, h, "anna")
    headers = {**session(anna), **({"Content-Type": content_type} if content_type else {})}
    async with http.post(f"{h.url}/api/calls/{A_CALL}/result", data=data.encode(), headers=headers) as response:
        assert response.status == 415


async def test_nobody_sets_the_result_of_someone_elses_call(h: Harness, http: aiohttp.ClientSession) -> None:
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))  # rang 101 only
    await h.ami.send_raw(capture_stream(CAPTURES / "j_agi_route.ami"))  # rang 103 only
    records = await h.wait_records(2)
    vera_call = next(r.call_id for r in records if r.rang == ("103",))
    boris, vera, anna = [await log_in(http, h, login) for login in ("boris", "vera", "anna")]
    for cookie, call_id in ((boris, A_CALL), (vera, A_CALL), (anna, vera_call), (anna, "1795736348.999")):
        assert await set_result(http, h, cookie, call_id, {"result": "spam"}) == (
            404, {"error": "no_such_call", "message": "no call of yours with this id"})
    for cookie in (boris, anna):
        calls = (await call(http, h, "GET", "/api/calls/recent", cookie))[1]["calls"]
        assert all(c["result"] is None for c in calls)
        assert vera_call not in [c["call_id"] for c in calls]


async def test_an_agent_whose_phone_only_rang_may_set_the_result(h: Harness, http: aiohttp.ClientSession) -> None:
    """k_agi_fallback rang 101 and 102; 101 answered. Both agents see it, both may qualify it."""
    await h.ami.send_raw(capture_stream(CAPTURES / "k_agi_fallback.ami"))
    [record] = await h.wait_records(1)
    boris = await log_in(http, h, "boris")
    assert [c["call_id"] for c in (await call(http, h, "GET", "/api/calls/recent", boris))[1]["calls"]] == [
        record.call_id]
    assert (await set_result(http, h, boris, record.call_id, {"result": "wrong_number"}))[0] == 200


async def test_a_result_can_be_set_while_the_phone_rings(h: Harness, http: aiohttp.ClientSession) -> None:
    anna = await log_in(http, h, "anna")
    rest = await send_capture_until(h, capture_messages("a_answered"), rings("101"))
    async with tab(h, "anna") as page:
        await page.until(lambda f: f["type"] == "pop")
        assert await set_result(http, h, anna, A_CALL, {"result": "question", "note": "звонит"}) == (
            200, {"call_id": A_CALL, "result": "question", "note": "звонит"})
        await h.ami.send_raw(b"".join(rest))
        await h.wait_records(1)
    [summary] = (await call(http, h, "GET", "/api/calls/recent", anna))[1]["calls"]
    assert (summary["call_id"], summary["result"], summary["note"]) == (A_CALL, "question", "звонит")


async def test_the_result_shows_in_the_card_history_of_the_next_call(
        h: Harness, http: aiohttp.ClientSession) -> None:
    f = CallFactory()
    anna = await log_in(http, h, "anna")
    await h.ami.play(f.direct_answered(CALLER, "Иван", DID, "101"), speed=0)
    [first] = await h.wait_records(1)
    assert (await set_result(http, h, anna, first.call_id, {"result": "order", "note": "счёт №7"}))[0] == 200
    async with tab(h, "anna") as page:
        await play_until(h, f.direct_answered(CALLER, "Иван", DID, "101"), rings("101"))
        await page.until(lambda fr: fr["type"] == "pop")
        update = await page.until(lambda fr: fr["type"] == "update")
    [previous] = update["card"]["recent_calls"]
    assert (previous["call_id"], previous["result"], previous["note"]) == (first.call_id, "order", "счёт №7")


async def test_recent_calls_are_the_agents_own(h: Harness, http: aiohttp.ClientSession) -> None:
    for capture in ("a_answered", "k_agi_fallback", "e_queue_answered", "j_agi_route"):
        await h.ami.send_raw(capture_stream(CAPTURES / f"{capture}.ami"))
    records = await h.wait_records(4)
    for login, extension in (("anna", "101"), ("boris", "102"), ("vera", "103")):
        calls = (await call(http, h, "GET", "/api/calls/recent", await log_in(http, h, login)))[1]["calls"]
        expected = sorted((r for r in records if extension in r.rang), key=lambda r: r.started_at, reverse=True)
        assert [c["call_id"] for c in calls] == [r.call_id for r in expected], login


# -- metrics ---------------------------------------------------------------------------------------


async def test_metrics_cover_the_gateway_and_name_no_phone_number(h: Harness, http: aiohttp.ClientSession) -> None:
    async with tab(h, "anna"), tab(h, "boris"):
        for capture in ("a_answered", "k_agi_fallback", "c_abandoned_ringing"):
            await h.ami.send_raw(capture_stream(CAPTURES / f"{capture}.ami"))
        await h.wait_records(3)
        async with http.get(f"{h.url}/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["cti_ami_connected"] == 1
    assert values["cti_ami_events_total"] > 50  # after the codec drops VarSet/Newexten
    assert values["cti_live_calls"] == 0
    assert values["cti_hub_connected_agents"] == 2
    assert values["cti_hub_pop_latency_seconds_count"] == 4  # 101; 101 and 102; 101
    assert values['cti_hub_pop_latency_seconds_bucket{le="+Inf"}'] == 4
    assert values["cti_hub_slow_clients_dropped_total"] == 0
    assert values['cti_calls_finished_total{channel="none",outcome="answered",shop="none"}'] == 2  # no plan here
    assert values['cti_calls_finished_total{channel="none",outcome="abandoned",shop="none"}'] == 1
    for number in ("7916", "916111", "7495", "495000", "+7"):
        assert number not in text
