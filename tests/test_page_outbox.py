"""The administrator's "CRM delivery" section, in real headless Chromium: the
sinks with their waiting and dead events, the dead letters with their errors,
"Retry now" and "Retry all dead", and who sees the section.

A whole gateway runs in the test's loop (tests/harness.py) with one generic
webhook sink whose receiver is a real aiohttp server on 127.0.0.1: it refuses
with 400 (a permanent refusal: an entry is dead after one attempt) until the
test lets it answer 204. Delivery is run by hand, round after round
(``deliver_crm=False``), so every state on the page is one the test made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, Locator, Page, expect

from crm_bridge.bridge_config import CrmConfig, SinkEntry
from crm_bridge.outbox import Entry
from crm_bridge.sinks.webhook import WebhookSinkConfig
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.test_callbacks_live import jsonl_stream
from tests.test_numberplan import example_plan
from tests.test_page import ARTIFACTS, CHROMIUM, browser, log_in, new_page  # noqa: F401  (browser is a fixture)
from tests.local_server import serve

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")

REFUSAL = "no such event type"


class Receiver:
    """The other side of the webhook: answers ``status``, keeps what it accepted."""

    def __init__(self) -> None:
        self.status = 400
        self.accepted: list[tuple[str, str]] = []  # (webhook-id, type)
        self.url = ""

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.status >= 300:
            return web.Response(status=self.status, text=REFUSAL)
        self.accepted.append((request.headers["webhook-id"], body["type"]))
        return web.Response(status=self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/hook", r.hook)
    runner, url = await serve(app)
    r.url = url + "/hook"
    try:
        yield r
    finally:
        await runner.cleanup()


def harness(tmp_path: Path, receiver: Receiver | None) -> Harness:
    sinks = (SinkEntry("webhook", "erp", WebhookSinkConfig("erp", receiver.url, "x" * 24)),) if receiver else ()
    return Harness(tmp_path, plans=PlanBook(example_plan()), crm=CrmConfig(sinks=sinks), deliver_crm=False)


async def deliver(h: Harness) -> int:
    """Rounds until nothing is due (a stream goes one entry a round); the entries attempted."""
    attempted = 0
    while batch := await h.bridge.round("erp"):
        attempted += len(batch)
    return attempted


async def dead_letters(h: Harness) -> list[Entry]:
    """A missed call (a real capture: ringing, stopped, finished, its task) refused by the receiver."""
    await h.ami.send_raw(jsonl_stream("b_missed"))
    await h.wait_records(1)
    await h.gateway.drain()
    await h.bridge.drain()
    await deliver(h)
    dead = await h.bridge.outbox.listed("dead")
    assert {e.event for e in dead} >= {"call.ringing", "call.finished", "task.opened"}
    assert not await h.bridge.outbox.listed("pending")
    return dead  # newest first


def entry_row(page: Page, entry: Entry) -> Locator:
    return page.locator(f'[data-testid="outbox-entry"][data-entry-id="{entry.entry_id}"]')


async def test_admin_sees_the_dead_events_and_sends_them_again(tmp_path: Path, browser: Browser,
                                                               receiver: Receiver) -> None:
    async with harness(tmp_path, receiver) as h, new_page(browser, "en-US") as page:
        dead = await dead_letters(h)
        await log_in(page, h, "admin")
        section = page.get_by_test_id("outbox")
        await expect(section.get_by_role("heading", name="CRM delivery")).to_be_visible()
        sink = section.locator('[data-testid="outbox-sink"][data-sink="erp"]')
        await expect(sink.get_by_test_id("outbox-sink-kind")).to_have_text("Webhook")
        await expect(sink.get_by_test_id("outbox-sink-dead")).to_have_text(str(len(dead)))
        await expect(sink.get_by_test_id("outbox-sink-pending")).to_have_text("0")
        await expect(sink.get_by_test_id("outbox-sink-oldest")).to_have_text("–")

        rows = section.get_by_test_id("outbox-entry")
        await expect(rows).to_have_count(len(dead))
        task = next(e for e in dead if e.event == "task.opened")
        row = entry_row(page, task)
        await expect(row.get_by_test_id("outbox-entry-event")).to_contain_text("Call-back task opened")
        await expect(row.get_by_test_id("outbox-entry-stream")).to_have_text(f"Task {task.stream.split(':')[1]}")
        assert task.last_error is not None and task.last_error.endswith(f"HTTP 400 {REFUSAL}")
        await expect(row.get_by_test_id("outbox-entry-error")).to_have_text(task.last_error)
        await expect(row.get_by_test_id("outbox-entry-attempts")).to_have_text("1")
        await expect(row.get_by_test_id("outbox-entry-next")).to_have_text("only by hand")
        finished = next(e for e in dead if e.event == "call.finished")
        await expect(entry_row(page, finished).get_by_test_id("outbox-entry-stream")).to_have_text(
            f"Call {finished.stream}")

        # The receiver is fixed; one event is sent again: it leaves the dead list and waits, due now.
        receiver.status = 204
        await row.get_by_test_id("outbox-entry-retry").click()
        await expect(row).to_have_count(0)
        await expect(rows).to_have_count(len(dead) - 1)
        await expect(section.get_by_test_id("outbox-action")).to_have_text("Back in line: 1. They go out in a moment.")
        await expect(sink.get_by_test_id("outbox-sink-dead")).to_have_text(str(len(dead) - 1))
        await expect(sink.get_by_test_id("outbox-sink-pending")).to_have_text("1")
        await expect(sink.get_by_test_id("outbox-sink-oldest")).not_to_have_text("–")
        await section.get_by_test_id("outbox-show-pending").click()
        await expect(section.get_by_test_id("outbox-retry-all")).to_be_hidden()
        await expect(rows).to_have_count(1)
        await expect(row).to_have_attribute("data-state", "pending")
        await expect(row.get_by_test_id("outbox-entry-next")).to_have_text("now")
        await expect(row.get_by_test_id("outbox-entry-retry")).to_have_count(0)

        assert await deliver(h) == 1
        assert receiver.accepted == [(task.key, "task.opened")]
        await section.get_by_test_id("outbox-refresh").click()
        await expect(rows).to_have_count(0)
        await expect(section.get_by_test_id("outbox-list-status")).to_have_text(
            "Nothing waiting: every event has gone out.")

        # Every dead event of the sink, at once.
        await section.get_by_test_id("outbox-show-dead").click()
        await expect(rows).to_have_count(len(dead) - 1)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "outbox-page.png"), full_page=True)
        await sink.get_by_test_id("outbox-sink-retry").click()
        await expect(section.get_by_test_id("outbox-action")).to_have_text(
            f"Back in line: {len(dead) - 1}. They go out in a moment.")
        await expect(rows).to_have_count(0)
        await expect(section.get_by_test_id("outbox-list-status")).to_have_text(
            "Nothing dead: every event was delivered or is still being tried.")
        await expect(sink.get_by_test_id("outbox-sink-dead")).to_have_text("0")
        await expect(sink.get_by_test_id("outbox-sink-retry")).to_have_count(0)
        await expect(section.get_by_test_id("outbox-retry-all")).to_be_disabled()
        await deliver(h)
        assert sorted(key for key, _ in receiver.accepted) == sorted(e.key for e in dead)


async def test_the_section_in_russian_with_retry_all_and_an_error_shown(tmp_path: Path, browser: Browser,
                                                                        receiver: Receiver) -> None:
    async with harness(tmp_path, receiver) as h, new_page(browser, "ru-RU") as page:
        dead = await dead_letters(h)
        await log_in(page, h, "admin")
        section = page.get_by_test_id("outbox")
        await expect(section.get_by_role("heading", name="Доставка в CRM")).to_be_visible()
        for header in ("Получатель", "Тип", "В очереди", "Не доставлены", "Дольше всех ждёт"):
            await expect(section.get_by_test_id("outbox-sinks-table").get_by_role(
                "columnheader", name=header, exact=True)).to_be_visible()
        task = next(e for e in dead if e.event == "task.opened")
        await expect(entry_row(page, task).get_by_test_id("outbox-entry-event")).to_contain_text(
            "Задача перезвонить открыта")
        await expect(entry_row(page, task).get_by_test_id("outbox-entry-next")).to_have_text("только вручную")
        await expect(entry_row(page, task).get_by_test_id("outbox-entry-retry")).to_have_text("Повторить сейчас")

        # The gateway is away: the retry says it failed, and the list stays as it was.
        await h.stop_http()
        await section.get_by_test_id("outbox-retry-all").click()
        await expect(section.get_by_test_id("outbox-action")).to_have_text("Не удалось повторить: ошибка сети")
        await expect(section.get_by_test_id("outbox-entry")).to_have_count(len(dead))
        await section.get_by_test_id("outbox-refresh").click()
        await expect(section.get_by_test_id("outbox-status")).to_have_text(
            "Не удалось загрузить доставку в CRM: ошибка сети")
        assert len(await h.bridge.outbox.listed("dead")) == len(dead)

        await h.start_http()
        await section.get_by_test_id("outbox-retry-all").click()
        await expect(section.get_by_test_id("outbox-action")).to_have_text(
            f"Снова в очереди: {len(dead)}. Сейчас уйдут.")
        await expect(section.get_by_test_id("outbox-status")).to_be_hidden()
        await expect(section.get_by_test_id("outbox-list-status")).to_have_text(
            "Недоставленных нет: все события доставлены или ещё отправляются.")
        assert not await h.bridge.outbox.listed("dead")


async def test_a_manager_does_not_see_the_section(tmp_path: Path, browser: Browser, receiver: Receiver) -> None:
    async with harness(tmp_path, receiver) as h, new_page(browser, "en-US") as page:
        await dead_letters(h)
        await log_in(page, h, "olga")
        await expect(page.get_by_test_id("team-missed-table")).to_be_visible()
        await expect(page.get_by_test_id("outbox")).to_be_hidden()
        await expect(page.get_by_test_id("outbox-entry")).to_have_count(0)


async def test_with_no_crm_configured_the_section_says_so(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path, None) as h, new_page(browser, "en-US") as page:
        await log_in(page, h, "admin")
        section = page.get_by_test_id("outbox")
        await expect(section.get_by_test_id("outbox-status")).to_have_text(
            "No CRM is connected: calls are not sent anywhere. A CRM is connected in the config: [[crm.webhook]], "
            "[[crm.bitrix24]], [[crm.amocrm]] or [[crm.onec]].")
        await expect(section.get_by_test_id("outbox-sinks-table")).to_be_hidden()
        await expect(section.get_by_test_id("outbox-entries-table")).to_be_hidden()
