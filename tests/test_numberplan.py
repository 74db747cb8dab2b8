"""The number plan: config errors name the key, each captured DID maps to the
reference plan, the record and the card carry shop and channel, working hours
follow the shop's time zone, and a reload applies to the next call only."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from connectors.ami.scenarios import CallFactory
from crm_bridge.store import Store
from gateway.config import ConfigError, load_config
from gateway.effects import CallFinished
from gateway.numberplan import Line, NumberPlan, PlanBook, Shop
from gateway.record import CallRecord
from gateway.replay import replay_capture
from gateway.service import Gateway
from tests.conftest import CAPTURES
from tests.test_replay_captures import EXPECTED
from tests.test_tracker_scenarios import run

REPO = Path(__file__).resolve().parents[1]
ENV = {"CTI_AMI_SECRET": "x", "CTI_HTTP_SECRET": "0123456789abcdef-http", "CTI_ZADARMA_SECRET": "z"}
REFERENCE = {
    "+74950000001": ("A", "direct"),
    "+74950000002": ("B", "direct"),
    "+74950000003": ("A", "yandex"),
    "+74950000004": ("B", "avito"),
}


def example_plan() -> NumberPlan:
    return load_config(REPO / "config" / "example.toml", ENV).plan


def test_example_config_ships_the_reference_plan() -> None:
    plan = example_plan()
    for number, (shop, channel) in REFERENCE.items():
        line = plan.line(number)
        assert line is not None and (line.shop.shop_id, line.channel) == (shop, channel)
    assert plan.line("84950000003").channel == "yandex"  # type: ignore[union-attr]  # 8-prefixed national form
    unknown = plan.line("+74959999999")
    assert unknown is not None and (unknown.shop.shop_id, unknown.channel) == ("A", "unknown")
    assert plan.shops["A"].caller_id == "+74950000001" and plan.shops["A"].supervisor == "olga"


@pytest.mark.parametrize("scenario", sorted(EXPECTED))
def test_every_captured_inbound_call_gets_its_shop_and_channel(scenario: str) -> None:
    plans = PlanBook(example_plan())
    (record,) = replay_capture(CAPTURES / f"{scenario}.jsonl")
    line = plans.at(record.started_at).line(record.dialled)
    if record.direction == "inbound":
        assert line is not None and (line.shop.shop_id, line.channel) == REFERENCE[record.dialled]  # type: ignore[index]


async def test_records_are_stored_with_shop_and_channel(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        gateway = Gateway(store, plans=PlanBook(example_plan()))
        for scenario in ("a_answered", "e_queue_answered", "j_agi_route", "g_click_to_call"):
            (record,) = replay_capture(CAPTURES / f"{scenario}.jsonl")
            gateway.carry_out(CallFinished(record))
        await gateway.drain()
        stored = {r.dialled: (r.shop, r.channel) for r in await store.calls()}
    finally:
        await store.close()
    assert stored == {
        "+74950000001": ("A", "direct"),
        "+74950000003": ("A", "yandex"),
        "+74950000004": ("B", "avito"),
        "+79161110007": (None, None),  # outbound: its shop comes from click-to-call
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[shops]]\nid = "A"\ntimezone = "Mars/Base"\n', "[shops #1] timezone: expected an IANA time zone"),
        ('[[shops]]\nid = "A"\nhours = "21:00-09:00"\n', "[shops #1] hours: expected an opening time before"),
        ('[[shops]]\nid = "A"\nhours = {mon = "9-18"}\n', "[shops #1] hours.mon: expected hours like"),
        ('[[shops]]\nid = "A"\nsupervisor = "nobody"\n', "[shops #1] supervisor: expected the login of a user"),
        ('[[shops]]\nid = "A"\n[[numbers]]\nnumber = "+74950000001"\nshop = "Z"\nchannel = "x"\n',
         "[numbers #1] shop: expected the id of a shop in [[shops]] (A)"),
        ('[[shops]]\nid = "A"\n[[numbers]]\nnumber = "not a number"\nshop = "A"\nchannel = "x"\n',
         "[numbers #1] number: expected a phone number"),
        ('[[shops]]\nid = "A"\n[[numbers]]\nnumber = "+74950000001"\nshop = "A"\n',
         "[numbers #1] channel: expected a non-empty string"),
        ('[[shops]]\nid = "A"\n[plan]\ndefault_shop = "B"\n', "[plan] default_shop: expected the id of a shop"),
    ],
)
def test_plan_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert expected in str(info.value) and str(path) in str(info.value)


def test_working_hours_are_counted_in_the_shops_time_zone() -> None:
    plan = example_plan()
    a, b = plan.shops["A"], plan.shops["B"]  # A: Moscow 09-21 daily; B: Yekaterinburg, Sunday closed

    def at(text: str, zone: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()

    assert a.is_open(at("2027-03-03T09:00", "Europe/Moscow"))
    assert not a.is_open(at("2027-03-03T08:59", "Europe/Moscow"))
    assert not a.is_open(at("2027-03-03T21:00", "Europe/Moscow"))
    # 10:30 in Moscow is 12:30 in Yekaterinburg: B is open then on a Wednesday...
    assert b.is_open(at("2027-03-03T10:30", "Europe/Moscow"))
    # ...and 17:30 in Moscow is 19:30 there: closed, though A is open.
    assert a.is_open(at("2027-03-03T17:30", "Europe/Moscow")) and not b.is_open(at("2027-03-03T17:30", "Europe/Moscow"))
    assert not b.is_open(at("2027-03-07T12:00", "Asia/Yekaterinburg"))  # a Sunday
    assert not a.is_open(at("2027-01-01T12:00", "Europe/Moscow"))  # a holiday


def _plan(channel: str) -> NumberPlan:
    shop = Shop("A", "Shop A")
    return NumberPlan(shops={"A": shop}, lines={"+74950000001": Line("+74950000001", shop, channel)})


async def test_reload_applies_to_the_next_call_only(tmp_path: Path) -> None:
    """A call in progress at the reload keeps the old channel; the next one gets the new."""
    plans = PlanBook(_plan("old"))
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        gateway = Gateway(store, plans=plans)
        factory = CallFactory(start_epoch=1_800_000_000.0)
        first = factory.direct_answered("+79161110001", "A", "+74950000001", "101")
        second = factory.direct_answered("+79161110002", "B", "+74950000001", "101")
        half = len(first) // 2
        (_, _) = run(first[:half], gateway.tracker)
        plans.replace(_plan("new"), 1_800_000_000.0 + 1.0)  # mid-call
        records: list[CallRecord] = []
        for scenario, offset in ((first[half:], 0.0), (second, 100.0)):
            finished, _ = run([(d + (offset if i == 0 else 0.0), m) for i, (d, m) in enumerate(scenario)],
                              gateway.tracker)
            records += finished
        for record in records:
            gateway.carry_out(CallFinished(record))
        await gateway.drain()
        stored = {r.caller: r.channel for r in await store.calls()}
    finally:
        await store.close()
    assert stored == {"+79161110001": "old", "+79161110002": "new"}


async def test_the_card_shows_shop_and_channel_of_the_number(tmp_path: Path) -> None:
    import json

    from websockets.asyncio.client import connect

    from tests.harness import Harness

    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h:
        async with connect(h.ws_url) as ws:
            await ws.send(json.dumps({"type": "auth", "token": h.token("anna")}))
            assert json.loads(await ws.recv())["type"] == "ready"
            scenario = CallFactory().queue("+79161110005", "Иван", "+74950000003", members=("101",),
                                           answering="101")
            await h.ami.play(scenario, speed=0)
            pop = json.loads(await ws.recv())
        await h.wait_records(1)
    assert pop["type"] == "pop"
    assert (pop["card"]["shop"], pop["card"]["shop_id"], pop["card"]["channel"], pop["card"]["campaign"]) == (
        "Магазин A", "A", "yandex", "yandex-direct-2026")
    assert (h.records[0].shop, h.records[0].channel) == ("A", "yandex")
