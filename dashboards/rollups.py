"""Daily roll-ups of inbound calls per (day, shop, channel), kept as calls are stored.

Reports over a year of calls read a few thousand roll-up rows instead of a
million calls. Each inbound call's part of its day's and hour's rows is kept
(``rollup_parts``); when the call is stored again (or gets its result) its old
part is subtracted and the new one added in the same transaction, so a call
stored twice, late or out of order never counts twice, and storing a call
costs the same however many calls its day has. Sums are whole milliseconds:
integers do not drift. Unique callers cannot be summed from daily counts: the
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

# The call's contribution, as a rollup_parts row (?1 the call, ?2 the qualified results as JSON).
_PART = (
    "SELECT c.call_id, c.day, c.hour, coalesce(c.shop, ''), coalesce(c.channel, ''), c.outcome = 'answered', "
    "c.outcome = 'missed', c.outcome = 'abandoned', "
    "CASE WHEN c.outcome = 'answered' THEN CAST(round(c.ring_seconds * 1000) AS INTEGER) ELSE 0 END, "
    "CAST(round(c.talk_seconds * 1000) AS INTEGER), "
    "coalesce(r.result IN (SELECT value FROM json_each(?2)), 0) "
    "FROM calls AS c LEFT JOIN call_results AS r ON r.call_id = c.call_id "
    "WHERE c.direction = 'inbound' AND c.day IS NOT NULL AND c.hour IS NOT NULL"
)
_OLD = "FROM rollup_parts AS p WHERE p.call_id = ?1"
# A call stored again: its old part leaves its rows (rows left empty go), the new one comes in.
_UNDO = [
    "UPDATE rollup_daily AS d SET calls = d.calls - 1, answered = d.answered - p.answered, "
    "missed = d.missed - p.missed, abandoned = d.abandoned - p.abandoned, wait_ms = d.wait_ms - p.wait_ms, "
    f"talk_ms = d.talk_ms - p.talk_ms, qualified = d.qualified - p.qualified {_OLD} "
    "AND (d.day, d.shop, d.channel) = (p.day, p.shop, p.channel)",
    f"UPDATE rollup_hours AS h SET calls = h.calls - 1, missed = h.missed - p.missed - p.abandoned {_OLD} "
    "AND (h.day, h.hour, h.shop, h.channel) = (p.day, p.hour, p.shop, p.channel)",
    f"DELETE FROM rollup_daily WHERE calls = 0 AND (day, shop, channel) IN (SELECT p.day, p.shop, p.channel {_OLD})",
    f"DELETE FROM rollup_hours WHERE calls = 0 AND (day, hour, shop, channel) IN "
    f"(SELECT p.day, p.hour, p.shop, p.channel {_OLD})",
    "DELETE FROM rollup_parts WHERE call_id = ?1",
]
_DO = [
    f"INSERT INTO rollup_parts {_PART} AND c.call_id = ?1",
    "INSERT INTO rollup_daily (day, shop, channel, calls, answered, missed, abandoned, wait_ms, talk_ms, qualified) "
    "SELECT day, shop, channel, 1, answered, missed, abandoned, wait_ms, talk_ms, qualified FROM rollup_parts "
    "WHERE call_id = ?1 ON CONFLICT (day, shop, channel) DO UPDATE SET calls = calls + 1, "
    "answered = answered + excluded.answered, missed = missed + excluded.missed, "
    "abandoned = abandoned + excluded.abandoned, wait_ms = wait_ms + excluded.wait_ms, "
    "talk_ms = talk_ms + excluded.talk_ms, qualified = qualified + excluded.qualified",
    "INSERT INTO rollup_hours (day, hour, shop, channel, calls, missed) "
    "SELECT day, hour, shop, channel, 1, missed + abandoned FROM rollup_parts WHERE call_id = ?1 "
    "ON CONFLICT (day, hour, shop, channel) DO UPDATE SET calls = calls + 1, missed = missed + excluded.missed",
]
ALL = "*"  # caller_days' key for "every shop" / "every channel"
_CALLER = (
    "INSERT INTO caller_days (shop, channel, day, customer) "
    "SELECT CASE WHEN k.n IN (0, 2) THEN x.s ELSE '*' END, CASE WHEN k.n IN (0, 1) THEN x.c ELSE '*' END, "
    "x.day, x.customer "
    "FROM (SELECT coalesce(shop, '') AS s, coalesce(channel, '') AS c, day, customer FROM calls "
    "WHERE call_id = ?1 AND direction = 'inbound' AND customer IS NOT NULL AND day IS NOT NULL) AS x, "
    "(SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) AS k "
    "WHERE true ON CONFLICT DO NOTHING"
)
_BUCKET = "coalesce(substr(prev_day, 1, 7), '')"
# This caller's rows leave their counts before they change, and come back after:
# a record stored twice subtracts and adds the same, so nothing drifts.
_UNCOUNT = (
    f"UPDATE caller_day_counts SET n = n - 1 WHERE (shop, channel, day, prev_month) IN "
    f"(SELECT shop, channel, day, {_BUCKET} FROM caller_days WHERE customer = (SELECT customer FROM calls "
    "WHERE call_id = ?1))"
)
_COUNT = (
    f"INSERT INTO caller_day_counts (shop, channel, day, prev_month, n) SELECT shop, channel, day, {_BUCKET}, 1 "
    "FROM caller_days WHERE customer = (SELECT customer FROM calls WHERE call_id = ?1) "
    "AND true ON CONFLICT (shop, channel, day, prev_month) DO UPDATE SET n = n + 1"
)
# Every day of this caller, on every key, gets the day he called before there (a few rows: his days).
_PREV_DAYS = (
    "UPDATE caller_days SET prev_day = (SELECT max(d.day) FROM caller_days AS d WHERE d.customer = caller_days.customer "
    "AND d.shop = caller_days.shop AND d.channel = caller_days.channel AND d.day < caller_days.day) "
    "WHERE customer = (SELECT customer FROM calls WHERE call_id = ?1)"
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
        """Move the call's part of the roll-ups to what it is now (after its result changed, too)."""
        return [*((sql, (call_id,)) for sql in _UNDO), (_DO[0], (call_id, self.qualified)),
                *((sql, (call_id,)) for sql in _DO[1:]),
                (_UNCOUNT, (call_id,)), (_CALLER, (call_id,)), (_PREV_DAYS, (call_id,)), (_COUNT, (call_id,))]


# OR REPLACE / OR IGNORE: a call stored meanwhile may have written its part already.
_DAY_PARTS = f"INSERT OR REPLACE INTO rollup_parts {_PART} AND c.day = ?1"
_DAY_DAILY = (
    "INSERT OR REPLACE INTO rollup_daily (day, shop, channel, calls, answered, missed, abandoned, wait_ms, talk_ms, "
    "qualified) SELECT day, shop, channel, count(*), sum(answered), sum(missed), sum(abandoned), sum(wait_ms), "
    "sum(talk_ms), sum(qualified) FROM rollup_parts WHERE day = ?1 GROUP BY day, shop, channel"
)
_DAY_HOURS = (
    "INSERT OR REPLACE INTO rollup_hours (day, hour, shop, channel, calls, missed) "
    "SELECT day, hour, shop, channel, count(*), sum(missed + abandoned) FROM rollup_parts WHERE day = ?1 "
    "GROUP BY day, hour, shop, channel"
)
_DAY_CALLERS = (
    "INSERT OR IGNORE INTO caller_days (shop, channel, day, customer) "
    "SELECT DISTINCT CASE WHEN k.n IN (0, 2) THEN coalesce(c.shop, '') ELSE '*' END, "
    "CASE WHEN k.n IN (0, 1) THEN coalesce(c.channel, '') ELSE '*' END, c.day, c.customer "
    "FROM calls AS c, (SELECT 0 AS n UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) AS k "
    "WHERE c.day = ?1 AND c.direction = 'inbound' AND c.customer IS NOT NULL"
)
_ALL_PREV_DAYS = (
    "UPDATE caller_days SET prev_day = (SELECT max(d.day) FROM caller_days AS d WHERE d.customer = caller_days.customer "
    "AND d.shop = caller_days.shop AND d.channel = caller_days.channel AND d.day < caller_days.day)"
)


_ALL_COUNTS = (
    f"INSERT INTO caller_day_counts (shop, channel, day, prev_month, n) SELECT shop, channel, day, {_BUCKET}, count(*) "
    "FROM caller_days GROUP BY 1, 2, 3, 4"
)


async def rebuild(store: Store, rollups: Rollups, *, progress: Callable[[str, int, int], None] | None = None,
                  page: int = 20_000) -> int:
    """Recompute every call's local day and hour, then every day's roll-ups,
    set by set (a year of a million calls in seconds); how many calls.
    ``progress(stage, done, total)`` is told as it goes."""
    total = (await store.read("SELECT count(*) FROM calls"))[0][0]
    done, after = 0, ""
    while True:
        rows = await store.read("SELECT call_id, started_at FROM calls WHERE call_id > ? ORDER BY call_id LIMIT ?",
                                (after, page))
        if not rows:
            break
        await store.write(*(("UPDATE calls SET day = ?, hour = ? WHERE call_id = ?", (*rollups.local(at), call_id))
                            for call_id, at in rows))
        done += len(rows)
        after = rows[-1][0]
        if progress is not None:
            progress("calls", done, total)
    days = [day for (day,) in await store.read("SELECT DISTINCT day FROM calls WHERE day IS NOT NULL ORDER BY day")]
    await store.write(("DELETE FROM rollup_parts", ()), ("DELETE FROM rollup_daily", ()),
                      ("DELETE FROM rollup_hours", ()), ("DELETE FROM caller_days", ()),
                      ("DELETE FROM caller_day_counts", ()))
    for n, day in enumerate(days, start=1):
        await store.write((_DAY_PARTS, (day, rollups.qualified)), (_DAY_DAILY, (day,)), (_DAY_HOURS, (day,)),
                          (_DAY_CALLERS, (day,)))
        if progress is not None:
            progress("days", n, len(days))
    await store.write((_ALL_PREV_DAYS, ()), ("DELETE FROM caller_day_counts", ()), (_ALL_COUNTS, ()))
    return done
