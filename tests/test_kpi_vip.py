"""A scripted day and a scripted month of calls through the real gateway
service, store (a SQLite file), contacts and follow-up: every KPI point,
callback task and VIP plan figure is checked against numbers worked out by
hand from the script below, not by the functions under test.

Records are built by hand (as the tracker makes them: an outbound call's
caller is the agent's extension, its customer the dialled number) and handed
to the service as ``CallFinished`` effects; nothing of ours is replaced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from crm_bridge.callback_tasks import CallbackTask
from crm_bridge.contacts import Contacts
from crm_bridge.store import Store
from gateway.effects import CallFinished
from gateway.followup import Followup
from gateway.kpi import KpiRules, VipPlan
from gateway.numberplan import Line, NumberPlan, PlanBook, Shop
from gateway.record import CallRecord
from gateway.service import Gateway
from gateway.users import Directory, User
from tests.harness import default_users

MOSCOW = ZoneInfo("Europe/Moscow")
UTC = ZoneInfo("UTC")


def msk(text: str) -> float:
    """Epoch seconds of a wall-clock time in Moscow."""
    return datetime.fromisoformat(text).replace(tzinfo=MOSCOW).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso_utc(text: str) -> str:
    """How the API writes an instant given here in Moscow time."""
    return datetime.fromisoformat(text).replace(tzinfo=MOSCOW).astimezone(UTC).isoformat(timespec="milliseconds")


def call(
    call_id: str,
    direction: str,
    caller: str | None,
    dialled: str | None,
    outcome: str,
    start: float,
    *,
    answered: float | None = None,
    end: float,
    answered_by: str | None = None,
    talked: tuple[str, ...] = (),
    rang: tuple[str, ...] = (),
) -> CallRecord:
    return CallRecord(
        call_id=call_id, direction=direction, caller=caller, caller_name=None, dialled=dialled, outcome=outcome,
        answered_by=answered_by, rang=rang or talked, talked=talked, started_at=start, answered_at=answered,
        ended_at=end, ring_seconds=(answered or end) - start, talk_seconds=end - answered if answered else 0.0,
        hangup_cause=16, reason=None if outcome == "answered" else outcome, interrupted=False, ended=True,
    )


@dataclass
class World:
    store: Store
    directory: Directory
    contacts: Contacts
    followup: Followup
    gateway: Gateway
    clock: list[float]

    async def feed(self, records: Iterable[CallRecord]) -> None:
        for record in records:
            self.gateway.carry_out(CallFinished(record))
        await self.gateway.drain()

    def user(self, login: str) -> User:
        found = self.directory.by_login(login)
        assert found is not None
        return found


@asynccontextmanager
async def world(tmp_path: Path, plan: NumberPlan, *, now: float, users: tuple[User, ...] | None = None,
                vip: VipPlan | None = None) -> AsyncIterator[World]:
    """The parts ``cti-gateway run`` wires together, minus AMI, hub and HTTP."""
    clock = [now]
    store = await Store.open(tmp_path / "gw.sqlite3")
    try:
        directory = Directory(users or default_users())
        plans = PlanBook(plan)
        contacts = Contacts(store, region="RU", is_login=lambda login: directory.by_login(login) is not None,
                            clock=lambda: clock[0])
        followup = Followup(store, plans=plans, directory=directory, kpi=KpiRules(), vip=vip or VipPlan(),
                            clock=lambda: clock[0])
        gateway = Gateway(store, region="RU", plans=plans, contacts=contacts, directory=directory,
                          followup=followup)
        yield World(store, directory, contacts, followup, gateway, clock)
        await gateway.drain()
    finally:
        await store.close()


# -- the day ------------------------------------------------------------------------

DAY = "2026-11-17"  # a Tuesday


def at(clock: str, day: str = DAY) -> float:
    return msk(f"{day}T{clock}")


def day_plan() -> NumberPlan:
    # A: Moscow, 09-21 every day, 30 minutes, unclaimed tasks to anna.
    # B: Yekaterinburg (Moscow + 2), 09-18, 60 minutes, unclaimed tasks to boris.
    a = Shop("A", "Магазин A", timezone="Europe/Moscow", hours=((time(9), time(21)),) * 7, supervisor="olga",
             default_owner="anna", callback_sla_minutes=30)
    b = Shop("B", "Shop B", timezone="Asia/Yekaterinburg", hours=((time(9), time(18)),) * 7, supervisor="pavel",
             default_owner="boris", callback_sla_minutes=60)
    lines = [Line("+74950000001", a, "direct"), Line("+74950000003", a, "yandex"), Line("+74950000002", b, "avito")]
    return NumberPlan(shops={"A": a, "B": b}, lines={line.number: line for line in lines})


def day_users() -> tuple[User, ...]:
    # Boris has a target of his own: 7 points, which he makes exactly.
    return tuple(replace(u, daily_target=7.0) if u.login == "boris" else u for u in default_users())


def day_calls() -> list[CallRecord]:
    return [
        # P1: answered by anna.
        call("c01", "inbound", "+79161110001", "+74950000001", "answered", at("09:05:00"), answered=at("09:05:10"),
             end=at("09:08:00"), answered_by="101", talked=("101",)),
        # P2 (the trunk sends 8...): answered by boris, transferred to anna.
        call("c02", "inbound", "89161110002", "+74950000003", "answered", at("09:30:00"), answered=at("09:30:05"),
             end=at("09:40:00"), answered_by="102", talked=("102", "101")),
        # P3: answered by vera.
        call("c03", "inbound", "+79161110003", "+74950000001", "answered", at("10:00:00"), answered=at("10:00:08"),
             end=at("10:05:00"), answered_by="103", talked=("103",)),
        # P4: anna calls out, answered.
        call("c04", "outbound", "101", "+79161110004", "answered", at("10:30:00"), answered=at("10:30:20"),
             end=at("10:35:00")),
        # P5: boris calls out, busy.
        call("c05", "outbound", "102", "89161110005", "busy", at("10:40:00"), end=at("10:40:05")),
        # P6: missed (task to anna, due 11:30:30), called back by boris 9 min 55 s later.
        call("c06", "inbound", "+79161110006", "+74950000001", "missed", at("11:00:00"), end=at("11:00:30"),
             rang=("101", "102")),
        call("c07", "outbound", "102", "89161110006", "answered", at("11:10:00"), answered=at("11:10:25"),
             end=at("11:15:00")),
        # P8: abandoned, then missed (one task, two attempts, due 12:30:20),
        # called back by vera at 13:00:15: after the SLA.
        call("c08", "inbound", "+79161110008", "+74950000001", "abandoned", at("12:00:00"), end=at("12:00:20"),
             rang=("101",)),
        call("c09", "inbound", "+79161110008", "+74950000003", "missed", at("12:20:00"), end=at("12:20:40"),
             rang=("101",)),
        call("c10", "outbound", "103", "+79161110008", "answered", at("13:00:00"), answered=at("13:00:15"),
             end=at("13:03:00")),
        # P11: missed, then he calls again and vera answers (called in: no callback points).
        call("c11", "inbound", "+79161110011", "+74950000001", "missed", at("14:00:00"), end=at("14:00:30"),
             rang=("101",)),
        call("c12", "inbound", "+79161110011", "+74950000001", "answered", at("14:05:00"), answered=at("14:05:05"),
             end=at("14:07:00"), answered_by="103", talked=("103",)),
        # P14: missed in shop B at 17:00:40 its time; never called back.
        call("c14", "inbound", "+79161110014", "+74950000002", "missed", at("15:00:00"), end=at("15:00:40"),
             rang=("102",)),
        # P13 (vera is his manager): missed, never called back.
        call("c13", "inbound", "+79161110013", "+74950000001", "missed", at("16:00:00"), end=at("16:00:30"),
             rang=("101",)),
        # Internal and withheld calls touch no task and earn nothing.
        call("c16", "internal", "101", "102", "answered", at("17:00:00"), answered=at("17:00:03"),
             end=at("17:02:00"), answered_by="102", talked=("102",)),
        call("c17", "inbound", None, "+74950000001", "missed", at("17:30:00"), end=at("17:30:30"), rang=("101",)),
        # P15: missed 10 minutes before shop A closes: due 09:20 tomorrow.
        call("c15", "inbound", "+79161110015", "+74950000001", "missed", at("20:49:30"), end=at("20:50:00"),
             rang=("101",)),
        # After midnight in Moscow (21:30Z): tomorrow's points for anna.
        call("c18", "outbound", "101", "+79161110001", "answered", at("00:30:00", "2026-11-18"),
             answered=at("00:30:10", "2026-11-18"), end=at("00:33:00", "2026-11-18")),
    ]


def task_view(task: CallbackTask) -> dict[str, Any]:
    return {
        "status": task.status, "shop": task.shop, "channel": task.channel, "owner": task.owner,
        "attempts": task.attempts, "first_attempt_at": task.first_attempt_at, "last_attempt_at": task.last_attempt_at,
        "due_at": task.due_at, "closed_at": task.closed_at, "closed_by": task.closed_by,
        "close_reason": task.close_reason, "closed_call_id": task.closed_call_id,
        "callback_seconds": task.callback_seconds, "within_sla": task.within_sla, "escalated_at": task.escalated_at,
    }


def _open(shop: str, channel: str, owner: str, attempts: int, first: float, last: float, due: float) -> dict[str, Any]:
    return {"status": "open", "shop": shop, "channel": channel, "owner": owner, "attempts": attempts,
            "first_attempt_at": first, "last_attempt_at": last, "due_at": due, "closed_at": None, "closed_by": None,
            "close_reason": None, "closed_call_id": None, "callback_seconds": None, "within_sla": None,
            "escalated_at": None}


EXPECTED_TASKS: dict[str, dict[str, Any]] = {
    "+79161110006": {
        **_open("A", "direct", "anna", 1, at("11:00:30"), at("11:00:30"), at("11:30:30")),
        "status": "reached", "closed_at": at("11:10:25"), "closed_by": "boris", "close_reason": "called_back",
        "closed_call_id": "c07", "callback_seconds": 595.0, "within_sla": True,
    },
    "+79161110008": {
        **_open("A", "direct", "anna", 2, at("12:00:20"), at("12:20:40"), at("12:30:20")),
        "status": "reached", "closed_at": at("13:00:15"), "closed_by": "vera", "close_reason": "called_back",
        "closed_call_id": "c10", "callback_seconds": 3595.0, "within_sla": False,
    },
    "+79161110011": {
        **_open("A", "direct", "anna", 1, at("14:00:30"), at("14:00:30"), at("14:30:30")),
        "status": "reached", "closed_at": at("14:05:05"), "closed_by": "vera", "close_reason": "called_in",
        "closed_call_id": "c12", "callback_seconds": 275.0, "within_sla": True,
    },
    # 59 min 20 s left until 18:00 in Yekaterinburg (16:00 Moscow), 40 s from 09:00 there tomorrow.
    "+79161110014": _open("B", "avito", "boris", 1, at("15:00:40"), at("15:00:40"), utc("2026-11-18T04:00:40")),
    "+79161110013": _open("A", "direct", "vera", 1, at("16:00:30"), at("16:00:30"), at("16:30:30")),
    "+79161110015": _open("A", "direct", "anna", 1, at("20:50:00"), at("20:50:00"), at("09:20:00", "2026-11-18")),
}


def expected_kpi() -> dict[str, Any]:
    def day(d: str, points: float, counts: dict[str, int], met: bool) -> dict[str, Any]:
        return {"date": d, "points": points, "counts": counts, "target_met": met}

    return {
        "from": "2026-11-17", "to": "2026-11-18", "timezone": "Europe/Moscow",
        "points": {"inbound_call": 2.0, "outbound_call": 2.0, "callback_in_sla": 3.0, "meeting": 10.0},
        "daily_target": 20.0,
        "agents": [
            {   # c01 2 + c02 2 + c04 2 + meeting 10 = 16; tomorrow c18 2.
                "login": "anna", "name": "Анна Иванова", "team": "sales", "daily_target": 20.0, "total": 18.0,
                "days": [day("2026-11-17", 16.0, {"inbound_call": 2, "outbound_call": 1, "meeting": 1}, False),
                         day("2026-11-18", 2.0, {"outbound_call": 1}, False)],
                "months": [{"month": "2026-11", "points": 18.0}],
            },
            {   # c02 2 + c07 2 + callback within the SLA 3 = 7, his own target.
                "login": "boris", "name": "Борис Петров", "team": "sales", "daily_target": 7.0, "total": 7.0,
                "days": [day("2026-11-17", 7.0, {"inbound_call": 1, "outbound_call": 1, "callback_in_sla": 1}, True),
                         day("2026-11-18", 0.0, {}, False)],
                "months": [{"month": "2026-11", "points": 7.0}],
            },
            {   # c03 2 + c10 2 (late: no callback points) + c12 2 (called in: none either) = 6.
                "login": "vera", "name": "Vera Smirnova", "team": "support", "daily_target": 20.0, "total": 6.0,
                "days": [day("2026-11-17", 6.0, {"inbound_call": 2, "outbound_call": 1}, False),
                         day("2026-11-18", 0.0, {}, False)],
                "months": [{"month": "2026-11", "points": 6.0}],
            },
        ],
    }


async def _figures(w: World) -> tuple[dict[str, Any], dict[str, dict[str, Any]], list[Any], int]:
    admin = w.user("admin")
    report = await w.followup.kpi_report(w.followup.agents_of(admin), date(2026, 11, 17), date(2026, 11, 18))
    tasks = {t.phone: task_view(t) for t in await w.followup.tasks.find(status="all")}
    interactions = await w.followup.interactions.between(0.0, utc("2030-01-01T00:00"))
    calls = len(await w.store.calls())
    return report, tasks, interactions, calls


async def test_a_scripted_day_gives_every_kpi_and_task_figure(tmp_path: Path) -> None:
    async with world(tmp_path, day_plan(), now=at("08:00:00"), users=day_users()) as w:
        await w.contacts.put("+79161110013", {"manager": "vera"}, set_by="admin")
        calls = day_calls()
        for record in calls:  # one by one, as they end, with the clock following
            w.clock[0] = record.ended_at or record.started_at
            await w.feed([record])
        meeting, new = await w.followup.interactions.record(
            login="anna", kind="meeting", at=at("15:00:00"), points=10.0, call_id=None, note="showroom visit",
            recorded_by="olga", request_id="meeting-1")
        assert new and (meeting.login, meeting.kind, meeting.points, meeting.recorded_by) == ("anna", "meeting",
                                                                                            10.0, "olga")
        again, new = await w.followup.interactions.record(
            login="anna", kind="meeting", at=at("15:00:00"), points=10.0, call_id=None, note="showroom visit",
            recorded_by="olga", request_id="meeting-1")
        assert not new and again == meeting

        report, tasks, interactions, stored = await _figures(w)
        assert report == expected_kpi()
        assert tasks == EXPECTED_TASKS
        assert stored == len(calls) == 18

        # Each point is one row: (login, kind, call) as the table above sums them.
        assert sorted((i.login, i.kind, i.call_id, i.points, i.at) for i in interactions) == sorted([
            ("anna", "inbound_call", "c01", 2.0, at("09:05:10")),
            ("anna", "inbound_call", "c02", 2.0, at("09:30:05")),
            ("boris", "inbound_call", "c02", 2.0, at("09:30:05")),
            ("vera", "inbound_call", "c03", 2.0, at("10:00:08")),
            ("anna", "outbound_call", "c04", 2.0, at("10:30:20")),
            ("boris", "outbound_call", "c07", 2.0, at("11:10:25")),
            ("boris", "callback_in_sla", "c07", 3.0, at("11:10:25")),
            ("vera", "outbound_call", "c10", 2.0, at("13:00:15")),
            ("vera", "inbound_call", "c12", 2.0, at("14:05:05")),
            ("anna", "meeting", None, 10.0, at("15:00:00")),
            ("anna", "outbound_call", "c18", 2.0, at("00:30:10", "2026-11-18")),
        ])

        # A manager's report holds his team only.
        olga = w.user("olga")
        assert [a.login for a in w.followup.agents_of(olga)] == ["anna", "boris"]
        for_olga = await w.followup.kpi_report(w.followup.agents_of(olga), date(2026, 11, 17), date(2026, 11, 17))
        assert [(a["login"], a["total"]) for a in for_olga["agents"]] == [("anna", 16.0), ("boris", 7.0)]

        # The same records again (a replay, a resync): no figure moves.
        w.clock[0] = at("21:30:00")
        await w.feed(calls)
        assert await _figures(w) == (report, tasks, interactions, stored)

        # The SLA watch: at 22:00 only P13's task (due 16:30:30) is overdue; it is escalated once.
        w.clock[0] = at("22:00:00")
        assert [t.phone for t in await w.followup.check_sla()] == ["+79161110013"]
        assert await w.followup.check_sla() == []
        # Tomorrow 09:21 Moscow: P14's (04:00:40Z) and P15's (09:20 Moscow) are, in due order.
        w.clock[0] = at("09:21:00", "2026-11-18")
        assert [t.phone for t in await w.followup.check_sla()] == ["+79161110014", "+79161110015"]
        escalated = {t.phone: t.escalated_at for t in await w.followup.tasks.find(status="all")}
        assert escalated == {"+79161110006": None, "+79161110008": None, "+79161110011": None,
                             "+79161110013": at("22:00:00"), "+79161110014": at("09:21:00", "2026-11-18"),
                             "+79161110015": at("09:21:00", "2026-11-18")}


async def test_a_customer_who_missed_twice_has_one_task_with_two_attempts(tmp_path: Path) -> None:
    async with world(tmp_path, day_plan(), now=at("12:00:00"), users=day_users()) as w:
        first, second, callback = (r for r in day_calls() if r.call_id in ("c08", "c09", "c10"))
        await w.feed([first])
        (task,) = await w.followup.tasks.find()
        assert (task.attempts, task.first_attempt_at, task.last_attempt_at, task.due_at) == (
            1, at("12:00:20"), at("12:00:20"), at("12:30:20"))
        await w.feed([second, first])  # the first one again changes nothing
        (joined,) = await w.followup.tasks.find()
        assert joined.task_id == task.task_id
        assert (joined.attempts, joined.first_attempt_at, joined.last_attempt_at, joined.due_at) == (
            2, at("12:00:20"), at("12:20:40"), at("12:30:20"))
        assert await w.followup.tasks.open_count("+79161110008") == 1
        await w.feed([callback])
        assert await w.followup.tasks.find() == []
        (reached,) = await w.followup.tasks.find(status="reached")
        assert (reached.task_id, reached.attempts, reached.callback_seconds, reached.within_sla) == (
            task.task_id, 2, 3595.0, False)
        # A miss after the callback opens a new task: the old one stays closed.
        later = call("c19", "inbound", "+79161110008", "+74950000001", "missed", at("13:30:00"),
                     end=at("13:30:10"), rang=("101",))
        await w.feed([later, first, second, callback])
        (fresh,) = await w.followup.tasks.find()
        assert fresh.task_id != task.task_id
        assert (fresh.attempts, fresh.first_attempt_at, fresh.due_at) == (1, at("13:30:10"), at("14:00:10"))
        (still,) = await w.followup.tasks.find(status="reached")
        assert (still.task_id, still.attempts, still.closed_call_id) == (task.task_id, 2, "c10")


# -- the month ----------------------------------------------------------------------

NOW = msk("2026-11-20T12:00")


def month_plan() -> NumberPlan:
    # A: Moscow, the [vip] default (2 calls); B: Yekaterinburg, 3 calls; C: Moscow, 1 call.
    a = Shop("A", "Магазин A", timezone="Europe/Moscow", supervisor="olga")
    b = Shop("B", "Shop B", timezone="Asia/Yekaterinburg", vip_calls=3)
    c = Shop("C", "Shop C", timezone="Europe/Moscow", vip_calls=1)
    lines = [Line("+74950000001", a, "direct"), Line("+74950000002", b, "direct"), Line("+74950000005", c, "direct")]
    return NumberPlan(shops={"A": a, "B": b, "C": c}, lines={line.number: line for line in lines}, default_shop="A")


def out(call_id: str, agent: str, number: str, start: float, outcome: str = "answered") -> CallRecord:
    answered = start + 10 if outcome == "answered" else None
    return call(call_id, "outbound", agent, number, outcome, start, answered=answered, end=start + 120)


def into(call_id: str, number: str, line: str, agent: str, start: float) -> CallRecord:
    return call(call_id, "inbound", number, line, "answered", start, answered=start + 5, end=start + 60,
                answered_by=agent, talked=(agent,))


def month_calls() -> list[CallRecord]:
    return [
        # V1 (shop A, 2 a month, anna's): his first call sets the shop.
        into("m01", "+79162220001", "+74950000001", "101", msk("2026-10-05T10:00")),
        out("m02", "101", "+79162220001", utc("2026-10-31T20:30")),  # 23:30 on 31 October in Moscow: last month
        out("m03", "101", "+79162220001", msk("2026-11-10T11:00")),  # counts
        out("m04", "101", "+79162220001", msk("2026-11-12T11:00"), "busy"),  # not answered: does not count
        # V2 (shop B, 3 a month, boris's).
        into("m05", "+79162220002", "+74950000002", "102", msk("2026-10-06T10:00")),
        out("m06", "102", "89162220002", utc("2026-10-31T19:30")),  # 00:30 on 1 November in Yekaterinburg: counts
        out("m07", "102", "+79162220002", msk("2026-11-05T11:00")),  # counts
        into("m15", "+79162220002", "+74950000002", "102", msk("2026-11-18T10:00")),  # inbound: does not count
        # V3 (no calls into a shop: the default shop A; anna's): a call to his second phone, national format.
        out("m08", "101", "89162220004", msk("2026-11-15T11:00")),
        # V4 (shop C, 1 a month, vera's): on track.
        into("m09", "+79162220005", "+74950000005", "103", msk("2026-10-07T10:00")),
        out("m10", "103", "+79162220005", msk("2026-11-03T11:00")),
        # V6 (shop B, pavel's): called in October only.
        into("m11", "+79162220007", "+74950000002", "103", msk("2026-10-08T10:00")),
        # V7 (shop A, boris's): two answered calls this month, by two agents: on track.
        into("m12", "+79162220008", "+74950000001", "102", msk("2026-10-09T10:00")),
        out("m13", "101", "+79162220008", msk("2026-11-02T11:00")),
        out("m14", "102", "+79162220008", msk("2026-11-19T11:00")),
        # Not a VIP: never in the plan, however often called.
        out("m16", "101", "+79162220009", msk("2026-11-04T11:00")),
    ]


def last_call(call_id: str, started: str, direction: str, outcome: str, caller: str,
              answered_by: str | None) -> dict[str, Any]:
    return {"call_id": call_id, "started_at": started, "direction": direction, "outcome": outcome, "caller": caller,
            "answered_by": answered_by}


MOSCOW_NOVEMBER = {"period_start": "2026-10-31T21:00:00.000+00:00", "period_end": "2026-11-30T21:00:00.000+00:00",
                   "shop_name": "Магазин A", "timezone": "Europe/Moscow"}
YEKATERINBURG_NOVEMBER = {"period_start": "2026-10-31T19:00:00.000+00:00",
                          "period_end": "2026-11-30T19:00:00.000+00:00",
                          "shop_name": "Shop B", "timezone": "Asia/Yekaterinburg"}


async def test_a_scripted_month_gives_the_vip_plan_of_each_person(tmp_path: Path) -> None:
    async with world(tmp_path, month_plan(), now=NOW, vip=VipPlan(calls=2, period="month")) as w:
        vip = {"vip": True}
        ids = {
            "V1": (await w.contacts.put("+79162220001", {**vip, "name": "Иван Петров", "manager": "anna"},
                                        set_by="admin")).contact_id,
            "V2": (await w.contacts.put("+79162220002", {**vip, "name": "Pyotr", "manager": "boris"},
                                        set_by="admin")).contact_id,
            "V3": (await w.contacts.put("+79162220003", {**vip, "name": "Two Phones", "manager": "anna"},
                                        set_by="admin")).contact_id,
            "V4": (await w.contacts.put("+79162220005", {**vip, "name": "Shop C", "manager": "vera"},
                                        set_by="admin")).contact_id,
            "V5": (await w.contacts.put("+79162220006", {**vip, "name": "Olga's own", "manager": "olga"},
                                        set_by="admin")).contact_id,
            "V6": (await w.contacts.put("+79162220007", {**vip, "name": "Support VIP", "manager": "pavel"},
                                        set_by="admin")).contact_id,
            "V7": (await w.contacts.put("+79162220008", {**vip, "name": "Well served", "manager": "boris"},
                                        set_by="admin")).contact_id,
        }
        await w.contacts.put("+79162220009", {"name": "Not VIP", "manager": "anna"}, set_by="admin")
        two = await w.contacts.add_phone(ids["V3"], "89162220004")
        assert two.phones == ("+79162220003", "+79162220004")
        await w.feed(month_calls())

        v1 = {"contact_id": ids["V1"], "name": "Иван Петров", "phones": ["+79162220001"], "manager": "anna",
              "shop": "A", "required": 2, "done": 1, **MOSCOW_NOVEMBER,
              "last_call": last_call("m04", iso_utc("2026-11-12T11:00"), "outbound", "busy", "101", None)}
        v2 = {"contact_id": ids["V2"], "name": "Pyotr", "phones": ["+79162220002"], "manager": "boris",
              "shop": "B", "required": 3, "done": 2, **YEKATERINBURG_NOVEMBER,
              "last_call": last_call("m15", iso_utc("2026-11-18T10:00"), "inbound", "answered", "+79162220002",
                                     "102")}
        v3 = {"contact_id": ids["V3"], "name": "Two Phones", "phones": ["+79162220003", "+79162220004"],
              "manager": "anna", "shop": "A", "required": 2, "done": 1, **MOSCOW_NOVEMBER,
              "last_call": last_call("m08", iso_utc("2026-11-15T11:00"), "outbound", "answered", "101", None)}
        v5 = {"contact_id": ids["V5"], "name": "Olga's own", "phones": ["+79162220006"], "manager": "olga",
              "shop": "A", "required": 2, "done": 0, **MOSCOW_NOVEMBER, "last_call": None}
        v6 = {"contact_id": ids["V6"], "name": "Support VIP", "phones": ["+79162220007"], "manager": "pavel",
              "shop": "B", "required": 3, "done": 0, **YEKATERINBURG_NOVEMBER,
              "last_call": last_call("m11", iso_utc("2026-10-08T10:00"), "inbound", "answered", "+79162220007",
                                     "103")}

        # Furthest behind first (V6 -3, V5 -2); the -1s by their last call, oldest first
        # (V1 12 Nov, V3 15 Nov, V2 18 Nov). V4 and V7 are on track.
        plan = await w.followup.vip_plan(w.user("admin"))
        assert plan == {"period": "month", "behind": [v6, v5, v1, v3, v2], "on_track": 2}
        # A manager sees his team's VIPs and his own: anna, boris, olga.
        assert await w.followup.vip_plan(w.user("olga")) == {"period": "month", "behind": [v5, v1, v3, v2],
                                                             "on_track": 1}
        assert await w.followup.vip_plan(w.user("pavel")) == {"period": "month", "behind": [v6], "on_track": 1}
        # An agent sees his own.
        assert await w.followup.vip_plan(w.user("anna")) == {"period": "month", "behind": [v1, v3], "on_track": 0}
        assert await w.followup.vip_plan(w.user("boris")) == {"period": "month", "behind": [v2], "on_track": 1}
        assert await w.followup.vip_plan(w.user("vera")) == {"period": "month", "behind": [], "on_track": 1}

        # V1 is called again today: on track now, the others unchanged.
        w.clock[0] = msk("2026-11-20T15:00")
        await w.feed([out("m17", "102", "8 916 222-00-01", msk("2026-11-20T14:00"))])
        assert await w.followup.vip_plan(w.user("anna")) == {"period": "month", "behind": [v3], "on_track": 1}

        # In December the count starts again for everyone.
        w.clock[0] = msk("2026-12-02T12:00")
        december = await w.followup.vip_plan(w.user("admin"))
        assert december["on_track"] == 0
        assert [(b["contact_id"], b["done"], b["required"], b["period_start"]) for b in december["behind"]] == [
            # -3: V6 (last call 8 Oct), V2 (18 Nov); -2: V5 (never), V3 (15 Nov), V7 (19 Nov), V1 (20 Nov); -1: V4.
            (ids["V6"], 0, 3, "2026-11-30T19:00:00.000+00:00"),
            (ids["V2"], 0, 3, "2026-11-30T19:00:00.000+00:00"),
            (ids["V5"], 0, 2, "2026-11-30T21:00:00.000+00:00"),
            (ids["V3"], 0, 2, "2026-11-30T21:00:00.000+00:00"),
            (ids["V7"], 0, 2, "2026-11-30T21:00:00.000+00:00"),
            (ids["V1"], 0, 2, "2026-11-30T21:00:00.000+00:00"),
            (ids["V4"], 0, 1, "2026-11-30T21:00:00.000+00:00"),
        ]
