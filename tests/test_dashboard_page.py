"""The dashboard in real headless Chromium: the marketer's page and the boss's overview.

The gateway of tests/harness.py stores the scripted week of tests/test_calllog.py
(March 2026, the reference number plan: shop A direct and yandex, shop B direct and
avito) through the real service, with its clock on Thursday 2026-03-05; a deal and
a day's spend are posted through the API as the marketer. The page must draw what
GET /api/reports/channels answers: one bar per channel, a 7 x 24 heatmap, the daily
trend, tiles with the API's totals; and draw again when the period or the shop
changes. The screenshot is kept in test-artifacts/ (and docs/ for the README).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from gateway.web import SESSION_COOKIE
from tests.harness import PASSWORD, Harness
from tests.test_calllog import CALLS, NOW, FakeClock, harness, store_calls
from tests.test_page import ARTIFACTS, CHROMIUM, browser, log_in, new_page  # noqa: F401  (browser: a fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")

DOCS = Path(__file__).resolve().parents[1] / "docs"
TILES = ("calls", "unique_callers", "new_leads", "deals_won", "revenue", "cost")


def js(number: float) -> str:
    """A number as JavaScript writes it (into a data- attribute)."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


async def seeded(h: Harness) -> aiohttp.ClientSession:
    """The week's calls, a deal won from a direct-line customer and yandex spend, as the marketer."""
    await store_calls(h, CALLS)
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    async with http.post(f"{h.url}/api/login", json={"login": "mark", "password": PASSWORD}) as response:
        assert response.status == 200
        http.headers["Cookie"] = f"{SESSION_COOKIE}={response.cookies[SESSION_COOKIE].value}"
    deal = {"external_id": "D-1", "phone": "+79161110001", "amount": 50000, "margin": 12000, "date": "2026-03-04"}
    async with http.post(f"{h.url}/api/deals", json=deal) as response:
        assert response.status == 200 and (await response.json())["first_channel"] == "direct"
    cost = {"channel": "yandex", "shop": "A", "date": "2026-03-03", "amount": 3000}
    async with http.post(f"{h.url}/api/costs", json=cost) as response:
        assert response.status == 200
    return http


async def report(http: aiohttp.ClientSession, h: Harness, query: str = "") -> Any:
    async with http.get(f"{h.url}/api/reports/channels?{query}") as response:
        assert response.status == 200
        return await response.json()


async def assert_drawn(page: Page, data: Any) -> None:
    """Tiles, bars, heatmap and trend show the figures of ``data`` (an API answer)."""
    await expect(page.get_by_test_id("dash-from")).to_have_value(data["from"])
    await expect(page.get_by_test_id("dash-to")).to_have_value(data["to"])
    for key in TILES:
        await expect(page.get_by_test_id(f"tile-{key}")).to_have_attribute("data-value", js(data["totals"][key]))
    channels = data["channels"]
    calls = page.get_by_test_id("chart-calls").get_by_test_id("bar")
    await expect(calls).to_have_count(len(channels))
    assert [float(v) for v in await calls.evaluate_all("bars => bars.map(b => b.dataset.value)")] == [
        c["calls"] for c in channels]
    money = page.get_by_test_id("chart-money").get_by_test_id("bar")
    await expect(money).to_have_count(2 * len(channels))  # cost and margin per channel
    await expect(page.get_by_test_id("dash-channel")).to_have_count(len(channels))
    cells = page.get_by_test_id("chart-heatmap").get_by_test_id("heat-cell")
    await expect(cells).to_have_count(7 * 24)
    await expect(page.get_by_test_id("chart-heatmap").get_by_test_id("heat-row")).to_have_count(7)
    drawn = await cells.evaluate_all("cells => cells.map(c => Number(c.dataset.value))")
    assert drawn == [cell["calls"] for row in data["heatmap"]["cells"] for cell in row]
    trend = page.get_by_test_id("chart-trend")
    await expect(trend.get_by_test_id("trend-line")).to_have_count(3)
    assert await trend.locator('[data-testid="trend-line"][data-series="calls"]').get_attribute("d")
    await expect(trend.locator('[data-series="calls"] [data-testid="trend-point"]')).to_have_count(len(data["trend"]))


async def test_marketer_dashboard_charts_filters_and_export(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path, clock=FakeClock(NOW)) as h, new_page(browser, "en-US") as page:
        http = await seeded(h)
        async with http:
            month = await report(http, h)  # the default: the 30 days to today
            week = await report(http, h, "from=2026-02-27&to=2026-03-05")
            shop_b = await report(http, h, "from=2026-02-27&to=2026-03-05&shop=B")
            async with http.get(f"{h.url}/api/reports/channels?from=2026-02-27&to=2026-03-05&shop=B&format=csv") as r:
                csv_b = await r.read()
        assert (month["from"], month["to"]) == ("2026-02-04", "2026-03-05")
        assert month["totals"]["calls"] != week["totals"]["calls"] != shop_b["totals"]["calls"]

        await log_in(page, h, "mark", connected=False)
        await expect(page.get_by_test_id("dashboard")).to_be_visible()
        await expect(page.get_by_test_id("nonagent-note")).to_be_hidden()
        await expect(page.get_by_test_id("conn-state")).to_be_hidden()  # no socket for a marketer
        await expect(page.get_by_test_id("agents-report")).to_be_hidden()  # the agent report is the leads'
        await assert_drawn(page, month)
        await expect(page.get_by_test_id("dash-preset-30")).to_have_attribute("aria-pressed", "true")
        await expect(page.get_by_test_id("tile-calls").get_by_test_id("tile-value")).to_have_text("7")
        await expect(page.get_by_test_id("tile-revenue").get_by_test_id("tile-value")).to_have_text("50,000")
        await expect(page.get_by_test_id("tile-roi").get_by_test_id("tile-value")).to_have_text(
            f"{round(month['totals']['roi'] * 100):+d}%")
        direct = page.locator('[data-testid="dash-channel"][data-channel="direct"]')
        await expect(direct.get_by_test_id("dash-channel-roi")).to_have_text("–")  # cost nothing: not applicable
        await expect(page.get_by_test_id("dash-shop").locator("option")).to_have_text(["All shops", "A", "B"])

        # The last 7 days: the call of 20 February drops out and becomes the previous period.
        await page.get_by_test_id("dash-preset-7").click()
        await assert_drawn(page, week)
        await expect(page.get_by_test_id("dash-preset-7")).to_have_attribute("aria-pressed", "true")
        await expect(page.get_by_test_id("tile-calls").get_by_test_id("tile-value")).to_have_text("6")
        await expect(page.get_by_test_id("tile-calls").get_by_test_id("tile-change")).to_have_text(
            "+500% vs previous period")  # 1 call in 20-26 February
        await expect(page.get_by_test_id("dash-period")).to_have_text(
            "February 27 – March 5, compared with February 20 – February 26")

        # Shop B only: its two channels.
        await page.get_by_test_id("dash-shop").select_option("B")
        await assert_drawn(page, shop_b)
        await expect(page.get_by_test_id("tile-calls").get_by_test_id("tile-value")).to_have_text("2")
        await expect(page.get_by_test_id("dash-shop").locator("option")).to_have_count(3)  # A stays choosable

        # The heatmap shows missed calls when asked; every chart has its table.
        missed = page.get_by_test_id("heat-missed")
        await missed.click()
        await expect(missed).to_have_attribute("aria-pressed", "true")
        cells = page.get_by_test_id("chart-heatmap").get_by_test_id("heat-cell")
        assert await cells.evaluate_all("cells => cells.map(c => Number(c.dataset.value))") == [
            cell["missed"] for row in shop_b["heatmap"]["cells"] for cell in row]
        calls_box = page.get_by_test_id("chart-calls")
        await calls_box.get_by_test_id("chart-toggle").click()
        table = calls_box.get_by_test_id("chart-table")
        await expect(table).to_be_visible()
        await expect(calls_box.get_by_test_id("chart-svg")).to_be_hidden()
        await expect(table.locator("tbody tr")).to_have_count(len(shop_b["channels"]))
        await expect(table.locator("tbody tr").first).to_contain_text(shop_b["channels"][0]["channel"])
        await calls_box.get_by_test_id("chart-toggle").click()
        await expect(calls_box.get_by_test_id("chart-svg")).to_be_visible()
        titles = await calls_box.locator('[data-testid="bar"] title').all_text_contents()
        assert titles == [f"{c['channel']} · Calls: {c['calls']:g}" for c in shop_b["channels"]]

        # The export carries the same period and shop.
        export = page.get_by_test_id("dash-export")
        await expect(export).to_have_attribute("href", "/api/reports/channels?from=2026-02-27&to=2026-03-05&shop=B"
                                                       "&format=csv")
        async with page.expect_download() as info:
            await export.click()
        download = await info.value
        assert download.suggested_filename == "channels-2026-02-27-2026-03-05.csv"
        assert Path(await download.path()).read_bytes() == csv_b

        # Back to every shop for the picture.
        await page.get_by_test_id("dash-shop").select_option("")
        await missed.click()
        await page.get_by_test_id("heat-calls").click()
        await assert_drawn(page, week)
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "dashboard.png", DOCS / "dashboard.png")


async def test_the_russian_page_and_a_bad_period(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path, clock=FakeClock(NOW)) as h, new_page(browser, "ru-RU") as page:
        http = await seeded(h)
        async with http:
            month = await report(http, h)
        await log_in(page, h, "mark", connected=False)
        await assert_drawn(page, month)
        await expect(page.get_by_test_id("dash-preset-month")).to_have_text("Этот месяц")
        await page.get_by_test_id("dash-preset-month").click()
        await expect(page.get_by_test_id("dash-from")).to_have_value("2026-03-01")
        await expect(page.get_by_test_id("tile-calls").get_by_test_id("tile-value")).to_have_text("6")
        await page.get_by_test_id("dash-from").fill("2026-03-09")  # after "to": the server says no
        await expect(page.get_by_test_id("dash-status")).to_contain_text("Отчёт не загрузился")
        await expect(page.get_by_test_id("dash-status")).to_have_attribute("data-state", "error")


async def test_the_boss_sees_the_dashboard_above_his_sections_and_the_agent_report(tmp_path: Path,
                                                                                 browser: Browser) -> None:
    async with harness(tmp_path, clock=FakeClock(NOW)) as h, new_page(browser, "en-US") as page:
        http = await seeded(h)
        async with http:
            month = await report(http, h)
        await log_in(page, h, "admin")
        await expect(page.get_by_test_id("dashboard")).to_be_visible()
        await expect(page.get_by_test_id("calllog")).to_be_visible()  # his sections stay, under it
        await assert_drawn(page, month)
        rows = page.get_by_test_id("agents-row")
        await expect(rows).to_have_count(3)  # anna, boris, vera
        anna = page.locator('[data-testid="agents-row"][data-login="anna"]')
        await expect(anna.get_by_test_id("agents-answered")).to_have_text("2")  # c1 and c8 (20 February)
        await page.get_by_test_id("dash-preset-7").click()
        await expect(anna.get_by_test_id("agents-answered")).to_have_text("1")  # the agent report follows the period
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-admin.png"), full_page=True)
