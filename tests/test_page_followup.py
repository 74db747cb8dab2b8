"""The follow-up of calls on the page, in real headless Chromium: an agent's own
missed calls (call back, close, gone once the customer is reached) and points;
a manager's team missed calls, KPI table, VIP plan and overdue notices.

A whole gateway runs in the test's loop (tests/harness.py) with the reference
number plan (config/example.toml: anna owns shop A's missed calls, boris shop
B's, olga supervises both). Calls come from the PBX side through the in-process
AMI server; the SLA watch is run by hand with the gateway's clock moved on.
The browser lives in Vladivostok, the shops in Moscow and Yekaterinburg: times
of a task must be the shop's.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from connectors.ami.scenarios import CallFactory
from gateway.config import HttpConfig
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.test_numberplan import example_plan
from tests.test_page import (  # noqa: F401  (browser is a fixture)
    ARTIFACTS,
    CHROMIUM,
    TZ,
    browser,
    call_id_of,
    card_of,
    log_in,
    new_page,
    segments,
    send,
)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")

CUSTOMER = "+79161110001"
CUSTOMER_B = "+79161110002"
SHOP_A_DID = "+74950000001"  # shop A "Магазин A", Europe/Moscow, SLA 30 min, owner anna
SHOP_B_DID = "+74950000004"  # shop B "Shop B", Asia/Yekaterinburg, SLA 60 min, owner boris
MOSCOW, YEKATERINBURG = ZoneInfo("Europe/Moscow"), ZoneInfo("Asia/Yekaterinburg")


class FakeClock:
    """The gateway's clock (tokens, overdue, the SLA watch); the PBX's events keep real time."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def harness(tmp_path: Path, **options: Any) -> Harness:
    # Sessions outlive the clock moved past a deadline (a missed call at night is due next morning).
    http = HttpConfig(host="127.0.0.1", port=0, allowed_origins=("http://crm.example.com",), session_hours=24 * 7)
    return Harness(tmp_path, plans=PlanBook(example_plan()), http=http, **options)


async def missed_call(h: Harness, factory: CallFactory, caller: str, did: str, agent: str,
                      name: str = "Иван Петров") -> None:
    count = len(h.records) + 1
    await h.ami.play(factory.direct_missed(caller, name, did, agent), speed=0)
    await h.wait_records(count)
    await h.gateway.drain()


def task_row(page: Page, task_id: int, table: str = "my-missed") -> Locator:
    return page.get_by_test_id(table).locator(f'[data-testid="missed-task"][data-task-id="{task_id}"]')


def hhmm(epoch: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, zone).strftime("%H:%M")


# -- the agent --------------------------------------------------------------------------------


async def test_agent_calls_a_missed_customer_back_and_the_task_goes_when_he_answers(tmp_path: Path,
                                                                                    browser: Browser) -> None:
    factory = CallFactory()  # one factory per test: call ids stay unique within a second
    async with harness(tmp_path) as h, new_page(browser, "en-US") as page:
        await log_in(page, h)
        await expect(page.get_by_test_id("missed-status")).to_have_text(
            "No missed calls waiting: everyone was called back.")
        await expect(page.get_by_test_id("my-points-today")).to_have_text("Today: 0 of 20")

        await missed_call(h, factory, CUSTOMER, SHOP_A_DID, "101")
        (task,) = await h.followup.tasks.find(owners=["anna"])
        row = task_row(page, task.task_id)
        await expect(row).to_have_count(1)  # the list looked again when the call ended: nobody clicked
        await expect(page.get_by_test_id("missed-status")).to_be_hidden()
        await expect(row.get_by_test_id("task-phone")).to_have_text(CUSTOMER)
        await expect(row.get_by_test_id("task-shop")).to_have_text("Магазин A")
        await expect(row.get_by_test_id("task-attempts")).to_have_text("1")
        # Shop A's clock (Moscow), not the browser's (Vladivostok, 7 hours ahead).
        await expect(row.get_by_test_id("task-last-attempt")).to_contain_text(hhmm(task.last_attempt_at, MOSCOW))
        await expect(row.get_by_test_id("task-due")).to_contain_text(hhmm(task.due_at, MOSCOW))
        assert hhmm(task.due_at, MOSCOW) != hhmm(task.due_at, ZoneInfo(TZ))
        await expect(row.get_by_test_id("task-state")).to_have_text("On time")
        await expect(row.get_by_test_id("task-overdue")).to_have_count(0)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "operator-page-missed-calls.png"), full_page=True)

        await row.get_by_test_id("task-callback").click()
        await expect(row.get_by_test_id("task-callback-status")).to_have_text("Your phone will ring now")
        (originate,) = h.ami.originates
        assert (originate["Channel"], originate["Exten"], originate["Variable"][0]) == (
            "PJSIP/101", CUSTOMER, "OUTCID=+74950000001")  # anna's phone, then the customer, as shop A

        # The customer answers the call-back: the gateway closes the task, the page lets it go.
        # (A click-to-call is no pop: only the page's watch after the click can notice. Let the
        # second look it took after the missed call, RECENT_AGAIN_MS = 2 s, pass first.)
        await page.wait_for_timeout(2_500)
        await h.ami.play(factory.click_to_call("101", CUSTOMER, SHOP_A_DID, channel_id=str(originate["ChannelId"])),
                         speed=0)
        await h.wait_records(2)
        await h.gateway.drain()
        reached = await h.followup.tasks.get(task.task_id)
        assert reached is not None and (reached.status, reached.closed_by) == ("reached", "anna")
        await expect(row).to_have_count(0, timeout=20_000)
        await expect(page.get_by_test_id("missed-status")).to_be_visible()
        # Points for the answered outbound call (2) and for calling back within the SLA (3).
        await expect(page.get_by_test_id("my-points-today")).to_have_text("Today: 5 of 20")
        await expect(page.get_by_test_id("my-points-month")).to_have_text("This month: 5")


async def test_agent_closes_a_missed_call_as_spam_and_logs_a_meeting(tmp_path: Path, browser: Browser) -> None:
    factory = CallFactory()
    async with harness(tmp_path) as h, new_page(browser, "en-US") as page:
        await missed_call(h, factory, CUSTOMER, SHOP_A_DID, "101")
        (task,) = await h.followup.tasks.find(owners=["anna"])
        await log_in(page, h)
        row = task_row(page, task.task_id)
        close, reason = row.get_by_test_id("task-close"), row.get_by_test_id("task-close-reason")
        await expect(close).to_have_text("Close")

        await close.click()  # no reason chosen: nothing is sent
        await expect(row.get_by_test_id("task-close-status")).to_have_text("Choose a reason first")
        still = await h.followup.tasks.get(task.task_id)
        assert still is not None and still.status == "open"

        await expect(reason.locator("option[value=spam]")).to_have_text("Spam")
        await expect(reason.locator("option[value=wrong_number]")).to_have_text("Wrong number")
        await reason.select_option("spam")
        await close.click()
        await expect(row).to_have_count(0)
        closed = await h.followup.tasks.get(task.task_id)
        assert closed is not None
        assert (closed.status, closed.close_reason, closed.closed_by) == ("closed", "spam", "anna")
        await page.reload()  # closed on the server, not only hidden
        await expect(page.get_by_test_id("missed-status")).to_be_visible()
        await expect(page.get_by_test_id("missed-task")).to_have_count(0)

        meeting = page.get_by_test_id("log-meeting")
        await expect(page.get_by_test_id("my-points-today")).to_have_text("Today: 0 of 20")
        await meeting.click()
        await expect(page.get_by_test_id("log-meeting-status")).to_have_text("Meeting logged: +10")
        await expect(page.get_by_test_id("my-points-today")).to_have_text("Today: 10 of 20")
        await expect(page.get_by_test_id("my-points-month")).to_have_text("This month: 10")
        rows = await h.store.read("SELECT login, kind, points, recorded_by FROM interactions")
        assert [tuple(r) for r in rows] == [("anna", "meeting", 10.0, "anna")]


# -- the manager ------------------------------------------------------------------------------


async def test_manager_sees_the_teams_missed_calls_kpi_vip_plan_and_overdue_notices(tmp_path: Path,
                                                                                   browser: Browser) -> None:
    clock, factory = FakeClock(), CallFactory()
    async with harness(tmp_path, clock=clock) as h, new_page(browser, "en-US") as page:
        await missed_call(h, factory, CUSTOMER, SHOP_A_DID, "101")
        await missed_call(h, factory, CUSTOMER_B, SHOP_B_DID, "102", name="Мария")
        await h.contacts.put("+79161110009", {"name": "Пётр Большой", "vip": True, "manager": "anna"}, set_by="olga")
        tasks = {str(t.owner): t for t in await h.followup.tasks.find()}
        assert sorted(tasks) == ["anna", "boris"]
        await log_in(page, h, "olga")  # the socket is for notices now
        await expect(page.get_by_test_id("team-missed-table")).to_be_visible()
        await expect(page.get_by_test_id("nonagent-note")).to_be_hidden()
        await expect(page.get_by_test_id("my-missed")).to_be_hidden()

        row_a = task_row(page, tasks["anna"].task_id, "team-missed")
        row_b = task_row(page, tasks["boris"].task_id, "team-missed")
        await expect(row_a.get_by_test_id("task-owner")).to_have_text("Анна Иванова")
        await expect(row_b.get_by_test_id("task-owner")).to_have_text("Борис Петров")
        await expect(row_b.get_by_test_id("task-shop")).to_have_text("Shop B")
        await expect(row_b.get_by_test_id("task-due")).to_contain_text(hhmm(tasks["boris"].due_at, YEKATERINBURG))
        await expect(row_a.get_by_test_id("task-due")).to_contain_text(hhmm(tasks["anna"].due_at, MOSCOW))
        await expect(row_a.get_by_test_id("task-callback")).to_have_count(0)  # managers place no calls
        await expect(row_a.get_by_test_id("task-overdue")).to_have_count(0)

        kpi = page.get_by_test_id("kpi-row")
        await expect(kpi).to_have_count(2)  # olga leads "sales": anna and boris, not vera
        anna = page.locator('[data-testid="kpi-row"][data-login="anna"]')
        await expect(anna.get_by_test_id("kpi-name")).to_have_text("Анна Иванова")
        await expect(anna.get_by_test_id("kpi-today")).to_have_text("0")
        await expect(anna.get_by_test_id("kpi-target")).to_have_text("20")
        await expect(anna.get_by_test_id("kpi-total")).to_have_text("0")
        await expect(anna.get_by_test_id("kpi-days-met")).to_contain_text("0 of ")

        vip = page.get_by_test_id("vip-row")
        await expect(vip).to_have_count(1)
        await expect(vip.get_by_test_id("vip-name")).to_have_text("Пётр Большой")
        await expect(vip.get_by_test_id("vip-phones")).to_have_text("+79161110009")
        await expect(vip.get_by_test_id("vip-manager")).to_have_text("Анна Иванова")
        # The plan's default shop, named as the tasks name it (the VIP plan gives only its id).
        await expect(vip.get_by_test_id("vip-shop")).to_have_text("Магазин A")
        await expect(vip.get_by_test_id("vip-progress")).to_have_text("0 of 2")
        await expect(vip.get_by_test_id("vip-last-call")).to_have_text("never called")

        # Both deadlines pass; the SLA watch escalates: olga supervises both shops.
        await expect(page.get_by_test_id("notice")).to_have_count(0)
        clock.now = max(t.due_at for t in tasks.values()) + 60
        escalated = await h.followup.check_sla()
        assert len(escalated) == 2
        notices = page.get_by_test_id("notice")
        await expect(notices).to_have_count(2)
        notice_a = page.locator(f'[data-testid="notice"][data-task-id="{tasks["anna"].task_id}"]')
        await expect(notice_a).to_contain_text("Call-back overdue")
        await expect(notice_a.get_by_test_id("notice-text")).to_contain_text(CUSTOMER)
        await expect(notice_a.get_by_test_id("notice-text")).to_contain_text("Магазин A")
        await expect(notice_a.get_by_test_id("notice-text")).to_contain_text("Owner: Анна Иванова")
        await expect(row_a.get_by_test_id("task-overdue")).to_have_text("Overdue")  # the list looked again
        await expect(row_a.get_by_test_id("task-escalated")).to_have_text("Supervisor notified")
        await notice_a.get_by_test_id("notice-dismiss").click()
        await expect(notices).to_have_count(1)

        # The manager closes boris's task by hand: it and its notice go.
        await row_b.get_by_test_id("task-close-reason").select_option("duplicate")
        await row_b.get_by_test_id("task-close").click()
        await expect(row_b).to_have_count(0)
        await expect(notices).to_have_count(0)
        closed = await h.followup.tasks.get(tasks["boris"].task_id)
        assert closed is not None and (closed.status, closed.close_reason, closed.closed_by) == (
            "closed", "duplicate", "olga")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "manager-page.png"), full_page=True)


async def test_a_marketer_gets_the_dashboard_and_no_operator_sections(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path) as h, new_page(browser, "en-US") as page:
        await log_in(page, h, "mark", connected=False)
        await expect(page.get_by_test_id("dashboard")).to_be_visible()  # logged in: his dashboard
        await expect(page.get_by_test_id("nonagent-note")).to_be_hidden()
        await expect(page.get_by_test_id("logout")).to_be_visible()
        await expect(page.get_by_test_id("conn-state")).to_be_hidden()
        await expect(page.get_by_test_id("team-missed-table")).to_be_hidden()
        await expect(page.get_by_test_id("my-missed")).to_be_hidden()


# -- in Russian -------------------------------------------------------------------------------


async def test_the_follow_up_in_russian(tmp_path: Path, browser: Browser) -> None:
    clock, factory = FakeClock(), CallFactory()
    async with harness(tmp_path, clock=clock) as h:
        await missed_call(h, factory, CUSTOMER, SHOP_A_DID, "101")
        (task,) = await h.followup.tasks.find()
        async with new_page(browser, "ru-RU") as page:
            await log_in(page, h)
            await expect(page.get_by_role("heading", name="Мои пропущенные")).to_be_visible()
            await expect(page.get_by_role("heading", name="Мои баллы")).to_be_visible()
            await expect(page.get_by_test_id("my-points-today")).to_have_text("Сегодня: 0 из 20")
            await expect(page.get_by_test_id("my-points-month")).to_have_text("За месяц: 0")
            await expect(page.get_by_test_id("log-meeting")).to_have_text("Отметить встречу")
            table = page.get_by_test_id("missed-table")
            for header in ("Клиент", "Магазин", "Звонков", "Последний звонок", "Перезвонить до", "Статус"):
                await expect(table.get_by_role("columnheader", name=header, exact=True)).to_be_visible()
            row = task_row(page, task.task_id)
            await expect(row.get_by_test_id("task-callback")).to_have_text("Перезвонить")
            await expect(row.get_by_test_id("task-close")).to_have_text("Закрыть")
            await expect(row.get_by_test_id("task-state")).to_have_text("В срок")
            reason = row.get_by_test_id("task-close-reason")
            await expect(reason.locator("option[value='']")).to_have_text("— причина —")
            await expect(reason.locator("option[value=spam]")).to_have_text("Спам")
            await expect(reason.locator("option[value=solved_elsewhere]")).to_have_text("Решено без звонка")
            await row.get_by_test_id("task-close").click()
            await expect(row.get_by_test_id("task-close-status")).to_have_text("Сначала выберите причину")

            # The customer calls again: his card says he has a missed call waiting.
            call = factory.direct_answered(CUSTOMER, "Иван Петров", SHOP_A_DID, "101")
            ringing, *rest = segments(call)
            await send(h, ringing)
            card = card_of(page, call_id_of(call))
            await expect(card.get_by_test_id("pop-missed")).to_have_text("Пропущенные: 1")
            for part in rest:  # anna answers him: he is reached, the task goes by itself
                await send(h, part)
            await expect(card.get_by_test_id("pop-state")).to_have_text("Завершён")
            await expect(row).to_have_count(0)
            await expect(page.get_by_test_id("missed-status")).to_have_text("Пропущенных нет: всем перезвонили.")

        await missed_call(h, factory, CUSTOMER_B, SHOP_B_DID, "102")
        (task_b,) = await h.followup.tasks.find()
        async with new_page(browser, "ru-RU") as page:
            await log_in(page, h, "olga")
            for heading in ("Пропущенные звонки", "Баллы за месяц", "План звонков VIP"):
                await expect(page.get_by_role("heading", name=heading)).to_be_visible()
            table = page.get_by_test_id("team-missed-table")
            await expect(table.get_by_role("columnheader", name="Ответственный")).to_be_visible()
            kpi = page.get_by_test_id("kpi-table")
            for header in ("Сотрудник", "Сегодня", "Норма в день", "За месяц", "Дней с нормой"):
                await expect(kpi.get_by_role("columnheader", name=header, exact=True)).to_be_visible()
            await expect(page.locator('[data-testid="kpi-row"][data-login="anna"]').get_by_test_id("kpi-days-met")
                         ).to_contain_text(" из ")
            await expect(page.get_by_test_id("vip-status")).to_have_text("Все VIP-клиенты идут по плану (0).")

            clock.now = task_b.due_at + 60
            await h.followup.check_sla()
            notice = page.get_by_test_id("notice")
            await expect(notice).to_contain_text("Просрочен перезвон")
            await expect(notice.get_by_test_id("notice-text")).to_contain_text("Ответственный: Борис Петров")
            await expect(notice.get_by_test_id("notice-dismiss")).to_have_text("Скрыть")
            row = task_row(page, task_b.task_id, "team-missed")
            await expect(row.get_by_test_id("task-overdue")).to_have_text("Просрочено")
            await expect(row.get_by_test_id("task-escalated")).to_have_text("Руководитель уведомлён")
