"""The call log for managers: the API (filters, who sees what, CSV, bad input)
through the whole gateway of tests/harness.py, and the page in real headless
Chromium (filter, play a recording and seek on its waveform, export).

The API tests store a scripted week of calls through the real service (so
contacts, missed-call tasks and points follow from them as in production),
with the reference number plan (config/example.toml: shop A "Магазин A" in
Moscow, shop B "Shop B" in Yekaterinburg) and the reference people: olga leads
sales (anna 101, boris 102), pavel leads support (vera 103). Which call each
reader sees, and every task figure, is worked out by hand from the script.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from gateway.calllog_api import CSV_COLUMNS, EXPORT_PAGE
from gateway.config import HttpConfig
from gateway.effects import CallFinished
from gateway.numberplan import PlanBook
from gateway.record import CallRecord, LegRecord, iso
from gateway.web import SESSION_COOKIE
from tests.harness import PASSWORD, Harness
from tests.test_numberplan import example_plan
from tests.test_page import ARTIFACTS, CHROMIUM, TZ, browser, log_in, new_page  # noqa: F401  (browser: a fixture)

MOSCOW, YEKATERINBURG = ZoneInfo("Europe/Moscow"), ZoneInfo("Asia/Yekaterinburg")
SHOP_A, SHOP_A_YANDEX, SHOP_B, SHOP_B_AVITO = "+74950000001", "+74950000003", "+74950000002", "+74950000004"
RECORDINGS = "/var/spool/asterisk/recordings/"  # the harness's asterisk_prefix


def msk(text: str) -> float:
    """Epoch seconds of a wall-clock time in Moscow (the KPI time zone)."""
    return datetime.fromisoformat(text).replace(tzinfo=MOSCOW).timestamp()


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(call_id: str, direction: str, caller: str | None, dialled: str | None, outcome: str, start: float, *,
           ring: float = 5.0, talk: float = 0.0, answered_by: str | None = None, rang: Sequence[str] = (),
           talked: Sequence[str] = (), recording: str | None = None) -> CallRecord:
    """A finished call as the tracker makes it: one leg per agent's phone (and the placer's), one for the customer."""
    answered = start + ring if outcome == "answered" else None
    end = (answered or start + ring) + talk
    placer = (caller,) if direction != "inbound" and caller else ()
    legs = [LegRecord(f"{call_id}-{ext}", "agent", ext, None, start, answered if ext in (*talked, *placer) else None,
                      end, 16) for ext in dict.fromkeys((*placer, *rang, *talked))]
    customer = caller if direction == "inbound" else dialled if direction == "outbound" else None
    if customer:
        legs.append(LegRecord(f"{call_id}-trunk", "external", None, customer, start, answered, end, 16))
    return CallRecord(
        call_id=call_id, direction=direction, caller=caller, caller_name=None, dialled=dialled, outcome=outcome,
        answered_by=answered_by, rang=tuple(rang), talked=tuple(talked), started_at=start, answered_at=answered,
        ended_at=end, ring_seconds=ring, talk_seconds=talk, hangup_cause=16,
        reason=None if outcome == "answered" else outcome, interrupted=False, ended=True, recording_path=recording,
        legs=tuple(legs))


# The script: a week of March 2026 (Monday the 2nd to Thursday the 5th), Moscow times.
CALLS = [
    # anna answers a customer of shop A (direct); she notes the order.
    record("c1-in-anna", "inbound", "+79161110001", SHOP_A, "answered", msk("2026-03-02 10:00:00"), talk=120,
           answered_by="101", rang=("101",), talked=("101",), recording=RECORDINGS + "c1.wav"),
    # Shop B (avito) misses a customer at 23:30 Moscow: 01:30 on Tuesday in Yekaterinburg, still Monday in the log.
    record("c2-missed-boris", "inbound", "+79161110002", SHOP_B_AVITO, "missed", msk("2026-03-02 23:30:00"), ring=20,
           rang=("102",)),
    # boris calls him back next morning: the task is reached, late (shop B opens 09:00 Yekaterinburg, SLA 60 min).
    # (An outbound call's agent is its caller: nobody in rang or talked unless it is transferred.)
    record("c3-callback-boris", "outbound", "102", "89161110002", "answered", msk("2026-03-03 09:15:00"), ring=10,
           talk=60),
    # vera (support) answers a yandex call of shop A: pavel's, not olga's.
    record("c4-vera", "inbound", "+79161110003", SHOP_A_YANDEX, "answered", msk("2026-03-03 12:00:00"), talk=30,
           answered_by="103", rang=("103",), talked=("103",)),
    # vera answers, then transfers to boris: olga sees it (boris talked).
    record("c10-transfer", "inbound", "+79161110007", SHOP_A_YANDEX, "answered", msk("2026-03-03 14:00:00"),
           talk=90, answered_by="103", rang=("103", "102"), talked=("103", "102")),
    # A ring group of anna and vera; the caller gives up: both managers see it, and a task opens.
    record("c5-abandoned", "inbound", "+79161110004", SHOP_B, "abandoned", msk("2026-03-04 15:00:00"), ring=8,
           rang=("101", "103")),
    # vera answers a customer whose manager is boris (set by hand): olga sees it for the customer.
    record("c6-boris-customer", "inbound", "+79161110005", SHOP_A, "answered", msk("2026-03-04 16:00:00"), talk=40,
           answered_by="103", rang=("103",), talked=("103",)),
    # anna calls vera: an internal call, seen by both managers.
    record("c7-internal", "internal", "101", "103", "answered", msk("2026-03-04 17:00:00"), talk=15,
           answered_by="103", rang=("103",), talked=("103",)),
    # anna's outbound call finds the line busy.
    record("c9-busy", "outbound", "101", "+79161110006", "busy", msk("2026-03-05 09:00:00"), ring=3),
    # Before the week: outside every period asked below except by date.
    record("c8-before", "inbound", "+79161110001", SHOP_A, "answered", msk("2026-02-20 11:00:00"), talk=10,
           answered_by="101", rang=("101",), talked=("101",)),
]
NOW = msk("2026-03-05 10:00:00")  # Thursday
WEEK = "from=2026-03-02&to=2026-03-05"
EVIL_NOTE = '=HYPERLINK("http://evil.example/","click")'

SEEN_BY = {
    "admin": ["c9-busy", "c7-internal", "c6-boris-customer", "c5-abandoned", "c10-transfer", "c4-vera",
              "c3-callback-boris", "c2-missed-boris", "c1-in-anna"],
    "olga": ["c9-busy", "c7-internal", "c6-boris-customer", "c5-abandoned", "c10-transfer", "c3-callback-boris",
             "c2-missed-boris", "c1-in-anna"],
    "pavel": ["c7-internal", "c6-boris-customer", "c5-abandoned", "c10-transfer", "c4-vera"],
}


def harness(tmp_path: Path, **options: Any) -> Harness:
    http = HttpConfig(host="127.0.0.1", port=0, allowed_origins=("http://crm.example.com",), session_hours=24 * 7)
    return Harness(tmp_path, plans=PlanBook(example_plan()), http=http, **options)


async def store_calls(h: Harness, calls: Sequence[CallRecord]) -> None:
    """Through the service, one after the other (a call-back must find its missed call's task)."""
    for call in calls:
        h.gateway.carry_out(CallFinished(call))
        await h.gateway.drain()


@pytest.fixture
async def week(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path, clock=FakeClock(NOW)) as h:
        await h.contacts.put("+79161110005", {"name": "Пётр", "manager": "boris"}, set_by="olga")
        await h.contacts.put("+79161110001", {"name": "@SUM(1+1)"}, set_by="olga")
        await store_calls(h, CALLS)
        await h.store.set_result("c1-in-anna", "order", EVIL_NOTE, "anna", NOW)
        yield h


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def cookie_of(http: aiohttp.ClientSession, h: Harness, login: str) -> str:
    async with http.post(f"{h.url}/api/login", json={"login": login, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        return response.cookies[SESSION_COOKIE].value


async def get(http: aiohttp.ClientSession, h: Harness, login: str | None, query: str) -> tuple[int, Any]:
    headers = {"Cookie": f"{SESSION_COOKIE}={await cookie_of(http, h, login)}"} if login else {}
    async with http.get(f"{h.url}/api/calls/log?{query}", headers=headers) as response:
        return response.status, await response.json()


async def ids(http: aiohttp.ClientSession, h: Harness, login: str, query: str) -> list[str]:
    status, body = await get(http, h, login, query)
    assert status == 200, body
    assert body["total"] == len(body["calls"])
    return [c["call_id"] for c in body["calls"]]


# -- who sees what ------------------------------------------------------------------------------


@pytest.mark.parametrize("login", ["admin", "olga", "pavel"])
async def test_each_reader_sees_the_calls_of_his_people_newest_first(week: Harness, http: aiohttp.ClientSession,
                                                                     login: str) -> None:
    assert await ids(http, week, login, WEEK) == SEEN_BY[login]


@pytest.mark.parametrize(("login", "status", "error"), [
    ("anna", 403, "forbidden"), ("mark", 403, "forbidden"), (None, 401, "login_required")])
async def test_agents_marketers_and_strangers_are_turned_away(week: Harness, http: aiohttp.ClientSession,
                                                             login: str | None, status: int, error: str) -> None:
    for query in (WEEK, WEEK + "&format=csv"):
        got, body = await get(http, week, login, query)
        assert (got, body["error"]) == (status, error)


# -- what a call says --------------------------------------------------------------------------


async def test_a_call_with_its_agent_result_recording_and_line(week: Harness, http: aiohttp.ClientSession) -> None:
    status, body = await get(http, week, "olga", WEEK + "&limit=500")
    assert status == 200
    calls = {c["call_id"]: c for c in body["calls"]}
    assert calls["c1-in-anna"] == {
        "call_id": "c1-in-anna", "started_at": iso(msk("2026-03-02 10:00:00")), "direction": "inbound",
        "caller": "+79161110001", "dialled": SHOP_A, "customer": "+79161110001", "customer_name": "@SUM(1+1)",
        "shop": "A", "shop_name": "Магазин A", "timezone": "Europe/Moscow", "channel": "direct",
        "outcome": "answered", "answered_by": "101", "answered_by_login": "anna", "answered_by_name": "Анна Иванова",
        "rang": ["101"], "talked": ["101"], "ring_seconds": 5.0, "talk_seconds": 120.0,
        "result": "order", "note": EVIL_NOTE,
        # The record named a MixMonitor file: a job waits for the collector.
        "recording": {"status": "pending", "duration": None},
        "task": None,
    }
    assert calls["c2-missed-boris"]["timezone"] == "Asia/Yekaterinburg"  # shop B's clock for its times
    assert calls["c2-missed-boris"]["answered_by"] is None and calls["c2-missed-boris"]["rang"] == ["102"]
    assert calls["c2-missed-boris"]["recording"] is None
    # An outbound call placed by hand (no click-to-call request) has no shop; its customer is in E.164.
    assert (calls["c3-callback-boris"]["shop"], calls["c3-callback-boris"]["customer"]) == (None, "+79161110002")
    assert calls["c3-callback-boris"]["timezone"] == "Europe/Moscow"  # no shop: the KPI zone
    assert calls["c10-transfer"]["talked"] == ["103", "102"]
    assert (body["from"], body["to"], body["timezone"], body["total"]) == ("2026-03-02", "2026-03-05",
                                                                         "Europe/Moscow", 8)
    assert [s["id"] for s in body["shops"]] == ["A", "B"]
    assert body["channels"] == ["avito", "click-to-call", "direct", "unknown", "yandex"]


async def test_the_missed_call_task_of_the_missed_call_and_of_the_call_back(week: Harness,
                                                                            http: aiohttp.ClientSession) -> None:
    (task,) = [t for t in await week.followup.tasks.find(status="all") if t.phone == "+79161110002"]
    # Missed at 23:30:20 (end of ringing), reached at 09:15:10 next day: 9 h 44 min 50 s.
    # Due 10:00 Yekaterinburg (08:00 Moscow: opens 09:00, SLA 60 min): late.
    expected = {"task_id": task.task_id, "status": "reached", "within_sla": False, "callback_seconds": 35090.0}
    calls = {c["call_id"]: c for c in (await get(http, week, "olga", WEEK))[1]["calls"]}
    assert calls["c2-missed-boris"]["task"] == {**expected, "this_call": "attempt"}
    assert calls["c3-callback-boris"]["task"] == {**expected, "this_call": "reach"}
    (open_task,) = await week.followup.tasks.find(status="open")
    assert calls["c5-abandoned"]["task"] == {"task_id": open_task.task_id, "status": "open", "within_sla": None,
                                             "callback_seconds": None, "this_call": "attempt"}
    assert calls["c1-in-anna"]["task"] is None and calls["c9-busy"]["task"] is None


# -- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("login", "query", "expected"), [
    # A period is local days of the KPI zone: 23:30 Moscow on the 2nd is the 2nd.
    ("admin", "from=2026-03-02&to=2026-03-02", ["c2-missed-boris", "c1-in-anna"]),
    ("admin", "from=2026-03-03&to=2026-03-03", ["c10-transfer", "c4-vera", "c3-callback-boris"]),
    ("admin", "from=2026-02-01&to=2026-02-28", ["c8-before"]),
    # The agent: rang, answered, talked on or placed the call.
    ("olga", WEEK + "&agent=anna", ["c9-busy", "c7-internal", "c5-abandoned", "c1-in-anna"]),
    ("olga", WEEK + "&agent=boris", ["c10-transfer", "c3-callback-boris", "c2-missed-boris"]),
    ("admin", WEEK + "&agent=vera", ["c7-internal", "c6-boris-customer", "c5-abandoned", "c10-transfer", "c4-vera"]),
    ("olga", WEEK + "&shop=B", ["c5-abandoned", "c2-missed-boris"]),
    ("olga", WEEK + "&channel=avito", ["c2-missed-boris"]),
    ("admin", WEEK + "&channel=yandex&shop=A", ["c10-transfer", "c4-vera"]),
    ("olga", WEEK + "&outcome=missed", ["c2-missed-boris"]),
    ("olga", WEEK + "&outcome=answered&agent=anna", ["c7-internal", "c1-in-anna"]),
    # The number in any spelling; both the missed call and the call back.
    ("olga", WEEK + "&number=89161110002", ["c3-callback-boris", "c2-missed-boris"]),
    ("olga", WEEK + "&number=%2B7%20(916)%20111-00-02", ["c3-callback-boris", "c2-missed-boris"]),
    ("pavel", WEEK + "&number=89161110002", []),  # not his people's
    ("olga", WEEK + "&shop=nowhere", []),
])
async def test_filters(week: Harness, http: aiohttp.ClientSession, login: str, query: str,
                       expected: list[str]) -> None:
    assert await ids(http, week, login, query) == expected


async def test_the_default_period_is_the_last_seven_days_and_pages_are_stable(week: Harness,
                                                                             http: aiohttp.ClientSession) -> None:
    status, body = await get(http, week, "admin", "")
    assert (status, body["from"], body["to"]) == (200, "2026-02-27", "2026-03-05")
    assert [c["call_id"] for c in body["calls"]] == SEEN_BY["admin"]  # c8 (20 February) is older
    pages = []
    for offset in (0, 4, 8):
        status, body = await get(http, week, "admin", f"{WEEK}&limit=4&offset={offset}")
        assert (status, body["total"], body["limit"], body["offset"]) == (200, 9, 4, offset)
        pages += [c["call_id"] for c in body["calls"]]
    assert pages == SEEN_BY["admin"]


@pytest.mark.parametrize(("login", "query", "error"), [
    ("olga", "from=2026-13-01", "bad_date"),
    ("olga", "to=yesterday", "bad_date"),
    ("olga", "from=2026-03-05&to=2026-03-01", "bad_period"),
    ("olga", "from=2025-01-01&to=2026-03-05", "bad_period"),  # over 366 days
    ("olga", WEEK + "&outcome=lost", "bad_outcome"),
    ("olga", WEEK + "&number=call-me", "bad_number"),
    ("olga", WEEK + "&number=101", "bad_number"),  # an extension is no customer's number
    ("olga", WEEK + "&number=" + "9" * 101, "bad_number"),
    ("olga", WEEK + "&agent=vera", "bad_agent"),  # pavel's
    ("olga", WEEK + "&agent=olga", "bad_agent"),  # not an agent
    ("admin", WEEK + "&agent=nobody", "bad_agent"),
    ("olga", WEEK + "&shop=" + "x" * 101, "bad_shop"),
    ("olga", WEEK + "&limit=0", "bad_limit"),
    ("olga", WEEK + "&limit=501", "bad_limit"),
    ("olga", WEEK + "&limit=ten", "bad_limit"),
    ("olga", WEEK + "&offset=-1", "bad_offset"),
    ("olga", WEEK + "&format=xlsx", "bad_format"),
    ("olga", WEEK + "&outcome=lost&format=csv", "bad_outcome"),  # a bad export is a 400 too, not a file
])
async def test_bad_input_is_a_clear_400(week: Harness, http: aiohttp.ClientSession, login: str, query: str,
                                        error: str) -> None:
    status, body = await get(http, week, login, query)
    assert (status, body["error"]) == (400, error), body
    assert body["message"]


async def test_a_store_that_does_not_answer_is_a_503_not_a_half_answer(week: Harness, http: aiohttp.ClientSession,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    cookie = await cookie_of(http, week, "olga")
    await week.store.close()
    for query in (WEEK, WEEK + "&format=csv"):
        async with http.get(f"{week.url}/api/calls/log?{query}",
                            headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "store_unavailable"
    assert "call log:" in caplog.text and "closed" in caplog.text


# -- CSV ----------------------------------------------------------------------------------------


async def export(http: aiohttp.ClientSession, h: Harness, login: str, query: str) -> tuple[aiohttp.ClientResponse,
                                                                                             bytes]:
    headers = {"Cookie": f"{SESSION_COOKIE}={await cookie_of(http, h, login)}"}
    async with http.get(f"{h.url}/api/calls/log?format=csv&{query}", headers=headers) as response:
        return response, await response.read()


def rows_of(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(b"\xef\xbb\xbf")  # the byte order mark: spreadsheets read UTF-8
    reader = csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


async def test_csv_is_the_filtered_list_with_formulas_defused(week: Harness, http: aiohttp.ClientSession) -> None:
    response, body = await export(http, week, "olga", "from=2026-03-02&to=2026-03-04&limit=1&offset=3")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == 'attachment; filename="calls-2026-03-02-2026-03-04.csv"'
    assert response.headers["Cache-Control"] == "no-store"
    assert b"\r\n" in body
    rows = rows_of(body)
    # Every row of the filter (limit and offset are for pages), as the JSON lists them.
    assert [r["call_id"] for r in rows] == [c for c in SEEN_BY["olga"] if c != "c9-busy"]
    by_id = {r["call_id"]: r for r in rows}
    anna = by_id["c1-in-anna"]
    assert anna["note"] == "'" + EVIL_NOTE  # a spreadsheet shows it, never runs it
    assert anna["customer_name"] == "'@SUM(1+1)"
    assert anna["caller"] == anna["customer"] == "'+79161110001"  # '+' starts a formula too
    assert (anna["started_at"], anna["local_time"], anna["timezone"]) == (
        iso(msk("2026-03-02 10:00:00")), "2026-03-02 10:00:00", "Europe/Moscow")
    assert (anna["shop"], anna["shop_name"], anna["channel"], anna["outcome"]) == ("A", "Магазин A", "direct",
                                                                                   "answered")
    assert (anna["answered_by"], anna["answered_by_login"], anna["answered_by_name"]) == ("101", "anna",
                                                                                          "Анна Иванова")
    assert (anna["ring_seconds"], anna["talk_seconds"], anna["result"]) == ("5.0", "120.0", "order")
    assert (anna["recording_status"], anna["recording_duration"], anna["task_id"]) == ("pending", "", "")
    missed = by_id["c2-missed-boris"]
    # Shop B's own clock: 01:30 on Tuesday in Yekaterinburg, though Monday in the KPI zone.
    assert (missed["local_time"], missed["timezone"]) == ("2026-03-03 01:30:00", "Asia/Yekaterinburg")
    assert (missed["rang"], missed["task_status"], missed["task_within_sla"], missed["task_callback_seconds"]) == (
        "boris", "reached", "0", "35090.0")
    assert by_id["c10-transfer"]["talked"] == "vera;boris"
    assert by_id["c5-abandoned"]["task_status"] == "open"


async def test_csv_of_more_than_a_page_has_every_call_once(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    # Many calls starting in the same second: the export's pages must not cut between them.
    count = EXPORT_PAGE * 2 + 17
    start = msk("2026-03-03 12:00:00")
    calls = [record(f"bulk-{n:05d}", "inbound", f"+7916{n:07d}", SHOP_A, "answered", start + n // 700, talk=5,
                    answered_by="101", rang=("101",), talked=("101",)) for n in range(count)]
    async with harness(tmp_path, clock=FakeClock(NOW)) as h:
        await asyncio.gather(*(h.store.save_call(c) for c in calls))
        response, body = await export(http, h, "olga", WEEK)
        assert response.status == 200
        exported = [r["call_id"] for r in rows_of(body)]
        status, page = await get(http, h, "olga", WEEK + "&limit=500")
    assert len(exported) == len(set(exported)) == count
    assert status == 200 and page["total"] == count
    assert exported[:500] == [c["call_id"] for c in page["calls"]]  # the same order as the pages
    assert exported == [c.call_id for c in sorted(calls, key=lambda c: (c.started_at, c.call_id), reverse=True)]


# -- the page -----------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")


def tones() -> bytes:
    """Six seconds of a WAV the way MixMonitor writes one: quiet, loud, quiet (a waveform with a shape)."""
    from pydub.generators import Sine  # type: ignore[import-untyped]

    quiet, loud, softer = (Sine(hz).to_audio_segment(duration=2000, volume=db) for hz, db in
                           ((440, -24), (660, -3), (440, -18)))
    audio = (quiet + loud + softer).set_frame_rate(8000).set_channels(1)
    out = io.BytesIO()
    audio.export(out, format="wav")
    return out.getvalue()


async def recorded_calls(h: Harness) -> float:
    """Three calls of the last hours; anna's is recorded and collected (MixMonitor's file -> Ogg Opus)."""
    now = time.time()
    (h.asterisk_dir / "p1.wav").write_bytes(tones())
    os.utime(h.asterisk_dir / "p1.wav", (now - 60, now - 60))  # MixMonitor is done with it
    await store_calls(h, [
        record("p1-answered", "inbound", "+79161110001", SHOP_A, "answered", now - 3 * 3600, talk=6,
               answered_by="101", rang=("101",), talked=("101",), recording=RECORDINGS + "p1.wav"),
        record("p2-missed", "inbound", "+79161110002", SHOP_B_AVITO, "missed", now - 2 * 3600, ring=20,
               rang=("102",)),
        record("p3-vera", "inbound", "+79161110003", SHOP_A_YANDEX, "answered", now - 3600, talk=30,
               answered_by="103", rang=("103",), talked=("103",)),  # pavel's people: olga does not see it
    ])
    await h.store.set_result("p1-answered", "order", "Доставка в субботу", "anna", now)
    h.recordings_dir.mkdir(exist_ok=True)  # made by Collector.run(), which the harness does not start
    assert await h.collector.collect_due() == 1
    recording = await h.recordings.get("p1-answered")
    assert recording is not None and recording.status == "ready" and recording.content_type == "audio/ogg"
    return now


# Which colour the waveform's bar at each fraction of its width is drawn in (sampled mid-height, mid-bar).
WAVE_COLOURS = """(canvas, fractions) => {
    const style = getComputedStyle(canvas);
    const rgb = (colour) => {
        const probe = document.createElement('canvas').getContext('2d');
        probe.fillStyle = colour;
        probe.fillRect(0, 0, 1, 1);
        return Array.from(probe.getImageData(0, 0, 1, 1).data.slice(0, 3)).join();
    };
    const names = { [rgb(style.getPropertyValue('--wave-played').trim())]: 'played',
                    [rgb(style.getPropertyValue('--wave-rest').trim())]: 'rest' };
    const bar = canvas.width / 200;
    return fractions.map((f) => {
        const x = Math.floor((Math.floor(f * 200) + 0.5) * bar);
        const pixel = canvas.getContext('2d').getImageData(x, Math.floor(canvas.height / 2), 1, 1).data;
        return names[Array.from(pixel.slice(0, 3)).join()] || Array.from(pixel).join();
    });
}"""


def hhmm(epoch: float, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, zone).strftime("%H:%M")


@needs_chromium
async def test_call_log_page_filter_play_seek_and_export(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path) as h, new_page(browser, "en-US") as page:
        now = await recorded_calls(h)
        await log_in(page, h, "olga")
        log = page.get_by_test_id("calllog")
        await expect(log.get_by_role("heading", name="Call log")).to_be_visible()
        rows = page.get_by_test_id("calllog-row")
        await expect(rows).to_have_count(2)  # not vera's call
        answered = page.locator('[data-testid="calllog-row"][data-call-id="p1-answered"]')
        missed = page.locator('[data-testid="calllog-row"][data-call-id="p2-missed"]')
        await expect(rows.first).to_have_attribute("data-call-id", "p2-missed")  # newest first
        await expect(answered.get_by_test_id("calllog-agent")).to_have_text("Анна Иванова")
        await expect(answered.get_by_test_id("calllog-line")).to_have_text("Магазин A · direct")
        await expect(answered.get_by_test_id("calllog-result")).to_have_text("Order Доставка в субботу")
        await expect(missed.get_by_test_id("calllog-outcome")).to_have_text("Missed")
        await expect(missed.get_by_test_id("calllog-agent")).to_have_text("Борис Петров")  # whose phone rang
        await expect(missed.get_by_test_id("calllog-task")).to_have_text("Not called back yet")
        await expect(missed.get_by_test_id("calllog-play")).to_have_count(0)
        # Times as each shop sees them: shop B's Yekaterinburg, not the browser's Vladivostok.
        started = now - 2 * 3600
        await expect(missed.get_by_test_id("calllog-time")).to_contain_text(hhmm(started, YEKATERINBURG))
        assert hhmm(started, YEKATERINBURG) != hhmm(started, ZoneInfo(TZ))
        await expect(answered.get_by_test_id("calllog-time")).to_contain_text(hhmm(now - 3 * 3600, MOSCOW))

        # Filters apply as they are chosen.
        await page.get_by_test_id("filter-outcome").select_option("missed")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-call-id", "p2-missed")
        await page.get_by_test_id("calllog-reset").click()
        await expect(rows).to_have_count(2)
        await page.get_by_test_id("filter-agent").select_option("boris")
        await expect(rows).to_have_count(1)
        await expect(page.get_by_test_id("filter-agent").locator("option")).to_have_text(
            ["All", "Анна Иванова", "Борис Петров"])  # olga's people only
        await page.get_by_test_id("filter-agent").select_option("")
        await expect(rows).to_have_count(2)
        number = page.get_by_test_id("filter-number")
        await number.fill("call me")
        await number.press("Enter")
        await expect(page.get_by_test_id("calllog-status")).to_contain_text("Not a phone number")
        await expect(page.get_by_test_id("calllog-export")).to_have_attribute("aria-disabled", "true")
        await number.fill("8 (916) 111-00-01")  # anna's customer, as people write him
        await number.press("Enter")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-call-id", "p1-answered")
        await expect(page.get_by_test_id("calllog-status")).to_be_hidden()

        # Play: the player opens under the call, with the recording's waveform.
        await answered.get_by_test_id("calllog-play").click()
        player = page.get_by_test_id("player")
        await expect(player).to_have_attribute("data-call-id", "p1-answered")
        await expect(answered.get_by_test_id("calllog-play")).to_have_attribute("aria-expanded", "true")
        audio, wave = player.get_by_test_id("player-audio"), player.get_by_test_id("waveform")
        assert (await audio.get_attribute("src") or "").startswith(f"{h.url}/api/calls/p1-answered/recording?t=")
        await page.wait_for_function(
            "() => { const a = document.querySelector('[data-testid=player-audio]'); return a.readyState >= 1 "
            "&& Number.isFinite(a.duration) && a.duration > 5; }")
        await expect(wave).to_have_attribute("aria-valuenow", "0")
        await expect(wave).to_have_attribute("aria-valuemax", "6")
        await page.evaluate("""() => {
            window.seeks = [];
            const a = document.querySelector('[data-testid=player-audio]');
            a.addEventListener('seeked', () => window.seeks.push(a.currentTime));
        }""")
        box = await wave.bounding_box()
        assert box is not None and box["width"] > 200
        await wave.click(position={"x": box["width"] * 0.75, "y": box["height"] / 2})  # 3/4 in: 4.5 s
        seeked = await page.wait_for_function("() => window.seeks.length > 0 && window.seeks[window.seeks.length - 1]")
        assert 4.2 <= float(await seeked.json_value()) <= 4.8
        await expect(wave).to_have_attribute("aria-valuenow", re.compile(r"^[45]$"))  # about 4.5 s, rounded
        await expect(player.get_by_test_id("player-time")).to_have_text(re.compile(r"^0:0[45] of 0:06$"))
        # The waveform shows it: bars before the position in the played colour, after it in the other.
        assert await wave.evaluate(WAVE_COLOURS, [0.6, 0.9]) == ["played", "rest"]
        # And it plays on from there: the position moves past the point it was put at.
        await page.evaluate("() => document.querySelector('[data-testid=player-audio]').play()")
        await page.wait_for_function(
            "() => document.querySelector('[data-testid=player-audio]').currentTime > window.seeks[0] + 0.5")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "manager-call-log.png"), full_page=True)
        listens = await h.recordings.listens(since=now - 60)
        assert listens and {entry["login"] for entry in listens} == {"olga"}  # every listen is audited
        assert {entry["call_id"] for entry in listens} == {"p1-answered"}

        # Export: the same filters, as a CSV download.
        async with page.expect_download() as info:
            await page.get_by_test_id("calllog-export").click()
        download = await info.value
        assert download.suggested_filename.startswith("calls-") and download.suggested_filename.endswith(".csv")
        path = await download.path()
        exported = rows_of(Path(path).read_bytes())
        assert [(r["call_id"], r["customer"], r["answered_by_name"], r["recording_status"]) for r in exported] == [
            ("p1-answered", "'+79161110001", "Анна Иванова", "ready")]

        await player.get_by_test_id("player-close").click()
        await expect(player).to_have_count(0)
        await expect(answered.get_by_test_id("calllog-play")).to_have_attribute("aria-expanded", "false")


@needs_chromium
async def test_call_log_page_in_russian_for_an_administrator(tmp_path: Path, browser: Browser) -> None:
    async with harness(tmp_path) as h, new_page(browser, "ru-RU") as page:
        await recorded_calls(h)
        await log_in(page, h, "admin")
        await expect(page.get_by_role("heading", name="Журнал звонков")).to_be_visible()
        table = page.get_by_test_id("calllog-table")
        for header in ("Время", "Клиент", "Итог", "Сотрудник", "Разговор", "Пропущенный", "Запись"):
            await expect(table.get_by_role("columnheader", name=header, exact=True)).to_be_visible()
        rows = page.get_by_test_id("calllog-row")
        await expect(rows).to_have_count(3)  # an administrator sees everybody's
        missed = page.locator('[data-testid="calllog-row"][data-call-id="p2-missed"]')
        await expect(missed.get_by_test_id("calllog-outcome")).to_have_text("Пропущен")
        await expect(missed.get_by_test_id("calllog-task")).to_have_text("Ещё не перезвонили")
        answered = page.locator('[data-testid="calllog-row"][data-call-id="p1-answered"]')
        await expect(answered.get_by_test_id("calllog-play")).to_have_text("Слушать")
        await expect(page.get_by_test_id("calllog-export")).to_have_text("Выгрузить CSV")
        await page.get_by_test_id("filter-from").fill("2020-01-02")
        await page.get_by_test_id("filter-to").fill("2020-01-01")
        await page.get_by_test_id("calllog-apply").click()
        await expect(page.get_by_test_id("calllog-status")).to_contain_text("Проверьте даты")
        await expect(rows).to_have_count(0)
        await page.get_by_test_id("calllog-reset").click()
        await expect(rows).to_have_count(3)
        await answered.get_by_test_id("calllog-play").click()
        wave = page.get_by_test_id("waveform")
        await expect(wave).to_have_attribute("aria-label", "Позиция в записи")
        await page.wait_for_function("() => document.querySelector('[data-testid=player-audio]').readyState >= 1")
        await wave.focus()  # a slider: the keys move the position
        await page.keyboard.press("End")
        await expect(wave).to_have_attribute("aria-valuenow", "6")
        await page.keyboard.press("Home")
        await expect(wave).to_have_attribute("aria-valuenow", "0")
        await page.keyboard.press("ArrowRight")
        await expect(wave).to_have_attribute("aria-valuenow", "5")
        assert await wave.evaluate(WAVE_COLOURS, [0.5, 0.95]) == ["played", "rest"]
        await page.get_by_test_id("lang-en").click()  # the open player keeps playing, its texts follow
        await expect(wave).to_have_attribute("aria-label", "Position in the recording")
        await expect(page.get_by_test_id("player-close")).to_have_text("Close the player")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "admin-call-log-player.png"), full_page=True)
