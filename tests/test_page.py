"""The operator page and the embed widget in real headless Chromium.

A whole gateway runs in the test's loop (tests/harness.py); calls come from the
PBX side through the in-process AMI server, played a segment at a time: a
scenario is cut where the PBX waits (the phone rings, the agent talks), so the
test sees each state on the page before the call moves on. Debian's chromium is
driven by Playwright; every wait is for something on the page.
"""

from __future__ import annotations

import asyncio

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from connectors.ami.scenarios import CallFactory, Scenario
from gateway.config import HttpConfig
from gateway.numberplan import PlanBook
from tests.harness import PASSWORD, Harness
from tests.test_numberplan import example_plan

REPO = Path(__file__).resolve().parents[1]
STATIC = REPO / "gateway" / "static"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TZ = "Asia/Vladivostok"  # not the machine's zone: times on the page must follow the browser's

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")
expect.set_options(timeout=10_000)


# -- helpers ------------------------------------------------------------------------


def segments(scenario: Scenario, pause: float = 0.5) -> list[Scenario]:
    """The scenario cut before every message the PBX waits ``pause`` s or more for."""
    parts: list[Scenario] = [[]]
    for delay, message in scenario:
        if delay >= pause and parts[-1]:
            parts.append([])
        parts[-1].append((delay, message))
    return parts


async def send(h: Harness, part: Scenario) -> None:
    for _, message in part:
        await h.ami.send_event(message)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            await chromium.close()


@asynccontextmanager
async def new_page(browser: Browser, locale: str = "ru-RU", **options: Any) -> AsyncIterator[Page]:
    context = await browser.new_context(locale=locale, timezone_id=TZ, **options)
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page
    finally:
        await context.close()
    assert not errors, f"script errors on the page: {errors}"


async def log_in(page: Page, h: Harness, login: str = "anna", *, connected: bool = True) -> None:
    await page.goto(h.url + "/")
    await page.get_by_test_id("login-login").fill(login)
    await page.get_by_test_id("login-password").fill(PASSWORD)
    await page.get_by_test_id("login-submit").click()
    if connected:
        await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "connected")


def card_of(page: Page, call_id: str, extension: str = "101") -> Locator:
    return page.locator(f'[data-testid="pop-card"][data-pop-id="{call_id}/{extension}"]')


def call_id_of(scenario: Scenario) -> str:
    return str(scenario[0][1]["Linkedid"])


# -- the operator page --------------------------------------------------------------


async def test_ring_group_pop_then_withdrawn_when_a_colleague_answers(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h, new_page(browser, "ru-RU") as page:
        await log_in(page, h)
        await expect(page.get_by_test_id("conn-state")).to_have_text("На связи")
        call = CallFactory().ring_group("+79161110001", "Иван Петров", "+74950000002", ("101", "102"),
                                        answering="102")
        ringing, *rest = segments(call)
        await send(h, ringing)

        card = card_of(page, call_id_of(call))
        await expect(card).to_have_count(1)
        await expect(card.get_by_test_id("pop-shop")).to_have_text("+7 495 000-00-02")
        await expect(card.get_by_test_id("pop-caller-number")).to_have_text("+7 916 111-00-01")
        await expect(card.get_by_test_id("pop-caller-name")).to_have_text("Иван Петров")
        await expect(card.get_by_test_id("pop-state")).to_have_text("Звонит")
        await expect(card.get_by_test_id("pop-direction")).to_have_text("Входящий")
        await expect(card.get_by_test_id("pop-history")).to_contain_text("Раньше не звонил")  # the update
        await expect(card.get_by_test_id("pop-crm")).to_have_count(0)  # no CRM URL template configured
        await expect(page.get_by_test_id("pop-card")).to_have_count(1)  # one card, however many frames
        await expect(card).not_to_contain_text("null")

        for part in rest:  # 102 answers: anna's phone stops ringing
            await send(h, part)
        await expect(card).to_have_count(0)
        await expect(page.get_by_test_id("pops-empty")).to_be_visible()


async def test_answered_call_result_and_note_saved_and_listed(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h, new_page(browser, "ru-RU") as page:
        await log_in(page, h)
        factory = CallFactory()
        call = factory.direct_answered("+79161110002", "Мария Сидорова", "+74950000001", "101")
        call_id = call_id_of(call)
        ringing, talking, ending = segments(call)
        card = card_of(page, call_id)
        state = card.get_by_test_id("pop-state")

        await send(h, ringing)
        await expect(state).to_have_text("Звонит")
        await expect(card.get_by_test_id("pop-close")).to_be_hidden()
        await send(h, talking)
        await expect(state).to_have_text("Разговор")
        await send(h, ending)
        await expect(state).to_have_text("Завершён")
        await expect(card.get_by_test_id("pop-close")).to_be_visible()  # ended cards stay until closed or saved
        await h.wait_records(1)

        note = "Хочет доставку в субботу"
        select = card.get_by_test_id("result-select")
        await expect(select.locator("option[value=order]")).to_have_text("Заказ")
        await select.select_option("order")
        await card.get_by_test_id("result-note").fill(note)
        await card.get_by_test_id("result-save").click()
        await expect(card.get_by_test_id("result-status")).to_have_text("Сохранено")

        (stored,) = await h.store.calls_of_agent(("101",))
        assert (stored.call_id, stored.result, stored.note) == (call_id, "order", note)

        row = page.locator(f'[data-testid="recent-call"][data-call-id="{call_id}"]')
        await expect(row.get_by_test_id("recent-result")).to_have_text("Заказ")
        await expect(row.get_by_test_id("recent-note")).to_have_text(note)
        local = datetime.fromtimestamp(stored.started_at, ZoneInfo(TZ)).strftime("%H:%M")
        await expect(row.get_by_test_id("recent-time")).to_contain_text(local)
        await expect(card).to_have_count(0)  # saved and ended: the card goes

        # The same customer calls again: the new card lists the last call with its result.
        again = factory.direct_answered("+79161110002", "Мария Сидорова", "+74950000001", "101")
        ringing, *rest = segments(again)
        await send(h, ringing)
        history = card_of(page, call_id_of(again)).get_by_test_id("pop-history-call")
        await expect(history).to_have_count(1)
        await expect(history).to_contain_text("Заказ")
        await expect(history).to_contain_text(note)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "operator-page.png"), full_page=True)
        for part in rest:
            await send(h, part)


async def test_call_back_from_recent_calls_and_the_status_switch(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h, new_page(browser, "en-US") as page:
        call = CallFactory().direct_answered("89161110007", "Иван", "+74950000002", "101")  # shop B
        await h.ami.play(call, speed=0)
        await h.wait_records(1)
        await log_in(page, h)
        row = page.locator(f'[data-testid="recent-call"][data-call-id="{call_id_of(call)}"]')
        button, status = row.get_by_test_id("recent-callback"), row.get_by_test_id("recent-callback-status")
        await expect(button).to_have_text("Call back")
        answer = h.ami.action_handlers["Originate"]

        # The PBX takes the Originate and never confirms it: the button waits, then says so.
        h.ami.action_handlers["Originate"] = lambda action: []
        await button.click()
        await expect(button).to_be_disabled()
        await expect(status).to_have_text("Calling…")
        while not h.ami.originates:  # the Originate is on the wire: dropping now leaves its fate unknown
            await asyncio.sleep(0.01)
        await h.ami.drop_clients()
        await expect(status).to_have_text("The PBX did not confirm the call; your phone may still ring.")
        await expect(button).to_be_enabled()
        await h.link.wait_connected(15)
        await h.link.action("Ping", timeout=5)  # logged in and resynced: actions go through again

        # The PBX refuses: its reason reaches the agent.
        h.ami.action_handlers["Originate"] = lambda action: [
            {"Response": "Error", "Message": "Extension does not exist."}]
        await button.click()
        await expect(status).to_have_text("The PBX refused the call: Extension does not exist.")

        h.ami.action_handlers["Originate"] = answer
        await button.click()
        await expect(status).to_have_text("Your phone will ring now")
        assert len(h.ami.originates) == 3
        for originate in h.ami.originates:
            assert (originate["Channel"], originate["Exten"], originate["Variable"][0]) == (
                "PJSIP/101", "+79161110007", "OUTCID=+74950000002")  # anna's phone, then the customer, as shop B
        assert len({o["Variable"][1] for o in h.ami.originates}) == 3  # a fresh request id per click

        # The status switch: do-not-disturb, then available again.
        dnd, available = page.get_by_test_id("status-dnd"), page.get_by_test_id("status-available")
        await expect(available).to_have_attribute("aria-pressed", "true")
        await dnd.click()
        await expect(dnd).to_have_attribute("aria-pressed", "true")
        await expect(available).to_have_attribute("aria-pressed", "false")
        assert h.presence.state("anna").status == "dnd"
        await available.click()
        await expect(available).to_have_attribute("aria-pressed", "true")
        assert h.presence.state("anna").status == "available"
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "operator-page-call-back.png"), full_page=True)


async def test_page_reconnects_after_a_server_restart(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h, new_page(browser, "en-US") as page:
        await log_in(page, h)
        factory = CallFactory()
        # A call rings while the server goes away, and a colleague answers it meanwhile.
        missed = factory.ring_group("+79161110006", "Oleg", "+74950000001", ("101", "102"), answering="102")
        ringing, *rest = segments(missed)
        await send(h, ringing)
        gone_card = card_of(page, call_id_of(missed))
        await expect(gone_card.get_by_test_id("pop-state")).to_have_text("Ringing")

        conn = page.get_by_test_id("conn-state")
        await h.stop_http()
        await expect(conn).to_have_attribute("data-state", "reconnecting")
        await expect(conn).to_contain_text("Reconnecting")
        for part in rest:
            await send(h, part)
        await h.start_http()
        await expect(conn).to_have_attribute("data-state", "connected", timeout=20_000)
        await expect(conn).to_have_text("Connected")
        await expect(page.get_by_test_id("login-form")).to_be_hidden()  # same session, no new login
        await expect(gone_card).to_have_count(0)  # not re-sent after "ready": it stopped ringing meanwhile

        call = factory.ring_group("+79161110003", "Ivan", "+74950000003", ("101", "102"), answering="101")
        ringing, *rest = segments(call)
        await send(h, ringing)
        card = card_of(page, call_id_of(call))
        await expect(card.get_by_test_id("pop-state")).to_have_text("Ringing")
        for part in rest:
            await send(h, part)
        await expect(card.get_by_test_id("pop-state")).to_have_text("Ended")


async def test_english_and_russian(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h:
        async with new_page(browser, "en-US") as page:
            await page.goto(h.url + "/")
            await expect(page.get_by_test_id("login-submit")).to_have_text("Log in")
            await expect(page.locator("html")).to_have_attribute("lang", "en")
        async with new_page(browser, "ru-RU") as page:
            await page.goto(h.url + "/")
            submit = page.get_by_test_id("login-submit")
            await expect(submit).to_have_text("Войти")
            await expect(page.get_by_label("Пароль")).to_be_visible()
            await page.get_by_test_id("lang-en").click()
            await expect(submit).to_have_text("Log in")
            await expect(page.get_by_test_id("lang-en")).to_have_attribute("aria-pressed", "true")
            await page.reload()  # the choice is kept
            await expect(submit).to_have_text("Log in")

            await log_in(page, h)
            conn = page.get_by_test_id("conn-state")
            await expect(conn).to_have_text("Connected")
            await page.get_by_test_id("lang-ru").click()
            await expect(conn).to_have_text("На связи")
            await expect(page.locator("html")).to_have_attribute("lang", "ru")
            await expect(page.get_by_role("heading", name="Мои последние звонки")).to_be_visible()


async def test_a_call_ringing_before_the_page_loads_is_shown(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h, new_page(browser, "ru-RU") as page:
        call = CallFactory().direct_answered("+79161110004", "Пётр", "+74950000004", "101")
        ringing, talking, ending = segments(call)
        await send(h, ringing)
        await log_in(page, h)
        card = card_of(page, call_id_of(call))
        await expect(card.get_by_test_id("pop-state")).to_have_text("Звонит")  # re-sent on connect
        await expect(card.get_by_test_id("pop-caller-number")).to_have_text("+7 916 111-00-04")
        await send(h, talking)
        await expect(card.get_by_test_id("pop-state")).to_have_text("Разговор")
        await expect(page.get_by_test_id("pop-card")).to_have_count(1)
        await send(h, ending)
        await expect(card.get_by_test_id("pop-state")).to_have_text("Завершён")
        await card.get_by_test_id("pop-close").click()
        await expect(card).to_have_count(0)


async def test_wrong_password_and_a_marketer_gets_the_dashboard(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path) as h, new_page(browser, "en-US") as page:
        await page.goto(h.url + "/")
        await page.get_by_label("Login").fill("mark")
        await page.get_by_label("Password").fill("wrong")
        await page.get_by_test_id("login-submit").click()
        await expect(page.get_by_test_id("login-error")).to_have_text("Wrong login or password.")

        await log_in(page, h, "mark", connected=False)
        await expect(page.get_by_test_id("dashboard")).to_be_visible()  # tests/test_dashboard_page.py has the rest
        await expect(page.get_by_test_id("dash-status")).to_have_text("No calls in this period.")
        await expect(page.get_by_test_id("nonagent-note")).to_be_hidden()
        await expect(page.get_by_test_id("conn-state")).to_be_hidden()
        await page.get_by_test_id("logout").click()
        await expect(page.get_by_test_id("login-form")).to_be_visible()
        await page.reload()  # the session is gone on the server too
        await expect(page.get_by_test_id("login-form")).to_be_visible()


# -- the embed widget ------------------------------------------------------------------

HOST_PAGE = """<!doctype html>
<html lang="ru"><head><meta charset="utf-8"><title>CRM</title>
<style>
  /* A host page's CSS must not break the widget. */
  * {{ color: red !important; font-size: 40px !important; }}
  div, section, article, span {{ display: none !important; }}
</style></head>
<body><h1>CRM</h1>
<script>window.ctiFrames = []; for (const kind of ["pop", "update", "withdraw"])
  document.addEventListener("cti-gateway:" + kind, (ev) => window.ctiFrames.push(kind + " " + ev.detail.pop_id));</script>
<script src="{gateway}/embed.js" data-token-url="/cti/token"></script>
</body></html>"""


@asynccontextmanager
async def crm_site(state: dict[str, Any]) -> AsyncIterator[str]:
    """A CRM on another origin: its page includes embed.js; its backend hands out tokens."""

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text=HOST_PAGE.format(gateway=state["harness"].url), content_type="text/html")

    async def token(request: web.Request) -> web.StreamResponse:
        return web.json_response({"token": state["harness"].token("anna")})

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/cti/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_embed_shows_pops_on_a_crm_page(tmp_path: Path, browser: Browser) -> None:
    state: dict[str, Any] = {}
    async with crm_site(state) as crm:
        http = HttpConfig(host="127.0.0.1", port=0, allowed_origins=(crm,))
        async with Harness(tmp_path, http=http) as h, new_page(browser, "en-US") as page:
            state["harness"] = h
            await page.goto(crm + "/")
            await expect(page.get_by_test_id("embed-conn")).to_have_attribute("data-state", "connected")
            await expect(page.get_by_test_id("embed-conn")).to_contain_text("На связи")  # <html lang="ru">

            call = CallFactory().ring_group("+79161110005", "Анна", "+74950000001", ("101", "102"), answering="102")
            call_id = call_id_of(call)
            ringing, *rest = segments(call)
            await send(h, ringing)
            card = page.locator(f'[data-testid="embed-card"][data-pop-id="{call_id}/101"]')
            await expect(card).to_be_visible()
            await expect(card.get_by_test_id("embed-shop")).to_have_text("+7 495 000-00-01")
            await expect(card.get_by_test_id("embed-caller")).to_contain_text("+7 916 111-00-05")
            await expect(card.get_by_test_id("embed-state")).to_have_text("Звонит")
            await expect(card).not_to_contain_text("null")
            size = await card.get_by_test_id("embed-shop").evaluate("e => getComputedStyle(e).fontSize")
            assert size == "20px"  # the host's `* { font-size: 40px !important }` did not get in
            for part in rest:
                await send(h, part)
            await expect(card).to_have_count(0)
            frames = await page.evaluate("window.ctiFrames")
            assert frames[0] == f"pop {call_id}/101" and frames[-1] == f"withdraw {call_id}/101"


async def test_embed_refused_from_an_origin_not_allowed(tmp_path: Path, browser: Browser,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    state: dict[str, Any] = {}
    async with crm_site(state) as crm, Harness(tmp_path) as h, new_page(browser, "en-US") as page:
        state["harness"] = h
        await page.goto(crm + "/")
        await expect(page.get_by_test_id("embed-conn")).to_have_attribute("data-state", "reconnecting")
        assert f"websocket refused: origin '{crm}' not allowed" in caplog.text
        await expect(page.get_by_test_id("embed-card")).to_have_count(0)


# -- catalogues ---------------------------------------------------------------------------


def _catalogue(lang: str) -> dict[str, str]:
    data = json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_catalogues_have_the_same_keys_and_placeholders() -> None:
    ru, en = _catalogue("ru"), _catalogue("en")
    assert sorted(ru) == sorted(en)
    for key in en:
        assert sorted(re.findall(r"\{\w+\}", ru[key])) == sorted(re.findall(r"\{\w+\}", en[key])), key


def test_every_key_the_page_uses_is_in_the_catalogue() -> None:
    en = _catalogue("en")
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n="([\w.]+)"', html))
    used |= {key for pair in re.findall(r'data-i18n-attr="([^"]+)"', html) for key in re.findall(r":([\w.]+)", pair)}
    used |= set(re.findall(r"\bt\('([\w.]+)'", script))
    used |= set(re.findall(r"'data-i18n': '([\w.]+)'", script))
    assert used and not used - set(en), sorted(used - set(en))


def test_embed_strings_are_a_copy_of_the_catalogues() -> None:
    text = (STATIC / "embed.js").read_text(encoding="utf-8")
    block = re.search(r"// BEGIN STRINGS\s*const STRINGS = (.*?);\s*// END STRINGS", text, re.S)
    assert block is not None
    strings = json.loads(block.group(1))
    assert sorted(strings) == ["en", "ru"]
    for lang, copy in strings.items():
        catalogue = _catalogue(lang)
        assert copy == {key: catalogue[key] for key in copy}, lang
    assert sorted(strings["ru"]) == sorted(strings["en"])
