"""Follow-up of calls: callback tasks, KPI points, the VIP call plan.

The service side of ``gateway.callbacks`` and ``gateway.kpi``. For a finished
call it gives the statements that go into the store with the call's record
(its task opened, joined or closed; its agents' points), so a crash never
keeps a call and loses its task. The SLA watch escalates each overdue task
once: the task is marked first, then its owner and the shop's supervisor get
a notice over the hub (a person who is offline sees the flag on the page).
It also answers who may see what: an agent his own, a manager his teams' (and
the shops he supervises), an administrator everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from crm_bridge.callback_tasks import CallbackTask, CallbackTasks, attempt_statements, reach_statements
from crm_bridge.interactions import Interactions, credit_statements
from crm_bridge.store import Store
from crm_bridge.vip_plan import vip_contacts
from gateway.callbacks import Attempt, Reach, sla_deadline, touch
from gateway.hub import Hub
from gateway.kpi import CALLBACK_IN_SLA, KpiRules, VipPlan, call_credits, day_bounds, kpi_report, period_bounds
from gateway.metrics import Metrics
from gateway.numberplan import PlanBook, Shop
from gateway.record import CallRecord, iso
from gateway.users import Directory, Role, User

log = logging.getLogger(__name__)

Statement = tuple[str, tuple[Any, ...]]
SLA_CHECK_SECONDS = 30.0


class Followup:
    def __init__(
        self,
        store: Store,
        *,
        plans: PlanBook,
        directory: Directory,
        kpi: KpiRules | None = None,
        vip: VipPlan | None = None,
        hub: Hub | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.plans = plans
        self.directory = directory
        self.kpi = kpi or KpiRules()
        self.vip = vip or VipPlan()
        self.hub = hub
        self.metrics = metrics or (hub.metrics if hub else Metrics())
        self.clock = clock
        self.tasks = CallbackTasks(store)
        self.interactions = Interactions(store)
        self._sla_lock = asyncio.Lock()

    def _login_of(self, extension: str) -> str | None:
        user = self.directory.by_extension(extension)
        return user.login if user else None

    # -- with each call's record ---------------------------------------------------

    def call_statements(self, record: CallRecord) -> list[Statement]:
        """What the finished call changes in tasks and points (``record.customer`` set)."""
        statements = credit_statements(call_credits(record, self.kpi, self._login_of))
        touched = touch(record, self._login_of)
        now = self.clock()
        if isinstance(touched, Attempt):
            shop = self._shop(record.shop, record.started_at)
            minutes = shop.callback_sla_minutes if shop else 30.0
            statements += attempt_statements(touched, default_owner=shop.default_owner if shop else None,
                                             due_at=sla_deadline(shop, touched.at, minutes * 60), now=now)
        elif isinstance(touched, Reach):
            is_user = touched.by is not None and self.directory.by_login(touched.by) is not None
            points = self.kpi.points_for(CALLBACK_IN_SLA) if is_user else None
            statements += reach_statements(touched, now=now, callback_points=points)
        return statements

    def _shop(self, shop_id: str | None, at: float) -> Shop | None:
        return self.plans.at(at).shops.get(shop_id) if shop_id else None

    def task_json(self, task: CallbackTask, now: float) -> dict[str, Any]:
        """A task as the API and notices show it: with its shop's name and time
        zone, for pages that show times as the shop sees them."""
        shop = self.plans.current.shops.get(task.shop) if task.shop else None
        return {**task.to_json(now), "shop_name": shop.name if shop else task.shop,
                "timezone": shop.timezone if shop else self.kpi.timezone}

    # -- the SLA watch -------------------------------------------------------------

    async def check_sla(self) -> list[CallbackTask]:
        """Escalate every overdue task not escalated yet; the tasks escalated now."""
        async with self._sla_lock:  # two checks at once must not both notify
            now = self.clock()
            due = await self.tasks.due_for_escalation(now)
            if not due:
                return []
            await self.tasks.mark_escalated([t.task_id for t in due], now)
            self.metrics.callbacks_escalated.inc(len(due))
            for task in due:
                shop = self.plans.current.shops.get(task.shop) if task.shop else None
                people = dict.fromkeys(p for p in (task.owner, shop.supervisor if shop else None) if p)
                log.warning("callback task %d (%s, shop %s) is past its SLA: escalated to %s", task.task_id,
                            task.phone, task.shop or "-", ", ".join(people) or "nobody")
                if self.hub is not None:
                    for login in people:
                        self.hub.notify(login, {"type": "notice", "kind": "callback_overdue",
                                                "task": self.task_json(task, now)})
            return due

    async def watch(self, every: float = SLA_CHECK_SECONDS) -> None:
        """Check the SLA every ``every`` seconds until cancelled."""
        while True:
            try:
                await self.check_sla()
            except Exception as exc:  # the store may be busy; try again next round
                log.warning("SLA check failed: %s", exc)
            await asyncio.sleep(every)

    # -- who sees what ---------------------------------------------------------------

    def people_of(self, user: User) -> list[str] | None:
        """Logins whose tasks, points and VIPs ``user`` may see; None: everybody's."""
        if user.role is Role.ADMIN:
            return None
        if user.role is Role.MANAGER:
            return [user.login, *(u.login for u in self.directory.team_members(user.leads))]
        return [user.login]

    def supervised_shops(self, user: User) -> list[str]:
        if user.role is not Role.MANAGER:
            return []
        return [s.shop_id for s in self.plans.current.shops.values() if s.supervisor == user.login]

    def may_see_task(self, user: User, task: CallbackTask) -> bool:
        people = self.people_of(user)
        return people is None or task.owner in people or task.shop in self.supervised_shops(user)

    async def visible_tasks(self, user: User, *, status: str, mine: bool) -> list[CallbackTask]:
        if mine:
            return await self.tasks.find(owners=[user.login], status=status)
        return await self.tasks.find(owners=self.people_of(user), shops=self.supervised_shops(user), status=status)

    # -- KPI and the VIP plan --------------------------------------------------------

    def agents_of(self, user: User) -> list[User]:
        people = self.people_of(user)
        agents = [u for u in self.directory if u.role is Role.AGENT and (people is None or u.login in people)]
        return sorted(agents, key=lambda u: u.login)

    async def kpi_report(self, agents: Sequence[User], first: date, last: date) -> dict[str, Any]:
        start, end = day_bounds(first, last, self.kpi.timezone)
        rows = await self.interactions.between(start, end, [a.login for a in agents])
        return {
            "from": first.isoformat(), "to": last.isoformat(), "timezone": self.kpi.timezone,
            "points": dict(self.kpi.points), "daily_target": self.kpi.daily_target,
            "agents": kpi_report(((i.login, i.kind, i.at, i.points) for i in rows), agents, self.kpi, first, last),
        }

    async def vip_plan(self, user: User) -> dict[str, Any]:
        """VIP contacts in ``user``'s scope who got fewer answered outbound calls
        this period than their shop asks, with their manager and last call."""
        now, plan = self.clock(), self.plans.current
        zones = {s.timezone for s in plan.shops.values()} | {self.kpi.timezone}
        since = min(period_bounds(now, zone, self.vip.period)[0] for zone in zones)
        people = self.people_of(user)
        behind: list[tuple[int, float, dict[str, Any]]] = []  # (shortfall, last call) for the order
        on_track = 0
        for contact in await vip_contacts(self.store, since):
            if people is not None and contact.manager not in people:
                continue
            shop = plan.shops.get(contact.shop or "") or (plan.shops.get(plan.default_shop or ""))
            start, end = period_bounds(now, shop.timezone if shop else self.kpi.timezone, self.vip.period)
            required = shop.vip_calls if shop and shop.vip_calls is not None else self.vip.calls
            done = sum(1 for t in contact.answered_outbound if start <= t < end)
            if done >= required:
                on_track += 1
                continue
            last = contact.last_call
            behind.append((done - required, last.started_at if last else 0.0, {
                "contact_id": contact.contact_id, "name": contact.name, "phones": list(contact.phones),
                "manager": contact.manager, "shop": shop.shop_id if shop else contact.shop,
                "shop_name": shop.name if shop else contact.shop,
                "timezone": shop.timezone if shop else self.kpi.timezone,
                "required": required, "done": done, "period_start": iso(start), "period_end": iso(end),
                "last_call": None if last is None else {
                    "call_id": last.call_id, "started_at": iso(last.started_at), "direction": last.direction,
                    "outcome": last.outcome, "caller": last.caller, "answered_by": last.answered_by,
                },
            }))
        # Furthest behind first; among equals, the one we spoke to longest ago.
        behind.sort(key=lambda item: (item[0], item[1]))
        return {"period": self.vip.period, "behind": [item[2] for item in behind], "on_track": on_track}
