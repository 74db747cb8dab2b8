"""Contacts, leads and assignment on a real SQLite store, fed by the records of
the real Asterisk 22 captures; CSV export/import; the HTTP routes with roles.

The HTTP tests run against an aiohttp app assembled here from gateway.web's
pieces (session middleware, /api/login, DIRECTORY, SIGNER, HTTP) plus
``contacts_api.add_routes``: the harness builds its app inside ``start_http``
with no way to add routes to it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crm_bridge.contacts import RULE, Contact, ContactError, Contacts, FieldError, e164
from crm_bridge.contacts import _MANAGER_FOR
from crm_bridge.store import Store
from gateway import web as gw
from gateway.auth import Signer
from gateway.card import phone as card_phone
from gateway.config import HttpConfig
from gateway.contacts_api import CONTACTS, MAX_IMPORT_BYTES, add_routes
from gateway.record import CallRecord
from gateway.replay import replay_capture
from gateway.users import Directory
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, SECRET, default_users
from tests.local_server import serve

# The reference number plan (config/example.toml): dialled number -> (shop, channel).
PLAN = {
    "+74950000001": ("A", "direct"),
    "+74950000002": ("B", "direct"),
    "+74950000003": ("A", "yandex"),
    "+74950000004": ("B", "avito"),
}
AGENTS = {"101": "anna", "102": "boris", "103": "vera"}
DIRECTORY = Directory(default_users())
manager_of: Callable[[str], str | None] = AGENTS.get

# caller -> (shop, channel, manager) after replaying every capture once.
EXPECTED = {
    "+79161110001": ("A", "direct", "anna"),  # a_answered
    "+79161110002": ("A", "direct", None),  # b_missed
    "+79161110003": ("A", "direct", None),  # c_abandoned_ringing
    "+79161110005": ("A", "yandex", "boris"),  # e_queue_answered
    "+79161110006": ("A", "yandex", None),  # f_queue_abandoned
    "+79161110007": (None, None, None),  # g_click_to_call: outbound, nobody in talked
    "+79161110008": ("A", "direct", "anna"),  # h1_blind_transfer: anna talked first, then boris
    "+79161110009": ("A", "direct", None),  # i_busy
    "+79161110013": ("B", "avito", "vera"),  # j_agi_route
    "+79161110012": ("B", "avito", "anna"),  # k_agi_fallback
    "+79161110014": ("A", "yandex", "anna"),  # resync_snapshot
}


def capture_records() -> list[CallRecord]:
    records = [r for path in sorted(CAPTURES.glob("*.jsonl")) for r in replay_capture(path)]
    assert records, "no captures"
    return records


def line_of(record: CallRecord) -> tuple[str | None, str | None]:
    """Shop and channel of a record by the reference plan (outbound calls: none here)."""
    if record.direction != "inbound" or record.dialled is None:
        return None, None
    return PLAN.get(record.dialled, (None, None))


def one(name: str) -> CallRecord:
    (record,) = replay_capture(CAPTURES / f"{name}.jsonl")
    return record


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "gw.sqlite3")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def contacts(store: Store) -> Contacts:
    return Contacts(store, region="RU", is_login=lambda login: DIRECTORY.by_login(login) is not None)


async def finish(contacts: Contacts, record: CallRecord) -> Contact | None:
    shop, channel = line_of(record)
    return await contacts.on_call_finished(record, shop=shop, channel=channel, manager_of=manager_of)


async def replay_all(contacts: Contacts) -> None:
    for record in capture_records():
        await finish(contacts, record)


async def all_contacts(store: Store) -> list[tuple[Any, ...]]:
    rows = await store.read("SELECT * FROM contacts ORDER BY contact_id")
    phones = await store.read("SELECT phone, contact_id FROM contact_phones ORDER BY phone")
    return [tuple(r) for r in rows] + [tuple(p) for p in phones]


# -- leads from the captures ------------------------------------------------------


async def test_replaying_the_captures_makes_one_lead_per_caller_with_his_line(
        store: Store, contacts: Contacts) -> None:
    await replay_all(contacts)
    rows = await store.read("SELECT count(*) FROM contacts")
    assert rows[0][0] == len(EXPECTED)
    for number, (shop, channel, manager) in EXPECTED.items():
        contact = await contacts.get(number)
        assert contact is not None, number
        assert contact.phones == (number,)
        assert contact.status == "lead"
        assert (contact.first_shop, contact.source_channel, contact.manager) == (shop, channel, manager), number
        assert contact.manager_set_by == (RULE if manager else None)
        assert contact.first_call_at == contact.last_call_at is not None
        assert not contact.vip and not contact.blacklisted and contact.name is None


async def test_internal_and_withheld_calls_have_no_customer(store: Store, contacts: Contacts) -> None:
    base = one("a_answered")
    assert await finish(contacts, replace(base, direction="internal", caller="101", dialled="102")) is None
    assert await finish(contacts, replace(base, caller=None)) is None
    assert await finish(contacts, replace(base, caller="anonymous")) is None
    assert await finish(contacts, replace(base, caller="104")) is None  # an extension, not a customer
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 0


async def test_a_second_call_only_moves_last_call_at(store: Store, contacts: Contacts) -> None:
    first = one("a_answered")
    created = await finish(contacts, first)
    assert created is not None
    # The same customer calls again an hour later on shop B's avito number; boris talks.
    again = replace(first, call_id="later.1", started_at=first.started_at + 3600, dialled="+74950000004",
                    talked=("102",), answered_by="102")
    after = await finish(contacts, again)
    assert after is not None
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 1
    assert after.contact_id == created.contact_id
    assert after.last_call_at == first.started_at + 3600
    assert after.first_call_at == first.started_at
    assert (after.first_shop, after.source_channel, after.manager) == ("A", "direct", "anna")


async def test_national_spelling_is_the_same_contact(store: Store, contacts: Contacts) -> None:
    first = one("b_missed")  # +79161110002
    await finish(contacts, first)
    again = replace(first, call_id="later.2", caller="89161110002", started_at=first.started_at + 60)
    contact = await finish(contacts, again)
    assert contact is not None and contact.phones == ("+79161110002",)
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 1
    assert await contacts.get("8 (916) 111-00-02") == contact
    assert await contacts.get("+79161110002") == contact


async def test_the_first_talker_of_a_transfer_is_the_manager(contacts: Contacts) -> None:
    record = one("h1_blind_transfer")
    assert record.talked == ("101", "102")
    contact = await finish(contacts, record)
    assert contact is not None and contact.manager == "anna" and contact.manager_set_by == RULE


async def test_the_rule_never_replaces_a_manager(contacts: Contacts) -> None:
    h1 = one("h1_blind_transfer")
    await finish(contacts, h1)
    later = replace(h1, call_id="later.3", started_at=h1.started_at + 600, talked=("103",), answered_by="103")
    contact = await finish(contacts, later)
    assert contact is not None and contact.manager == "anna"


async def test_a_manager_set_by_hand_is_not_overwritten_by_a_later_call(contacts: Contacts) -> None:
    missed = one("b_missed")  # a lead without a manager
    await finish(contacts, missed)
    by_hand = await contacts.put("+79161110002", {"manager": "vera"}, set_by="olga")
    assert (by_hand.manager, by_hand.manager_set_by) == ("vera", "olga")
    answered = replace(one("a_answered"), call_id="later.4", caller="+79161110002",
                       started_at=missed.started_at + 100)
    contact = await finish(contacts, answered)
    assert contact is not None and (contact.manager, contact.manager_set_by) == ("vera", "olga")
    assert contact.last_call_at == missed.started_at + 100


async def test_a_manager_set_before_the_first_call_is_kept(contacts: Contacts) -> None:
    await contacts.put("89161110001", {"manager": "boris", "name": "Пётр"}, set_by="olga")
    contact = await finish(contacts, one("a_answered"))  # anna talks
    assert contact is not None
    assert (contact.manager, contact.name, contact.source_channel, contact.first_shop) == ("boris", "Пётр", "direct", "A")


async def test_clearing_the_manager_hands_the_contact_back_to_the_rule(contacts: Contacts) -> None:
    record = one("a_answered")
    await finish(contacts, record)
    cleared = await contacts.put("+79161110001", {"manager": None}, set_by="olga")
    assert cleared.manager is None
    contact = await finish(contacts, replace(record, call_id="later.5", talked=("102",), answered_by="102",
                                              started_at=record.started_at + 10))
    assert contact is not None and contact.manager == "boris"


async def test_the_outbound_customer_becomes_a_lead_without_manager(contacts: Contacts) -> None:
    record = one("g_click_to_call")
    assert (record.direction, record.caller, record.dialled, record.talked) == ("outbound", "101", "+79161110007", ())
    contact = await finish(contacts, record)
    assert contact is not None
    assert (contact.phones, contact.status, contact.manager) == (("+79161110007",), "lead", None)
    with pytest.raises(FieldError) as error:
        await contacts.get("101")
    assert error.value.field == "phone"


async def test_an_earlier_call_seen_late_gives_the_source(contacts: Contacts) -> None:
    record = one("e_queue_answered")  # yandex, shop A
    later = replace(record, call_id="later.6", started_at=record.started_at + 3600, dialled="+74950000004")
    await finish(contacts, later)  # avito seen first...
    contact = await finish(contacts, record)  # ...then the earlier yandex call
    assert contact is not None
    assert (contact.source_channel, contact.first_shop) == ("yandex", "A")
    assert (contact.first_call_at, contact.last_call_at) == (record.started_at, record.started_at + 3600)


async def test_the_same_records_twice_change_nothing(store: Store, contacts: Contacts) -> None:
    await replay_all(contacts)
    before = await all_contacts(store)
    await replay_all(contacts)
    assert await all_contacts(store) == before


async def test_one_write_per_call(store: Store, contacts: Contacts) -> None:
    for record in capture_records():
        commits = store.commits
        await finish(contacts, record)
        assert store.commits == commits + 1, record.call_id


async def test_concurrent_calls_of_a_new_number_make_one_contact(store: Store, contacts: Contacts) -> None:
    record = one("a_answered")
    copies = [replace(record, call_id=f"c{i}", started_at=record.started_at + i,
                      caller="89161110001" if i % 2 else "+79161110001") for i in range(20)]
    await asyncio.gather(*(finish(contacts, r) for r in copies))
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 1
    contact = await contacts.get("+79161110001")
    assert contact is not None
    assert (contact.first_call_at, contact.last_call_at) == (record.started_at, record.started_at + 19)


async def test_contact_writes_share_batches_with_call_saves_and_fail_none(store: Store, contacts: Contacts) -> None:
    records = capture_records()
    await asyncio.gather(*(store.save_call(r) for r in records), *(finish(contacts, r) for r in records))
    assert len(await store.calls()) == len(records)
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == len(EXPECTED)
    # A bad phone or contact id is refused before it reaches a batch.
    with pytest.raises(ContactError):
        await contacts.add_phone(9999, "+79031234567")
    assert (await store.read("SELECT count(*) FROM contact_phones"))[0][0] == len(EXPECTED)


async def test_e164_agrees_with_the_caller_card() -> None:
    for raw in ["+79161110001", "89161110001", "9161110001", "8 (916) 111-00-01", "+442079460958", "101",
                "anonymous", "", "+7101"]:
        card = card_phone(raw, "RU")
        assert e164(raw, "RU") == (card.get("e164") if card else None), raw


# -- what the router asks ---------------------------------------------------------------


async def test_manager_for_and_last_seen(store: Store, contacts: Contacts) -> None:
    await replay_all(contacts)
    await contacts.put("+79161110013", {"vip": True, "name": "Иван"}, set_by="olga")
    await contacts.put("+79161110002", {"blacklisted": True}, set_by="admin")
    j = one("j_agi_route")
    found = await contacts.manager_for("89161110013")
    assert found is not None
    assert tuple(found) == ("vera", True, False, "Иван", j.started_at)
    assert found.manager == "vera" and found.vip
    blocked = await contacts.manager_for("+79161110002")
    assert blocked is not None and blocked.blacklisted and blocked.manager is None
    assert await contacts.manager_for("+79990000000") is None
    assert await contacts.manager_for("anonymous") is None
    assert await contacts.last_seen("+79161110013") == j.started_at
    assert await contacts.last_seen("+79990000000") is None
    # One query, on indexes only.
    plan = " | ".join(str(row[3]) for row in await store.read(f"EXPLAIN QUERY PLAN {_MANAGER_FOR}", ("+7",)))
    assert "SCAN" not in plan and "SEARCH" in plan, plan


async def test_last_seen_is_per_contact_across_his_phones(contacts: Contacts) -> None:
    record = one("a_answered")
    contact = await finish(contacts, record)
    assert contact is not None
    await contacts.add_phone(contact.contact_id, "8 903 123-45-67")
    assert await contacts.last_seen("+79031234567") == record.started_at


# -- changes by people --------------------------------------------------------------------


async def test_put_creates_and_updates(contacts: Contacts) -> None:
    created = await contacts.put("+79031234567", {"name": "Анна-Мария", "company": "ООО «Ромашка»", "vip": True},
                                 set_by="olga")
    assert (created.name, created.company, created.vip, created.status, created.manager) == (
        "Анна-Мария", "ООО «Ромашка»", True, "lead", None)
    assert created.first_call_at is None and created.source_channel is None
    updated = await contacts.put("89031234567", {"status": "customer", "vip": False, "company": None},
                                 set_by="admin")
    assert updated.contact_id == created.contact_id
    assert (updated.name, updated.company, updated.vip, updated.status) == ("Анна-Мария", None, False, "customer")
    assert await contacts.by_id(created.contact_id) == updated


@pytest.mark.parametrize(("fields", "field"), [
    ({"colour": "red"}, "colour"),
    ({"vip": "yes"}, "vip"),
    ({"blacklisted": 1}, "blacklisted"),
    ({"name": 5}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"name": "a\x00b"}, "name"),
    ({"manager": "nobody"}, "manager"),
    ({"status": ""}, "status"),
    ({"status": "Клиент"}, "status"),
    ({"status": None}, "status"),
])
async def test_put_refuses_bad_fields_by_name(store: Store, contacts: Contacts, fields: dict[str, Any],
                                             field: str) -> None:
    with pytest.raises(FieldError) as error:
        await contacts.put("+79031234567", fields, set_by="olga")
    assert error.value.field == field
    assert field in str(error.value)
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 0


async def test_put_refuses_a_non_number(contacts: Contacts) -> None:
    with pytest.raises(FieldError) as error:
        await contacts.put("hello", {"name": "x"}, set_by="olga")
    assert error.value.field == "phone"


async def test_add_phone_refuses_someone_elses_phone(contacts: Contacts) -> None:
    a = await contacts.put("+79031234567", {"name": "A"}, set_by="olga")
    b = await contacts.put("+79031234568", {"name": "B"}, set_by="olga")
    both = await contacts.add_phone(a.contact_id, "+79031234569")
    assert both.phones == ("+79031234567", "+79031234569")
    assert await contacts.add_phone(a.contact_id, "89031234569") == both  # already his: nothing to do
    with pytest.raises(FieldError, match="already belongs to contact"):
        await contacts.add_phone(b.contact_id, "+79031234569")


# -- CSV ----------------------------------------------------------------------------------


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


EDITABLE = ("phone", "name", "company", "vip", "blacklisted", "manager", "status")


async def test_csv_round_trip_keeps_cyrillic_and_every_field(tmp_path: Path, store: Store,
                                                             contacts: Contacts) -> None:
    await replay_all(contacts)
    h1 = await contacts.get("+79161110008")
    assert h1 is not None
    await contacts.add_phone(h1.contact_id, "+79031234567")
    await contacts.put("+79161110008", {"name": "Иван Петров", "company": "ООО «Ромашка», филиал", "vip": True,
                                        "status": "customer"}, set_by="olga")
    await contacts.put("+79161110002", {"name": "=HYPERLINK(\"http://x\")", "blacklisted": True,
                                        "manager": "boris"}, set_by="olga")
    await contacts.put("+79031110000", {"name": "Жанна «Ёлка»\nвторая строка"}, set_by="olga")
    text = await contacts.export_csv()
    rows = parse_csv(text)
    assert len(rows) == len(EXPECTED) + 1
    ivan = next(r for r in rows if r["name"] == "Иван Петров")
    assert ivan["phone"] == "+79161110008;+79031234567"
    assert (ivan["company"], ivan["vip"], ivan["manager"], ivan["status"]) == (
        "ООО «Ромашка», филиал", "1", "anna", "customer")
    assert ivan["source_channel"] == "direct" and ivan["first_shop"] == "A"
    # A name that a spreadsheet would run as a formula is exported quoted.
    assert any(r["name"] == "'=HYPERLINK(\"http://x\")" for r in rows)

    # Into an empty store: the same contacts, field for field.
    other_store = await Store.open(tmp_path / "other.sqlite3")
    try:
        other = Contacts(other_store)
        report = await other.import_csv(text, set_by="admin")
        assert (report.rows, report.created, report.updated, report.errors) == (len(rows), len(rows), 0, ())
        again = parse_csv(await other.export_csv())
        assert [{k: r[k] for k in EDITABLE} for r in again] == [{k: r[k] for k in EDITABLE} for r in rows]
        formula = await other.get("+79161110002")
        assert formula is not None and formula.name == "=HYPERLINK(\"http://x\")" and formula.blacklisted
        assert (formula.manager, formula.manager_set_by) == ("boris", "admin")
    finally:
        await other_store.close()

    # Back into the same store: every row updates, nothing changes.
    before = [{k: r[k] for k in EDITABLE} for r in rows]
    report = await contacts.import_csv("\ufeff" + text, set_by="admin")
    assert (report.created, report.updated, report.error_count) == (0, len(rows), 0)
    assert [{k: r[k] for k in EDITABLE} for r in parse_csv(await contacts.export_csv())] == before


async def test_import_reports_bad_rows_and_keeps_the_good_ones(contacts: Contacts) -> None:
    await contacts.put("+79031110001", {"name": "Первый"}, set_by="olga")
    await contacts.put("+79031110002", {"name": "Второй"}, set_by="olga")
    text = (
        "Phone,Name,VIP,Manager,Status\n"  # row 1
        "+79031110003,Новый,да,anna,lead\n"  # 2: created
        "not a phone,Плохой,0,,\n"  # 3: bad phone
        "89031110001,Первый изменён,maybe,,\n"  # 4: bad vip
        "\n"  # 5: blank, skipped
        "+79031110004,Без менеджера,0,nobody,\n"  # 6: unknown login
        "+79031110001;+79031110002,Слияние,0,,\n"  # 7: two contacts: refused
        "+79031110005,Лишняя,0,,,ячейка\n"  # 8: too many cells
        "\"+79031110006, 89031110007 \",Пара,нет,,client\n"  # 9: created with two phones
        "89031110007,Тот же,1,boris,\n"  # 10: the contact of row 9, updated
        "89031110001,Первый изменён,0,,Клиент\n"  # 11: bad status
        ",Нет телефона,0,,\n"  # 12: no phone
        "+79031110002,Второй изменён,1,,\n"  # 13: updated
    )
    report = await contacts.import_csv(text, set_by="admin")
    assert [(e.row, e.field) for e in report.errors] == [
        (3, "phone"), (4, "vip"), (6, "manager"), (7, "phone"), (8, "row"), (11, "status"), (12, "phone")]
    assert "different contacts" in report.errors[3].message
    assert (report.rows, report.created, report.updated, report.error_count) == (11, 2, 2, 7)
    new = await contacts.get("+79031110003")
    assert new is not None and (new.name, new.vip, new.manager, new.manager_set_by) == ("Новый", True, "anna", "admin")
    pair = await contacts.get("+79031110007")
    assert pair is not None
    assert (pair.phones, pair.name, pair.vip, pair.status, pair.manager) == (
        ("+79031110006", "+79031110007"), "Тот же", True, "client", "boris")
    first = await contacts.get("+79031110001")
    assert first is not None and first.name == "Первый"  # its rows were refused
    second = await contacts.get("+79031110002")
    assert second is not None and (second.name, second.vip) == ("Второй изменён", True)
    assert await contacts.get("+79031110004") is None
    assert report.to_json()["errors"][0] == {"row": 3, "field": "phone", "message": "not a phone number: 'not a phone'"}


async def test_import_reads_semicolons_and_leaves_absent_columns(contacts: Contacts) -> None:
    await contacts.put("+79031110001", {"name": "Имя", "company": "Фирма", "manager": "anna"}, set_by="olga")
    report = await contacts.import_csv("phone;company\r\n89031110001;\r\n", set_by="admin")
    assert (report.updated, report.error_count) == (1, 0)
    contact = await contacts.get("+79031110001")
    # An empty cell clears its field; a column that is absent leaves it alone.
    assert contact is not None and (contact.name, contact.company, contact.manager) == ("Имя", None, "anna")


@pytest.mark.parametrize(("text", "message"), [
    ("name,company\nx,y\n", "header with a 'phone' column"),
    ("phone,colour\n+79031110001,red\n", "unknown column 'colour'"),
    ("phone,name,Name\n+79031110001,a,b\n", "appears twice"),
    ("", "header"),
])
async def test_import_refuses_a_bad_header(store: Store, contacts: Contacts, text: str, message: str) -> None:
    with pytest.raises(ContactError, match=message):
        await contacts.import_csv(text, set_by="admin")
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 0


async def test_import_of_many_rows_is_written_in_chunks(store: Store, contacts: Contacts) -> None:
    lines = ["phone,name"] + [f"+7903{i:07d},Клиент {i}" for i in range(1050)]
    commits = store.commits
    report = await contacts.import_csv("\n".join(lines), set_by="admin")
    assert (report.created, report.error_count) == (1050, 0)
    assert store.commits - commits == 11  # 100 rows a write
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 1050


# -- HTTP -----------------------------------------------------------------------------------


class Api:
    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url, self.http = url, http
        self.cookies: dict[str, str] = {}

    async def login(self, login: str) -> str:
        async with self.http.post(f"{self.url}/api/login", json={"login": login, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            self.cookies[login] = r.cookies[gw.SESSION_COOKIE].value
        return login

    async def call(self, method: str, path: str, who: str | None, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers["Cookie"] = f"{gw.SESSION_COOKIE}={self.cookies[who]}"
        async with self.http.request(method, f"{self.url}{path}", headers=headers, **kwargs) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.read()


@pytest.fixture
async def api(store: Store, contacts: Contacts) -> AsyncIterator[Api]:
    # gateway.web's pieces that contacts_api needs, assembled by hand (see the docstring).
    app = web.Application(middlewares=[gw._session_middleware], client_max_size=256 * 1024)
    app[gw.HTTP] = HttpConfig(host="127.0.0.1", port=0)
    app[gw.SIGNER] = Signer(SECRET, time.time)
    app[gw.DIRECTORY] = DIRECTORY
    app[CONTACTS] = contacts
    app.router.add_post("/api/login", gw.login)
    add_routes(app)
    runner, url = await serve(app)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            client = Api(url, http)
            for login in ("anna", "olga", "admin", "mark"):
                await client.login(login)
            yield client
    finally:
        await runner.cleanup()


async def test_http_roles(api: Api, contacts: Contacts) -> None:
    await finish(contacts, one("a_answered"))
    path = "/api/contacts/+79161110001"
    csv_body: dict[str, Any] = {"data": b"phone\n+79031110001\n", "headers": {"Content-Type": "text/csv"}}
    routes: list[tuple[str, str, dict[str, Any], set[str]]] = [
        ("GET", path, {}, {"anna", "olga", "admin"}),
        ("PUT", path, {"json": {"vip": True}}, {"olga", "admin"}),
        ("GET", "/api/contacts.csv", {}, {"olga", "admin"}),
        ("POST", "/api/contacts/import", csv_body, {"admin"}),
    ]
    for method, route, kwargs, allowed in routes:
        status, _ = await api.call(method, route, None, **kwargs)
        assert status == 401, (method, route)
        for who in ("anna", "olga", "admin", "mark"):
            status, body = await api.call(method, route, who, **kwargs)
            assert status == (200 if who in allowed else 403), (method, route, who, body)


async def test_http_get_and_put(api: Api, contacts: Contacts) -> None:
    await finish(contacts, one("h1_blind_transfer"))
    status, body = await api.call("GET", "/api/contacts/89161110008", "anna")
    assert status == 200
    assert body["contact"]["phones"] == ["+79161110008"]
    assert (body["contact"]["manager"], body["contact"]["source_channel"], body["contact"]["status"]) == (
        "anna", "direct", "lead")
    status, body = await api.call("PUT", "/api/contacts/+79161110008", "olga",
                                  json={"manager": "boris", "name": "Сергей", "vip": True})
    assert status == 200, body
    assert (body["contact"]["manager"], body["contact"]["manager_set_by"], body["contact"]["name"]) == (
        "boris", "olga", "Сергей")
    # PUT on a new number creates the contact.
    status, body = await api.call("PUT", "/api/contacts/%2B79031234567", "admin", json={"company": "ИП Ёж"})
    assert status == 200 and body["contact"]["phones"] == ["+79031234567"]
    status, body = await api.call("GET", "/api/contacts/+79990000000", "olga")
    assert (status, body["error"]) == (404, "no_such_contact")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/api/contacts/+79161110001", {"vip": "yes"}, "vip"),
    ("/api/contacts/+79161110001", {"colour": "red"}, "colour"),
    ("/api/contacts/+79161110001", {"manager": "nobody"}, "manager"),
    ("/api/contacts/not-a-phone", {"name": "x"}, "phone"),
])
async def test_http_put_names_the_bad_field(api: Api, store: Store, path: str, body: dict[str, Any],
                                            field: str) -> None:
    status, answer = await api.call("PUT", path, "olga", json=body)
    assert status == 400
    assert (answer["error"], answer["field"]) == ("bad_field", field)
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 0


async def test_http_put_wants_json(api: Api) -> None:
    status, body = await api.call("PUT", "/api/contacts/+79161110001", "olga", data=b"name=x",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (status, body["error"]) == (415, "json_required")
    status, body = await api.call("PUT", "/api/contacts/+79161110001", "olga", data=b"[1]",
                                  headers={"Content-Type": "application/json"})
    assert (status, body["error"]) == (400, "bad_json")


async def test_http_csv_export_and_import(api: Api, contacts: Contacts) -> None:
    await contacts.put("+79031110001", {"name": "Ирина Ёлкина", "company": "ООО «Ромашка»"}, set_by="olga")
    status, raw = await api.call("GET", "/api/contacts.csv", "olga")
    assert status == 200
    assert raw.startswith("\ufeff".encode())
    text = raw.decode("utf-8-sig")
    assert "Ирина Ёлкина" in text and text.startswith("phone,name,company,vip,blacklisted,manager,status")

    upload = text.replace("Ирина Ёлкина", "Ирина Ёлкина-Смирнова") + "+79031110002,Олег,,1,0,vera,lead,,,,\r\n"
    status, body = await api.call("POST", "/api/contacts/import", "admin", data=upload.encode(),
                                  headers={"Content-Type": "text/csv; charset=utf-8"})
    assert status == 200, body
    assert body["report"] == {"rows": 2, "created": 1, "updated": 1, "error_count": 0, "errors": []}
    contact = await contacts.get("+79031110001")
    assert contact is not None and contact.name == "Ирина Ёлкина-Смирнова"

    # A spreadsheet saved in Windows-1251 says so in the charset.
    status, body = await api.call("POST", "/api/contacts/import", "admin",
                                  data="phone;name\n+79031110003;Фёдор\n".encode("cp1251"),
                                  headers={"Content-Type": "text/csv; charset=windows-1251"})
    assert status == 200 and body["report"]["created"] == 1
    fedor = await contacts.get("+79031110003")
    assert fedor is not None and fedor.name == "Фёдор"


async def test_http_import_refuses_bad_bodies(api: Api, store: Store) -> None:
    async def post(data: Any, content_type: str) -> tuple[int, Any]:
        return await api.call("POST", "/api/contacts/import", "admin", data=data,
                              headers={"Content-Type": content_type})

    status, body = await post(b"phone\n+79031110001\n", "text/plain")
    assert (status, body["error"]) == (415, "csv_required")
    status, body = await post("phone,name\n+79031110001,Фёдор\n".encode("cp1251"), "text/csv")
    assert (status, body["error"]) == (400, "bad_encoding")
    status, body = await post(b"phone\n+79031110001\n", "text/csv; charset=no-such-charset")
    assert (status, body["error"]) == (400, "bad_charset")
    status, body = await post(b"name\nx\n", "text/csv")
    assert (status, body["error"]) == (400, "bad_csv") and "phone" in body["message"]

    big = b"phone,name\n" + b"+79031110001,x\n" * (MAX_IMPORT_BYTES // 15 + 1)
    assert len(big) > MAX_IMPORT_BYTES
    status, body = await post(io.BytesIO(big), "text/csv")
    assert (status, body["error"]) == (413, "too_large")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: cut off while reading
        for start in range(0, len(big), 1 << 16):
            yield big[start:start + (1 << 16)]

    status, body = await post(chunked(), "text/csv")
    assert (status, body["error"]) == (413, "too_large")
    assert (await store.read("SELECT count(*) FROM contacts"))[0][0] == 0


async def test_a_first_call_without_a_shop_lets_a_later_call_give_shop_and_channel(contacts: Contacts) -> None:
    # He was first called from a desk phone (no click-to-call: no shop), then he called shop B's avito line.
    base = one("a_answered")
    cold = replace(base, call_id="o1", direction="outbound", caller="101", dialled="+79160000002",
                   started_at=base.started_at)
    later = replace(base, call_id="i1", caller="+79160000002", started_at=base.started_at + 86400)
    await contacts.on_call_finished(cold, shop=None, channel=None, manager_of=manager_of)
    contact = await contacts.on_call_finished(later, shop="B", channel="avito", manager_of=manager_of)
    assert contact is not None
    assert (contact.first_shop, contact.source_channel, contact.first_call_at) == ("B", "avito", base.started_at)
