"""The 1C:Enterprise OData sink through the whole gateway: real captures over
the AMI server, the outbox on a SQLite file, and a local aiohttp server
standing in for 1C's standard OData interface (HTTP Basic auth, entity sets in
memory that know their fields, the ``$filter`` forms the sink sends, 201 with
the created object's Ref_Key, errors as ``odata.error``).

Deliveries run one round at a time (``bridge.round``) by a FakeClock.
"""

from __future__ import annotations

import base64
import re
import tomllib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web

from crm_bridge.bridge_config import CrmConfig, parse_crm
from crm_bridge.outbox import Entry, Outbox
from crm_bridge.sinks import SinkContext
from crm_bridge.sinks.onec import build
from crm_bridge.store import Store
from gateway.numberplan import PlanBook
from tests.harness import Harness
from tests.test_callbacks_live import jsonl_stream
from tests.test_hub import FakeClock
from tests.test_numberplan import example_plan
from tests.local_server import serve

USER, PASSWORD = "Оператор CTI", "пароль:'секрет'"  # 1C user names are often Cyrillic
ENV = {"ONEC_PASSWORD": PASSWORD}
ANNA, VERA = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
DOC, PARTNERS = "Document_ТелефонныйЗвонок", "Catalog_Партнеры"
EVENT, COUNTERPARTIES = "Document_Событие", "Catalog_Контрагенты"

# The fields each entity set of the stand-in has: a POST naming another is refused as 1C does.
SCHEMA = {
    DOC: {"Ref_Key", "Date", "Входящий", "АбонентКакСвязаться", "АбонентПредставление", "АбонентКонтакт",
          "АбонентКонтакт_Type", "Тема", "Описание", "Комментарий", "Ответственный_Key"},
    PARTNERS: {"Ref_Key", "Description", "Клиент", "КонтактнаяИнформация"},
    # Another configuration (in the manner of 1C:УНФ): an "event" document and counterparties.
    EVENT: {"Ref_Key", "ТипСобытия", "ДатаНачала", "ДатаОкончания", "Тема", "Содержание", "Продолжительность",
            "Контрагент_Key", "Исполнитель_Key", "ВнешнийИдентификатор"},
    COUNTERPARTIES: {"Ref_Key", "Description", "Телефон"},
}
_LITERAL = r"'((?:[^']|'')*)'"
EQ = re.compile(rf"(\w+) eq {_LITERAL}")
ANY = re.compile(rf"(\w+)/any\((\w+): \2/(\w+) eq {_LITERAL}\)")


def odata_error(status: int, message: str) -> web.Response:
    return web.json_response({"odata.error": {"code": "-1", "message": {"lang": "ru", "value": message}}},
                             status=status)


class OData:
    """1C's standard.odata as far as the sink uses it; records what it was asked."""

    def __init__(self) -> None:
        self.sets: dict[str, list[dict[str, Any]]] = {name: [] for name in SCHEMA}
        self.seen: list[tuple[str, str, str]] = []  # (method, entity set, $filter)
        self.store_then_fail: set[str] = set()  # the next POST to these is stored, then answered 500
        self.url = ""
        self._runner: web.AppRunner | None = None

    def add(self, entity_set: str, **fields: Any) -> str:
        ref = str(uuid.uuid4())
        self.sets[entity_set].append({"Ref_Key": ref, **fields})
        return ref

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/trade/odata/standard.odata/{set}", self.handle)
        self._runner, root = await serve(app)
        self.url = root + "/trade/odata/standard.odata"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="1C"'})
        # A '+' or a space in a query reads as a space: the sink must send them encoded.
        raw_query = urlsplit(request.raw_path).query
        assert raw_query.isascii() and "+" not in raw_query and " " not in raw_query, raw_query
        query = dict(parse_qsl(raw_query))
        assert query.get("$format") == "json"
        entity_set = request.match_info["set"]
        if entity_set not in self.sets:
            return odata_error(404, f"Не найден ресурс: {entity_set}")
        if request.method == "GET":
            return self.read(entity_set, query)
        body = await request.json()
        self.seen.append(("POST", entity_set, ""))
        unknown = sorted(set(body) - SCHEMA[entity_set])
        if unknown:
            return odata_error(400, f"Неизвестное свойство: {unknown[0]}")
        ref = self.add(entity_set, **body)
        if entity_set in self.store_then_fail:
            self.store_then_fail.discard(entity_set)
            return odata_error(500, "Ошибка при выполнении операции: превышено время ожидания")
        return web.json_response({"odata.metadata": f"{self.url}/$metadata#{entity_set}/@Element",
                                  **self.sets[entity_set][-1], "Ref_Key": ref}, status=201)

    def read(self, entity_set: str, query: dict[str, str]) -> web.Response:
        odata_filter = query["$filter"]
        self.seen.append(("GET", entity_set, odata_filter))
        if eq := EQ.fullmatch(odata_filter):
            name, value = eq.group(1), eq.group(2).replace("''", "'")
            rows = [row for row in self.sets[entity_set] if row.get(name) == value]
        elif any_ := ANY.fullmatch(odata_filter):
            section, name, value = any_.group(1), any_.group(3), any_.group(4).replace("''", "'")
            rows = [row for row in self.sets[entity_set] if any(line.get(name) == value
                                                                 for line in row.get(section, []))]
        else:
            return odata_error(400, f"Синтаксическая ошибка в $filter: {odata_filter}")
        rows = rows[:int(query.get("$top", len(rows)))]
        if query.get("$select"):
            rows = [{k: row[k] for k in query["$select"].split(",")} for row in rows]
        return web.json_response({"odata.metadata": f"{self.url}/$metadata#{entity_set}", "value": rows})

    def posts(self) -> list[str]:
        return [entity_set for method, entity_set, _ in self.seen if method == "POST"]


@pytest.fixture
async def odata() -> AsyncIterator[OData]:
    server = OData()
    await server.start()
    yield server
    await server.close()


def crm_config(tmp_path: Path, url: str, extra: str = "") -> CrmConfig:
    text = f"""
[crm]
public_base_url = "https://cti.example.ru"
[[crm.onec]]
name = "erp1c"
base_url = "{url}/"
username = "{USER}"
password_env = "ONEC_PASSWORD"
{extra}
"""
    return parse_crm(tomllib.loads(text)["crm"], "gw.toml", ENV, tmp_path)


@asynccontextmanager
async def gateway(tmp_path: Path, crm: CrmConfig) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=FakeClock(),
                       deliver_crm=False) as h:
        yield h


async def call(h: Harness, capture: str) -> str:
    """Play a capture and deliver once; the call id."""
    await h.ami.send_raw(jsonl_stream(capture))
    (record,) = await h.wait_records(1)
    await h.gateway.drain()
    assert [e.event for e in await h.bridge.round("erp1c")] == ["call.finished"]
    return record.call_id


async def outbox(h: Harness) -> list[tuple[str, int, str | None]]:
    rows = await h.store.read("SELECT state, attempts, last_error FROM outbox WHERE sink = 'erp1c'")
    return [(str(state), int(attempts), error) for state, attempts, error in rows]


async def test_an_answered_call_of_a_known_partner_is_one_phone_call_document(tmp_path: Path,
                                                                            odata: OData) -> None:
    other = odata.add(PARTNERS, Description="Someone else",
                      КонтактнаяИнформация=[{"Тип": "Телефон", "НомерТелефона": "79161119999"}])
    ivan = odata.add(PARTNERS, Description="Иван Петров",
                     КонтактнаяИнформация=[{"Тип": "Адрес", "НомерТелефона": ""},
                                           {"Тип": "Телефон", "НомерТелефона": "79161110001"}])
    crm = crm_config(tmp_path, odata.url, f'users = {{ anna = "{ANNA}", boris = "{VERA}" }}')
    async with gateway(tmp_path, crm) as h:
        call_id = await call(h, "a_answered")
        assert await outbox(h) == [("done", 1, None)]
        (doc,) = odata.sets[DOC]
        assert await h.bridge.outbox.link("erp1c", call_id) == (doc["Ref_Key"], {})
    assert odata.seen == [
        ("GET", DOC, f"Комментарий eq 'cti:{call_id}'"),
        ("GET", PARTNERS, "КонтактнаяИнформация/any(d: d/НомерТелефона eq '79161110001')"),
        ("POST", DOC, ""),
    ]
    summary = doc.pop("Описание")
    assert doc == {
        "Ref_Key": doc["Ref_Key"],
        "Date": "2026-11-27T02:39:08",  # 23:39:08.724Z, in shop A's zone (Moscow): 1C dates are local
        "Входящий": True,
        "АбонентКакСвязаться": "+79161110001",
        "АбонентПредставление": "Ivan Petrov",
        "Тема": "Звонок отвечен: Ivan Petrov",
        "Комментарий": f"cti:{call_id}",
        "АбонентКонтакт": ivan,
        "АбонентКонтакт_Type": f"StandardODATA.{PARTNERS}",
        "Ответственный_Key": ANNA,
    }
    assert summary == ("Входящий звонок, +79161110001 (Ivan Petrov): отвечен, сотрудник anna; ожидание 2 с, "
                       "разговор 3 с; линия A direct. "
                       f"Запись: https://cti.example.ru/calls/{call_id}/recording")
    assert [p["Ref_Key"] for p in odata.sets[PARTNERS]] == [other, ivan]  # nobody created


async def test_a_missed_call_of_an_unknown_number_creates_the_partner_first(tmp_path: Path, odata: OData) -> None:
    crm = crm_config(tmp_path, odata.url, f'contact_create = true\nusers = {{ anna = "{ANNA}" }}')
    async with gateway(tmp_path, crm) as h:
        call_id = await call(h, "b_missed")
        assert await outbox(h) == [("done", 1, None)]
    assert odata.posts() == [PARTNERS, DOC]
    (partner,) = odata.sets[PARTNERS]
    assert partner == {"Ref_Key": partner["Ref_Key"], "Description": "Missed Caller", "КонтактнаяИнформация": [
        {"Тип": "Телефон", "Представление": "+79161110002", "НомерТелефона": "79161110002"}]}
    (doc,) = odata.sets[DOC]
    assert doc["АбонентКонтакт"] == partner["Ref_Key"]
    assert doc["Тема"] == "Звонок пропущен: Missed Caller" and doc["Входящий"] is True
    assert doc["Комментарий"] == f"cti:{call_id}"
    assert "Ответственный_Key" not in doc  # nobody answered: 1C keeps its own default


ANOTHER_CONFIGURATION = f"""
document = "{EVENT}"
call_id_field = "ВнешнийИдентификатор"
call_id_format = "{{call_id}}"
contact_set = "{COUNTERPARTIES}"
contact_lookup = "Телефон eq '{{phone}}'"
contact_field = "Контрагент_Key"
contact_type_field = ""
agent_field = "Исполнитель_Key"
users = {{ vera = "{VERA.upper()}" }}
[crm.onec.fields]
"ТипСобытия" = "ТелефонныйЗвонок"
"ДатаНачала" = "{{started_local}}"
"ДатаОкончания" = "{{ended_local}}"
"Тема" = "{{shop}}/{{channel}}: {{outcome}}, входящий={{inbound}}"
"Продолжительность" = "{{talk_seconds}}"
"""


async def test_another_configuration_maps_to_its_own_document_and_fields(tmp_path: Path, odata: OData) -> None:
    client = odata.add(COUNTERPARTIES, Description="ООО Ромашка", Телефон="+79161110013")
    async with gateway(tmp_path, crm_config(tmp_path, odata.url, ANOTHER_CONFIGURATION)) as h:
        call_id = await call(h, "j_agi_route")
        (record,) = h.records
        assert await outbox(h) == [("done", 1, None)]
    # E.164 with its '+' inside the filter: the stand-in refuses a raw '+' (a space to a server).
    assert ("GET", COUNTERPARTIES, "Телефон eq '+79161110013'") in odata.seen
    assert odata.sets[DOC] == [] and odata.sets[PARTNERS] == []
    (event,) = odata.sets[EVENT]
    assert event == {
        "Ref_Key": event["Ref_Key"],
        "ТипСобытия": "ТелефонныйЗвонок",
        "ДатаНачала": "2026-11-27T04:42:07",  # 23:42:07Z in shop B's zone, Yekaterinburg (UTC+5)
        "ДатаОкончания": "2026-11-27T04:42:12",
        "Тема": "B/avito: answered, входящий=true",
        "Продолжительность": round(record.talk_seconds),
        "ВнешнийИдентификатор": call_id,
        "Контрагент_Key": client,
        "Исполнитель_Key": VERA,
    }


async def test_a_retry_after_a_lost_answer_finds_the_document_and_creates_nothing(tmp_path: Path,
                                                                               odata: OData) -> None:
    # 1C stored the document, then the answer was a 500: the retry must look it up by
    # the call id (quotes and Cyrillic in the value are quoted and encoded).
    odata.store_then_fail.add(DOC)
    crm = crm_config(tmp_path, odata.url, "contact_create = true\ncall_id_format = \"звонок 'cti' {call_id}\"")
    clock = FakeClock()
    async with Harness(tmp_path, plans=PlanBook(example_plan()), crm=crm, clock=clock, deliver_crm=False) as h:
        call_id = await call(h, "b_missed")
        ((state, attempts, error),) = await outbox(h)
        assert (state, attempts) == ("pending", 1) and error is not None and "HTTP 500" in error
        assert odata.posts() == [PARTNERS, DOC]
        odata.seen.clear()
        clock.now += 3600
        assert len(await h.bridge.round("erp1c")) == 1
        assert await outbox(h) == [("done", 2, None)]
        (doc,) = odata.sets[DOC]
        assert await h.bridge.outbox.link("erp1c", call_id) == (doc["Ref_Key"], {})
    assert odata.seen == [("GET", DOC, f"Комментарий eq 'звонок ''cti'' {call_id}'")]
    assert doc["Комментарий"] == f"звонок 'cti' {call_id}"
    assert len(odata.sets[PARTNERS]) == 1


async def test_a_field_1c_does_not_have_is_a_dead_entry_with_1cs_message(tmp_path: Path, odata: OData) -> None:
    extra = '[crm.onec.fields]\nDate = "{started_local}"\n"ТемаЗвонка" = "{summary}"'
    async with gateway(tmp_path, crm_config(tmp_path, odata.url, extra)) as h:
        await call(h, "a_answered")
        ((state, attempts, error),) = await outbox(h)
    assert (state, attempts) == ("dead", 1)
    assert error is not None and "HTTP 400" in error and "Неизвестное свойство: ТемаЗвонка" in error
    assert odata.sets[DOC] == []


async def test_a_wrong_password_is_retried_and_creates_nothing(tmp_path: Path, odata: OData) -> None:
    wrong = parse_crm({"onec": [{"name": "erp1c", "base_url": odata.url, "username": USER, "password_env": "P"}]},
                      "gw.toml", {"P": "not it"}, tmp_path)
    async with gateway(tmp_path, wrong) as h:
        await call(h, "a_answered")
        ((state, attempts, error),) = await outbox(h)
    assert (state, attempts) == ("pending", 1) and error is not None and "HTTP 401" in error
    assert odata.seen == [] and odata.sets[DOC] == []


async def test_internal_calls_are_not_sent(tmp_path: Path, odata: OData) -> None:
    store = await Store.open(tmp_path / "gw.sqlite3")
    crm = crm_config(tmp_path, odata.url)

    async def no_file(call_id: str) -> None:
        return None

    ctx = SinkContext(outbox=Outbox(store), clock=FakeClock(), region="RU", public_base_url=None,
                      zone_of=lambda shop: "Europe/Moscow", recording_file=no_file)
    sink = build(crm.sinks[0].config, ctx)
    data = {"call_id": "1.1", "direction": "internal", "caller": "101", "dialled": "102", "outcome": "answered",
            "started_at": "2026-11-26T23:39:08.724+00:00", "ended_at": "2026-11-26T23:39:13.748+00:00",
            "customer": None, "answered_by_agent": "boris", "owner_agent": "boris", "agents": {"101": "anna", "102": "boris"}}
    try:
        await sink.deliver(Entry(1, "erp1c", "call.finished", "1.1", "1.1:finished", data, "pending", 0,
                                 0.0, 0.0, 0.0, None, None))
    finally:
        await sink.close()
        await store.close()
    assert odata.seen == []


@pytest.mark.parametrize(("extra", "expected"), [
    ('[crm.onec.fields]\n"Тема" = "Звонок {shop_name}"',
     "[[crm.onec]] #1 fields.Тема: expected a template of {agent}, {call_id}"),
    ('[crm.onec.fields]\n"Тема" = "Звонок {shop!r}"', "unknown placeholder {shop}"),
    ('[crm.onec.contact_fields]\n"КонтактнаяИнформация" = [{ "НомерТелефона" = "{number}" }]',
     "[[crm.onec]] #1 contact_fields.КонтактнаяИнформация[0].НомерТелефона: expected a template"),
    ("contact_lookup = \"Телефон eq '{customer}'\"", "[[crm.onec]] #1 contact_lookup: expected a template of "
                                                     "{phone}, {phone_digits}; unknown placeholder {customer}"),
    ('call_id_format = "cti"', "[[crm.onec]] #1 call_id_format: expected a template with {call_id}"),
    ('[crm.onec.fields]\n"Комментарий" = "x"', "[[crm.onec]] #1 fields.Комментарий: expected no field the sink "
                                            "fills itself (it is call_id_field)"),
    ('users = { anna = "anna" }', "[[crm.onec]] #1 users.anna: expected a Ref_Key"),
    ('document = "ТелефонныйЗвонок"', "[[crm.onec]] #1 document: expected an entity set"),
])
def test_config_errors_name_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ValueError) as error:
        crm_config(tmp_path, "http://1c.local/trade/odata/standard.odata", extra)
    assert str(error.value).startswith("gw.toml: ") and expected in str(error.value)


def test_a_missing_base_url_names_the_key(tmp_path: Path) -> None:
    table = {"onec": [{"name": "erp1c", "username": USER, "password_env": "ONEC_PASSWORD"}]}
    with pytest.raises(ValueError, match=r"gw.toml: \[\[crm.onec\]\] #1 base_url: expected the OData root"):
        parse_crm(table, "gw.toml", ENV, tmp_path)
