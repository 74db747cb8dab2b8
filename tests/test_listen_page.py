"""The link a CRM record carries to a call's recording (``/calls/{id}/recording``):
followed from the CRM's own site, it plays for whoever may listen.

The session cookie is SameSite=Strict, so a click from another site does not
send it with the navigation; the page's own requests to the gateway do. The CRM
here is a page served from ``localhost``: another site than ``127.0.0.1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from playwright.async_api import Browser, Page, expect

from crm_bridge.sinks import recording_link
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.test_numberplan import example_plan
from tests.test_calllog import needs_chromium
from tests.test_page import browser, log_in, new_page
from tests.test_recordings import answered_call, ready
from tests.local_server import serve

__all__ = ["browser"]  # the fixture


@asynccontextmanager
async def crm_page(link: str) -> AsyncIterator[str]:
    """A CRM's page on another site, with the call's link on it."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=f'<!doctype html><a id="rec" href="{link}">Запись</a>', content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner, url = await serve(app)
    try:
        yield url.replace("127.0.0.1", "localhost") + "/"
    finally:
        await runner.cleanup()


async def follow(page: Page, crm: str) -> None:
    await page.goto(crm)
    await page.click("#rec")
    await page.wait_for_url("**/recording")


@needs_chromium
async def test_a_manager_follows_the_crm_link_and_hears_the_call(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h:
        call_id = await answered_call(h)
        await ready(h, call_id)
        async with crm_page(recording_link(h.url, call_id)) as crm, new_page(browser, "en-US") as page:
            await follow(page, crm)  # not logged in yet
            await expect(page.locator("#message")).to_contain_text("Log in to the gateway")
            await expect(page.locator("#player")).to_be_hidden()
            await log_in(page, h, "olga")
            await follow(page, crm)  # from the CRM's site again: the navigation carries no cookie
            player = page.locator("#player")
            await expect(player).to_be_visible()
            await page.wait_for_function("document.getElementById('player').readyState >= 1")
            duration = await player.evaluate("a => a.duration")
            assert 2.5 < duration < 3.5  # the capture's recording (tests/test_recordings.py: 3 s)
            listens = await h.store.read("SELECT login FROM recording_listens WHERE call_id = ?", (call_id,))
            assert [row[0] for row in listens][:1] == ["olga"]


@needs_chromium
async def test_an_agent_without_the_right_is_told_so(tmp_path: Path, browser: Browser) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h:
        call_id = await answered_call(h)
        await ready(h, call_id)
        async with crm_page(recording_link(h.url, call_id)) as crm, new_page(browser, "ru-RU") as page:
            await log_in(page, h, "anna")
            await follow(page, crm)
            await expect(page.locator("#message")).to_have_text("У вас нет доступа к записи этого звонка.")
            await expect(page.locator("#player")).to_be_hidden()
