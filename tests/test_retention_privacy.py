"""Retention of recordings, legal holds, export and erasure of a number's
personal data: a real store on a SQLite file, real files in a recordings
directory, calls saved through the gateway service (with their contacts,
callback tasks and KPI points), recordings made ready through
``recordings.storage`` (the "transcoded" bytes are written here), and the
routes through a real aiohttp app.

The HTTP app is assembled from gateway.web's pieces as tests/test_contacts.py
does (session middleware, /api/login, HTTP, SIGNER, DIRECTORY) plus
``privacy_api.add_routes``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connectors.webhook import Request
from crm_bridge.contacts import Contacts
from crm_bridge.inbox import CallRef, Inbox
from crm_bridge.interactions import Interactions
from crm_bridge.store import Store
from gateway import web as gw
from gateway.auth import Signer
from gateway.config import HttpConfig
from gateway.effects import CallFinished
from gateway.followup import Followup
from gateway.numberplan import Line, NumberPlan, PlanBook, Shop
from gateway.record import CallRecord
from gateway.replay import replay_capture
from gateway.service import Gateway
from gateway.users import Directory
from recordings import privacy
from recordings.privacy_api import PRIVACY, PrivacyDesk, add_routes
from recordings.retention import DAY, purge, watch
from recordings.storage import ERASED, MISSING, PURGED, READY, Recordings, job_statements
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, SECRET, default_users
from tests.local_server import serve

DIRECTORY = Directory(default_users())
SHOP_A = Shop("A", "Shop A", recordings_days=30)
SHOP_B = Shop("B", "Shop B", recordings_days=0)  # keeps recordings forever
PLAN = NumberPlan(
    shops={"A": SHOP_A, "B": SHOP_B},
    lines={
        "+74950000001": Line("+74950000001", SHOP_A, "direct"),
        "+74950000002": Line("+74950000002", SHOP_B, "direct"),
        "+74950000003": Line("+74950000003", SHOP_A, "yandex"),
    },
    default_shop="A",
)
NOW = 1_800_000_000.0  # the injected clock of these tests
X = "+79161110001"  # the person who asks
Y = "+79161110005"  # somebody else
X_DIGITS = "9161110001"  # in every spelling of X
SHOP, CUSTOMER = 20, 22  # in SELECT * FROM calls


def template(name: str) -> CallRecord:
    (record,) = replay_capture(CAPTURES / f"{name}.jsonl")
    return record


ANSWERED, MISSED, OUTBOUND = template("a_answered"), template("b_missed"), template("g_click_to_call")


def make(call_id: str, *, customer: str, started_at: float, line: str = "+74950000001",
         kind: str = "answered", talk: float = 60.0) -> CallRecord:
    """A record of the capture ``kind`` moved to another id, customer, line and time."""
    base = {"answered": ANSWERED, "missed": MISSED, "outbound": OUTBOUND}[kind]
    shift = started_at - base.started_at
    legs = tuple(replace(leg, leg_id=f"{call_id}.{i}", number=customer if leg.kind == "external" else leg.number,
                         started_at=leg.started_at + shift,
                         answered_at=leg.answered_at + shift if leg.answered_at else None,
                         ended_at=leg.ended_at + shift if leg.ended_at else None)
                 for i, leg in enumerate(base.legs))
    answered_at = base.answered_at + shift if base.answered_at else None
    record = replace(
        base, call_id=call_id, started_at=started_at, answered_at=answered_at,
        ended_at=(answered_at or started_at + base.ring_seconds) + (talk if answered_at else 0.0),
        talk_seconds=talk if answered_at else 0.0, legs=legs,
        recording_path=f"/var/spool/asterisk/recordings/{customer}-{call_id}.wav",
    )
    if kind == "outbound":
        return replace(record, dialled=customer)
    return replace(record, caller=customer, dialled=line)


@dataclass
class World:
    store: Store
    directory: Path  # the recordings directory
    plans: PlanBook
    gateway: Gateway
    contacts: Contacts

    async def call(self, record: CallRecord, *, recording: str | None = READY) -> CallRecord:
        """Store the record through the gateway; its recording ``recording``
        (ready: with a file in the directory; missing; pending; None: none)."""
        self.gateway.carry_out(CallFinished(record))
        await self.gateway.drain()
        if recording is None:
            return record
        assert record.recording_path is not None
        source = record.recording_path
        await self.store.write(*job_statements(record.call_id, source, record.ended_at or NOW))
        recordings = Recordings(self.store)
        if recording == READY:
            name = f"{record.call_id.replace(':', '_')}.ogg"
            content = f"OggS fake audio of {record.call_id}".encode()
            (self.directory / name).write_bytes(content)
            await recordings.ready(record.call_id, source, file=name, content_type="audio/ogg", duration=61.0,
                                   size=len(content), peaks=[0.1, 0.9, 0.4], now=record.ended_at or NOW)
        elif recording == MISSING:
            await recordings.failed(record.call_id, source, error="PBX said 404", retry_at=None, now=NOW)
        return record

    async def recording(self, call_id: str) -> tuple[Any, ...]:
        rows = await self.store.read("SELECT status, file, peaks, source FROM recordings WHERE call_id = ?",
                                     (call_id,))
        return tuple(rows[0])

    async def log(self) -> list[dict[str, Any]]:
        return await privacy.privacy_log(self.store)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "gw.sqlite3")
    directory = tmp_path / "recordings"
    directory.mkdir()
    plans = PlanBook(PLAN)
    contacts = Contacts(store, region="RU", clock=lambda: NOW)
    followup = Followup(store, plans=plans, directory=DIRECTORY, clock=lambda: NOW)
    gateway = Gateway(store, plans=plans, contacts=contacts, directory=DIRECTORY, followup=followup)
    try:
        yield World(store, directory, plans, gateway, contacts)
    finally:
        await store.close()


async def call_row(store: Store, call_id: str) -> tuple[Any, ...]:
    rows = await store.read("SELECT * FROM calls WHERE call_id = ?", (call_id,))
    return tuple(rows[0])


async def statistics(store: Store) -> list[tuple[Any, ...]]:
    """What dashboards count: calls per (shop, channel, direction, outcome), talk
    time, unique customers."""
    rows = await store.read(
        "SELECT shop, channel, direction, outcome, count(*), round(sum(talk_seconds), 3), count(DISTINCT customer), "
        "round(sum(ring_seconds), 3) FROM calls GROUP BY shop, channel, direction, outcome "
        "ORDER BY shop, channel, direction, outcome")
    leads = await store.read(
        "SELECT source_channel, first_shop, status, count(*) FROM contacts GROUP BY source_channel, first_shop, status "
        "ORDER BY source_channel, first_shop, status")
    points = await store.read("SELECT login, kind, count(*), sum(points) FROM interactions GROUP BY login, kind "
                              "ORDER BY login, kind")
    return [tuple(r) for r in rows] + [("leads", *r) for r in leads] + [("points", *r) for r in points]


async def rows_mentioning(store: Store, text: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table whose text holds ``text``."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    tables = await store.read("SELECT name FROM sqlite_master WHERE type = 'table'")
    for (table,) in tables:
        for row in await store.read(f"SELECT * FROM {table}"):
            flat = " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row)
            if text in flat:
                found.setdefault(table, []).append(tuple(row))
    return found


# -- retention ------------------------------------------------------------------------


async def test_purge_deletes_old_recordings_of_a_30_day_shop_and_keeps_the_rest(
        world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = world.directory
    old = await world.call(make("old", customer=X, started_at=NOW - 40 * DAY))
    old_missing = await world.call(make("old-missing", customer=X, started_at=NOW - 31 * DAY), recording=MISSING)
    old_pending = await world.call(make("old-pending", customer=Y, started_at=NOW - 35 * DAY,
                                        line="+74950000003"), recording="pending")
    # Outbound, placed from a desk phone: no shop, so the default shop's rule (A).
    no_shop = await world.call(make("no-shop", customer=Y, started_at=NOW - 50 * DAY, kind="outbound"))
    recent = await world.call(make("recent", customer=X, started_at=NOW - 10 * DAY))
    held = await world.call(make("held", customer=X, started_at=NOW - 60 * DAY))
    forever = await world.call(make("forever", customer=Y, started_at=NOW - 400 * DAY, line="+74950000002"))
    await privacy.set_hold(world.store, held.call_id, by="admin", reason="court case 12/34", now=NOW - DAY)
    assert (await call_row(world.store, no_shop.call_id))[SHOP] is None

    # Planted links: a file that is a symlink out, and a subdirectory that is one.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ogg").write_bytes(b"not ours")
    (outside / "x.ogg").write_bytes(b"not ours either")
    link = await world.call(make("link", customer=Y, started_at=NOW - 45 * DAY))
    (d / "link.ogg").unlink()
    (d / "link.ogg").symlink_to(outside / "secret.ogg")
    subdir = await world.call(make("subdir", customer=Y, started_at=NOW - 45 * DAY), recording="pending")
    (d / "sub").symlink_to(outside, target_is_directory=True)
    await Recordings(world.store).ready(subdir.call_id, subdir.recording_path or "", file="sub/x.ogg",
                                        content_type="audio/ogg", duration=1.0, size=1, peaks=[0.5], now=NOW)
    for name in ("old", "recent", "held", "forever"):
        assert (d / f"{name}.ogg").exists()

    records_before = {c: await call_row(world.store, c) for c in
                      ("old", "old-missing", "old-pending", "no-shop", "recent", "held", "forever", "link", "subdir")}
    with caplog.at_level(logging.INFO, logger="recordings.retention"):
        report = await purge(world.store, world.plans, d, NOW)

    purged = {old.call_id, old_missing.call_id, old_pending.call_id, no_shop.call_id, link.call_id, subdir.call_id}
    assert set(report.purged) == purged
    assert report.by_shop == {"A": 6}
    assert report.held == 1
    assert report.refused == (subdir.call_id,)
    assert report.failed == ()
    assert report.files_deleted == 3  # old, no-shop, and the link (as a link)
    assert not (d / "old.ogg").exists() and not (d / "no-shop.ogg").exists()
    assert not (d / "link.ogg").is_symlink()
    # Nothing outside the directory was touched, whatever the links said.
    assert (outside / "secret.ogg").read_bytes() == b"not ours"
    assert (outside / "x.ogg").read_bytes() == b"not ours either"
    for call_id in purged:
        status, file, peaks, _ = await world.recording(call_id)
        assert (status, file, peaks) == (PURGED, None, None), call_id
    # Kept: recent, held, the shop that keeps forever.
    for call in (recent, held, forever):
        assert (await world.recording(call.call_id))[:2] == (READY, f"{call.call_id}.ogg")
        assert (d / f"{call.call_id}.ogg").exists()
    # The call records stay exactly as they were.
    for call_id, row in records_before.items():
        assert await call_row(world.store, call_id) == row
    # One log row says what went.
    entries = [e for e in await world.log() if e["action"] == "purge"]
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["login"], entry["subject"]) == ("system", "retention")
    assert set(entry["detail"]["call_ids"]) == purged
    assert entry["detail"]["purged"] == 6 and entry["detail"]["by_shop"] == {"A": 6}
    assert entry["detail"]["refused"] == [subdir.call_id]
    assert "purged 6 recording(s)" in caplog.text

    # A second run finds nothing and writes nothing; a purged job is never fetched again.
    again = await purge(world.store, world.plans, d, NOW + 1)
    assert again.purged == () and again.held == 1
    assert len([e for e in await world.log() if e["action"] == "purge"]) == 1
    await world.store.write(*job_statements(old.call_id, "/var/spool/asterisk/recordings/other.wav", NOW))
    assert (await world.recording(old.call_id))[0] == PURGED


async def test_clearing_a_hold_and_a_shorter_plan_purge_at_the_next_run(world: World) -> None:
    held = await world.call(make("held", customer=X, started_at=NOW - 60 * DAY))
    b = await world.call(make("b", customer=Y, started_at=NOW - 3 * DAY, line="+74950000002"))
    await privacy.set_hold(world.store, held.call_id, by="admin", reason=None, now=NOW)
    assert (await purge(world.store, world.plans, world.directory, NOW)).purged == ()

    assert await privacy.clear_hold(world.store, held.call_id, by="admin", now=NOW)
    assert not await privacy.clear_hold(world.store, held.call_id, by="admin", now=NOW)
    # A reload: shop B now keeps 2 days.
    world.plans.replace(replace(PLAN, shops={"A": SHOP_A, "B": replace(SHOP_B, recordings_days=2)}), NOW)
    report = await purge(world.store, world.plans, world.directory, NOW)
    assert set(report.purged) == {held.call_id, b.call_id}
    assert report.by_shop == {"A": 1, "B": 1}
    actions = [e["action"] for e in await world.log()]
    assert actions == ["purge", "release", "hold"]  # newest first


async def test_a_large_backlog_is_purged_in_batches_each_with_its_log_row(world: World) -> None:
    for i in range(5):
        await world.call(make(f"old-{i}", customer=X, started_at=NOW - (40 + i) * DAY))
    commits = world.store.commits
    report = await purge(world.store, world.plans, world.directory, NOW, batch=2)
    assert len(report.purged) == 5 and report.files_deleted == 5
    assert world.store.commits - commits == 3
    entries = await world.log()
    assert [e["detail"]["purged"] for e in entries] == [1, 2, 2]
    assert sorted(c for e in entries for c in e["detail"]["call_ids"]) == [f"old-{i}" for i in range(5)]


async def test_watch_purges_at_start_and_then_every_interval(world: World) -> None:
    await world.call(make("old", customer=X, started_at=NOW - 40 * DAY))
    clock = [NOW]
    reports: list[Any] = []
    task = asyncio.create_task(watch(world.store, world.plans, world.directory, clock=lambda: clock[0],
                                     interval=0.01, on_purge=reports.append))
    try:
        while not reports:
            await asyncio.sleep(0.005)
        assert reports[0].purged == ("old",)
        later = await world.call(make("later", customer=X, started_at=NOW - 20 * DAY))
        clock[0] = NOW + 11 * DAY  # "later" is 31 days old now
        while not any(later.call_id in r.purged for r in reports):
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert not (world.directory / "later.ogg").exists()


# -- the number's data -----------------------------------------------------------------


@dataclass
class People:
    x_calls: list[str]
    y_calls: list[str]
    held: str


async def people(world: World) -> People:
    """X: a missed call (task), the call-back that reached him (via a webhook
    provider's call id, with the raw requests in the inbox), an answered call
    from another spelling with a note, an interaction and a listen, a click-to-
    call request, a call under legal hold. Y: a note, a recording, an open task."""
    s = world.store
    await world.contacts.put(X, {"name": "Иван Петров", "company": "ООО Ромашка"}, set_by="olga")
    await world.contacts.put(Y, {"name": "Мария Сидорова"}, set_by="olga")
    x1 = await world.call(make("x-missed", customer=X, started_at=NOW - 5 * DAY, kind="missed"))
    inbox = Inbox(s)
    ref = CallRef("zadarma", "main", "pbx-77")
    await inbox.put("zadarma", "main", "ev-1", "pbx-77",
                    Request("", "", f'{{"caller_id": "{X[1:]}", "event": "NOTIFY_END"}}'.encode(), NOW - 4 * DAY))
    x2 = make("zadarma:main:pbx-77", customer=X, started_at=NOW - 4 * DAY, kind="outbound", talk=120.0)
    world.gateway.carry_out(CallFinished(x2), also=inbox.done_statements(ref))
    await world.gateway.drain()
    x3 = await world.call(make("x-spelled", customer="8" + X_DIGITS, started_at=NOW - 3 * DAY,
                               line="+74950000002", talk=300.0))
    await s.set_result(x3.call_id, "sale", "Иван просил перезвонить жене на +79161110001", "anna", NOW - 3 * DAY)
    await Interactions(s).record(login="anna", kind="meeting", at=NOW - 3 * DAY, points=5.0, call_id=x3.call_id,
                                 note="встреча с Иваном", recorded_by="olga", request_id="m-1")
    await Recordings(s).listened(x3.call_id, "olga", at=NOW - 2 * DAY, size=100, range_=None, remote="10.0.0.9")
    await s.write((
        "INSERT INTO click_to_call (request_id, login, call_id, number, shop, caller_id, status, error_code, error, "
        "created_at) VALUES ('r-1', 'anna', 'c2c-1', ?, 'A', '+74950000001', 'failed', 'busy', ?, ?)",
        (X, f"PBX: {X} is busy", NOW - 2 * DAY)))
    x4 = await world.call(make("x-held", customer=X, started_at=NOW - 2 * DAY, talk=30.0))
    await privacy.set_hold(s, x4.call_id, by="admin", reason="dispute", now=NOW - DAY)

    y1 = await world.call(make("y-answered", customer=Y, started_at=NOW - 3 * DAY, line="+74950000003"))
    await s.set_result(y1.call_id, "callback", "Мария: перезвонить", "boris", NOW - 3 * DAY)
    y2 = await world.call(make("y-missed", customer=Y, started_at=NOW - DAY, kind="missed"))
    return People([x1.call_id, x2.call_id, x3.call_id, x4.call_id], [y1.call_id, y2.call_id], x4.call_id)


async def test_export_holds_exactly_the_numbers_data_and_files(world: World) -> None:
    p = await people(world)
    data = await privacy.export(world.store, world.directory, X, by="admin", now=NOW)
    archive = zipfile.ZipFile(io.BytesIO(data))
    files = {f"recordings/{c.replace(':', '_')}.ogg" for c in ("x-missed", "x-spelled", "x-held")}
    assert set(archive.namelist()) == {"export.json", "contact.json", "calls.json", "tasks.json",
                                       "click_to_call.json", "interactions.json", "listens.json", *files}
    for name in files:
        assert archive.read(name) == (world.directory / name.removeprefix("recordings/")).read_bytes()
    doc = {name: json.loads(archive.read(name)) for name in archive.namelist() if name.endswith(".json")}

    assert doc["export.json"]["phone"] == X and doc["export.json"]["exported_by"] == "admin"
    assert doc["contact.json"]["name"] == "Иван Петров" and doc["contact.json"]["phones"] == [X]
    calls = {c["call_id"]: c for c in doc["calls.json"]}
    assert list(calls) == p.x_calls  # oldest first, every spelling of his number
    assert calls["x-spelled"]["result"]["note"].startswith("Иван просил")
    assert calls["x-spelled"]["recording"]["in_zip"] == "recordings/x-spelled.ogg"
    assert calls["zadarma:main:pbx-77"]["recording"] is None
    assert calls["x-held"]["legal_hold"]["reason"] == "dispute"
    assert calls["x-missed"]["legs"][0]["number"] == X
    tasks = doc["tasks.json"]
    assert [t["status"] for t in tasks["tasks"]] == ["reached"]  # the missed call, closed by the call-back
    assert [a["call_id"] for a in tasks["attempts"]] == ["x-missed"]
    assert {r["call_id"] for r in tasks["reaches"]} >= {"zadarma:main:pbx-77"}
    assert [c["request_id"] for c in doc["click_to_call.json"]] == ["r-1"]
    assert [i["note"] for i in doc["interactions.json"] if i["note"]] == ["встреча с Иваном"]
    assert [(li["call_id"], li["login"]) for li in doc["listens.json"]] == [("x-spelled", "olga")]
    # Nothing of anybody else.
    text = " ".join(json.dumps(d, ensure_ascii=False) for d in doc.values())
    for other in (Y, Y[1:], "Мария", *p.y_calls):
        assert other not in text

    (entry,) = [e for e in await world.log() if e["action"] == "export"]
    assert (entry["subject"], entry["login"]) == (X, "admin")
    assert entry["detail"]["calls"] == 4 and entry["detail"]["recordings"] == 3


async def test_erase_removes_the_person_and_keeps_the_statistics(world: World) -> None:
    p = await people(world)
    s, d = world.store, world.directory
    stats = await statistics(s)
    y_before = {c: await call_row(s, c) for c in p.y_calls}
    y_mentions = await rows_mentioning(s, Y[1:])
    x_contact = await world.contacts.get(X)
    assert x_contact is not None

    report = await privacy.erase(s, d, X, "admin", NOW)
    erased = [c for c in p.x_calls if c != p.held]
    assert report.calls == tuple(erased)
    assert report.held == (p.held,) and report.failed == () and not report.complete
    assert (report.files_deleted, report.recordings, report.notes) == (2, 2, 1)
    assert (report.contact, report.other_phones) == (x_contact.contact_id, ())
    assert (report.tasks, report.click_to_call, report.webhook_requests) == (1, 1, 1)

    # The statistics are what they were.
    assert await statistics(s) == stats
    # Files gone, rows erased, except the call under hold.
    for call_id in ("x-missed", "x-spelled"):
        assert not (d / f"{call_id}.ogg").exists()
        assert await world.recording(call_id) == (ERASED, None, None, "erased")
    assert (d / "x-held.ogg").exists()
    assert (await world.recording("x-held"))[0] == READY
    # Calls anonymised with one pseudonym; result kept, note gone.
    for call_id in erased:
        row = await call_row(s, call_id)
        assert row[CUSTOMER] == report.pseudonym and row[3] is None  # caller_name
        assert report.pseudonym in (row[2], row[4])  # his side, caller or dialled
    assert (await s.call_summary("x-spelled")) is not None
    assert [tuple(r) for r in await s.read("SELECT result, note FROM call_results WHERE call_id = 'x-spelled'")] \
        == [("sale", None)]
    # The contact stays for the lead statistics, without the person.
    blank = await world.contacts.by_id(x_contact.contact_id)
    assert blank is not None and (blank.name, blank.company, blank.phones) == (None, None, ())
    assert await world.contacts.get(X) is None
    # Nothing anywhere still holds his number, except the held call and the log
    # (the number is the subject of the request, the proof it was honoured).
    left = await rows_mentioning(s, X_DIGITS)
    assert set(left) <= {"calls", "call_legs", "recordings", "privacy_log"}
    for table in ("calls", "call_legs", "recordings"):
        assert {row[0] for row in left[table]} == {p.held}, table
    assert all(row[3] in ("erase", "export") or "x-held" in row[4] for row in left["privacy_log"])
    for text in ("Иван", "Ромашка"):  # his name was in the contact, a note, an interaction
        assert await rows_mentioning(s, text) == {}, text
    inbox = await s.read("SELECT body, query, done FROM webhook_inbox")
    assert [tuple(r) for r in inbox] == [(b"", "", 1)]
    # An open task of his would be closed; his reached task got the pseudonym.
    tasks = await s.read("SELECT phone, status FROM callback_tasks ORDER BY task_id")
    assert (report.pseudonym, "reached") in [tuple(t) for t in tasks]
    # Y is untouched.
    assert {c: await call_row(s, c) for c in p.y_calls} == y_before
    assert await rows_mentioning(s, Y[1:]) == y_mentions
    assert (d / "y-answered.ogg").exists()
    y_contact = await world.contacts.get(Y)
    assert y_contact is not None and y_contact.name == "Мария Сидорова"

    entry = (await world.log())[0]
    assert (entry["action"], entry["subject"], entry["login"]) == ("erase", X, "admin")
    assert entry["detail"]["calls"] == 3 and entry["detail"]["held"] == 1
    assert "call_ids" not in entry["detail"]

    # Once the hold is lifted, erasing again takes the last call; then nothing is left.
    await privacy.clear_hold(s, p.held, by="admin", now=NOW)
    again = await privacy.erase(s, d, X, "admin", NOW + 1)
    assert again.calls == (p.held,) and again.complete
    assert again.pseudonym != report.pseudonym  # a new random salt each time
    assert not (d / "x-held.ogg").exists()
    assert set(await rows_mentioning(s, X_DIGITS)) == {"privacy_log"}
    # (The held call got a second pseudonym: it is alone in its group, so the counts hold.)
    assert await statistics(s) == stats


async def test_erase_closes_an_open_task_and_a_new_call_starts_afresh(world: World) -> None:
    await world.call(make("x-missed", customer=X, started_at=NOW - DAY, kind="missed"))
    assert [tuple(r) for r in await world.store.read("SELECT status FROM callback_tasks")] == [("open",)]
    report = await privacy.erase(world.store, world.directory, X, "olga", NOW)
    rows = await world.store.read("SELECT phone, status, close_reason, closed_by FROM callback_tasks")
    assert [tuple(r) for r in rows] == [(report.pseudonym, "closed", "erased", "olga")]
    # He calls again: a new lead and a new task, nothing tied to the erased ones.
    await world.call(make("x-new", customer=X, started_at=NOW + 60, kind="missed"))
    contact = await world.contacts.get(X)
    assert contact is not None and contact.contact_id != report.contact
    rows = await world.store.read("SELECT phone, status FROM callback_tasks ORDER BY task_id")
    assert [tuple(r) for r in rows] == [(report.pseudonym, "closed"), (X, "open")]


async def test_a_file_that_will_not_go_leaves_its_call_for_the_next_erasure(world: World) -> None:
    await world.call(make("x1", customer=X, started_at=NOW - DAY))
    await world.call(make("x2", customer=X, started_at=NOW - DAY + 60))
    # A directory where the file should be: unlink fails (not a missing file).
    (world.directory / "x2.ogg").unlink()
    (world.directory / "x2.ogg").mkdir()
    report = await privacy.erase(world.store, world.directory, X, "admin", NOW)
    assert report.calls == ("x1",) and report.failed == ("x2",) and not report.complete
    assert (await world.recording("x2"))[0] == READY
    assert (await call_row(world.store, "x2"))[CUSTOMER] == X
    (world.directory / "x2.ogg").rmdir()
    again = await privacy.erase(world.store, world.directory, X, "admin", NOW)
    assert again.calls == ("x2",) and again.complete


# -- HTTP ------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http
        self.cookies: dict[str, str] = {}

    async def login(self, login: str) -> None:
        async with self.http.post(f"{self.url}/api/login", json={"login": login, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            self.cookies[login] = r.cookies[gw.SESSION_COOKIE].value

    async def call(self, method: str, path: str, who: str | None,
                   **kwargs: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers["Cookie"] = f"{gw.SESSION_COOKIE}={self.cookies[who]}"
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs) as r:
            body = await r.json() if r.content_type == "application/json" else await r.read()
            return r.status, body, r


@pytest.fixture
async def api(world: World) -> AsyncIterator[Api]:
    app = web.Application(middlewares=[gw._session_middleware], client_max_size=256 * 1024)
    app[gw.HTTP] = HttpConfig(host="127.0.0.1", port=0)
    app[gw.SIGNER] = Signer(SECRET, time.time)
    app[gw.DIRECTORY] = DIRECTORY
    app[PRIVACY] = PrivacyDesk(world.store, world.plans, world.directory, region="RU", clock=lambda: NOW)
    app.router.add_post("/api/login", gw.login)
    add_routes(app)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            client = Api(url, http)
            for login in ("anna", "olga", "mark", "admin"):
                await client.login(login)
            yield client
    finally:
        await runner.cleanup()


async def test_http_routes_are_for_administrators_only(api: Api, world: World) -> None:
    await world.call(make("x1", customer=X, started_at=NOW - 40 * DAY))
    routes: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/calls/x1/legal-hold", {"json": {"hold": True, "reason": "claim"}}),
        ("GET", "/api/admin/personal-data/89161110001", {}),
        ("GET", "/api/admin/privacy-log", {}),
        ("DELETE", "/api/admin/personal-data/89161110001", {}),  # last: it erases
    ]
    for method, path, kwargs in routes:
        status, _, _ = await api.call(method, path, None, **kwargs)
        assert status == 401, (method, path)
        for who in ("anna", "olga", "mark"):
            status, body, _ = await api.call(method, path, who, **kwargs)
            assert status == 403, (method, path, who, body)
        status, body, _ = await api.call(method, path, "admin", **kwargs)
        assert status == 200, (method, path, body)
    # Refusals changed nothing: one hold, one export, one erasure (which left the held call).
    actions = [e["action"] for e in await world.log()]
    assert actions == ["erase", "export", "hold"]
    assert (await world.recording("x1"))[0] == READY


async def test_http_hold_export_erase_and_log(api: Api, world: World) -> None:
    await world.call(make("x1", customer=X, started_at=NOW - 40 * DAY))
    await world.call(make("x2", customer=X, started_at=NOW - 45 * DAY))

    status, body, _ = await api.call("POST", "/api/calls/x1/legal-hold", "admin",
                                     json={"hold": True, "reason": "claim 7"})
    assert status == 200
    assert body["legal_hold"]["reason"] == "claim 7" and body["legal_hold"]["set_by"] == "admin"
    assert body["recording"] == READY and body["retention_ends"] is not None
    status, body, _ = await api.call("POST", "/api/calls/nope/legal-hold", "admin", json={"hold": True})
    assert (status, body["error"]) == (404, "no_such_call")
    status, body, _ = await api.call("POST", "/api/calls/x1/legal-hold", "admin", json={"hold": "yes"})
    assert status == 400
    report = await purge(world.store, world.plans, world.directory, NOW)
    assert report.purged == ("x2",) and report.held == 1

    status, data, response = await api.call("GET", "/api/admin/personal-data/8 (916) 111-00-01", "admin")
    assert status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="personal-data-79161110001.zip"'
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert "recordings/x1.ogg" in archive.namelist() and "recordings/x2.ogg" not in archive.namelist()
    assert [c["call_id"] for c in json.loads(archive.read("calls.json"))] == ["x2", "x1"]

    status, body, _ = await api.call("GET", "/api/admin/personal-data/not-a-number", "admin")
    assert (status, body["error"]) == (400, "bad_phone")

    status, body, _ = await api.call("POST", "/api/calls/x1/legal-hold", "admin", json={"hold": False})
    assert status == 200 and body["legal_hold"] is None
    status, body, _ = await api.call("DELETE", f"/api/admin/personal-data/{X}", "admin")
    assert status == 200
    assert body["report"]["calls"] == 2 and body["report"]["complete"] is True
    assert not (world.directory / "x1.ogg").exists()

    status, body, _ = await api.call("GET", "/api/admin/privacy-log?limit=3", "admin")
    assert status == 200
    assert [(e["action"], e["login"]) for e in body["entries"]] == [
        ("erase", "admin"), ("release", "admin"), ("export", "admin")]
    status, page, _ = await api.call("GET", f"/api/admin/privacy-log?before={body['entries'][-1]['entry_id']}",
                                     "admin")
    assert [e["action"] for e in page["entries"]] == ["purge", "hold"]
    status, _, _ = await api.call("GET", "/api/admin/privacy-log?limit=x", "admin")
    assert status == 400
