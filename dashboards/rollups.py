"""Daily roll-ups of inbound calls per (day, shop, channel), kept as calls are stored.

Reports over a year of calls read a few thousand roll-up rows instead of a
million calls. A roll-up row is never incremented: each time a call of its
key is stored (or gets its result), the row is *recomputed* from that key's
calls in the same transaction, so a call stored twice, late or out of order
never counts twice. Unique callers cannot be summed from daily counts: the
(shop, channel, day, caller) set is kept for exact counts over any period.
``rebuild`` recomputes everything (after an upgrade, or to check).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from crm_bridge.store import Store
from gateway.record import CallRecord

Statement = tuple[str, tuple[Any, ...]]

_KEY = "(SELECT day, coalesce(shop, '') AS shop, coalesce(channel, '') AS channel FROM calls WHERE call_id = ?1)"
_OF_KEY = ("c.day = k.day AND coalesce(c.shop, '') = k.shop AND coalesce(c.channel, '') = k.channel "
           "AND c.direction = 'inbound'")
_DAILY = (
    "INSERT INTO rollup_daily (day, shop, channel, calls, answered, missed, abandoned, wait_sum, talk_sum, qualified) "
    "SELECT k.day, k.shop, k.channel, count(c.call_id), "
    "coalesce(sum(c.outcome = 'answered'), 0), coalesce(sum(c.outcome = 'missed'), 0), "
    "coalesce(sum(c.outcome = 'abandoned'), 0), "
    "coalesce(sum(CASE WHEN c.outcome = 'answered' THEN c.ring_seconds ELSE 0 END), 0), "
    "coalesce(sum(c.talk_seconds), 0), "
    "coalesce(sum(r.result IN (SELECT value FROM json_each(?2))), 0) "
    f"FROM {_KEY} AS k JOIN calls AS c ON {_OF_KEY} LEFT JOIN call_results AS r ON r.call_id = c.call_id "
    "WHERE k.day IS NOT NULL GROUP BY k.day, k.shop, k.channel "
    "ON CONFLICT (day, shop, channel) DO UPDATE SET calls = excluded.calls, answered = excluded.answered, "
    "missed = excluded.missed, abandoned = excluded.abandoned, wait_sum = excluded.wait_sum, "
    "talk_sum = excluded.talk_sum, qualified = excluded.qualified"
)
_HOURS = (
    "INSERT INTO rollup_hours (day, shop, channel, hour, calls, missed) "
    "SELECT k.day, k.shop, k.channel, c.hour, count(*), sum(c.outcome IN ('missed', 'abandoned')) "
    f"FROM {_KEY} AS k JOIN calls AS c ON {_OF_KEY} AND c.hour = (SELECT hour FROM calls WHERE call_id = ?1) "
    "WHERE k.day IS NOT NULL GROUP BY k.day, k.shop, k.channel, c.hour "
    "ON CONFLICT (day, shop, channel, hour) DO UPDATE SET calls = excluded.calls, missed = excluded.missed"
)
_CALLER = (
    "INSERT INTO caller_days (day, shop, channel, customer) "
    "SELECT day, coalesce(shop, ''), coalesce(channel, ''), customer FROM calls "
    "WHERE call_id = ?1 AND direction = 'inbound' AND customer IS NOT NULL AND day IS NOT NULL "
    "ON CONFLICT DO NOTHING"
)


class Rollups:
    """The statements that keep roll-ups right; ``zone``: the reports' time zone;
    ``qualified``: the call results that make a call qualified."""

    def __init__(self, zone: str = "Europe/Moscow", qualified: Sequence[str] = ("order",)) -> None:
        self.zone = ZoneInfo(zone)
        self.qualified = json.dumps(list(qualified))

    def local(self, at: float) -> tuple[str, int]:
        moment = datetime.fromtimestamp(at, self.zone)
        return moment.date().isoformat(), moment.hour

    def call_statements(self, record: CallRecord) -> list[Statement]:
        """With a call's record: its local day and hour, then its key's roll-ups."""
        day, hour = self.local(record.started_at)
        return [("UPDATE calls SET day = ?, hour = ? WHERE call_id = ?", (day, hour, record.call_id)),
                *self.refresh(record.call_id)]

    def refresh(self, call_id: str) -> list[Statement]:
        """Recompute the roll-ups of the call's key (after its result changed, too)."""
        return [(_DAILY, (call_id, self.qualified)), (_HOURS, (call_id,)), (_CALLER, (call_id,))]


async def rebuild(store: Store, rollups: Rollups, *, progress: Callable[[int, int], None] | None = None,
                  page: int = 5000) -> int:
    """Recompute every call's day and hour and every roll-up; how many calls."""
    total = (await store.read("SELECT count(*) FROM calls"))[0][0]
    await store.write(("DELETE FROM rollup_daily", ()), ("DELETE FROM rollup_hours", ()),
                      ("DELETE FROM caller_days", ()))
    done, after = 0, ""
    while True:
        rows = await store.read("SELECT call_id, started_at FROM calls WHERE call_id > ? ORDER BY call_id LIMIT ?",
                                (after, page))
        if not rows:
            break
        statements: list[Statement] = []
        for call_id, started_at in rows:
            day, hour = rollups.local(started_at)
            statements.append(("UPDATE calls SET day = ?, hour = ? WHERE call_id = ?", (day, hour, call_id)))
        await store.write(*statements)
        keys = await store.read(
            f"SELECT min(call_id) FROM calls WHERE call_id IN ({', '.join('?' for _ in rows)}) "
            "GROUP BY day, coalesce(shop, ''), coalesce(channel, ''), hour", tuple(r[0] for r in rows))
        await store.write(*(s for (call_id,) in keys for s in rollups.refresh(call_id)),
                          *((_CALLER, (call_id,)) for call_id, _ in rows))
        done += len(rows)
        after = rows[-1][0]
        if progress is not None:
            progress(done, total)
    return done
