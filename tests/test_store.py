"""The call store on real SQLite files: round trip, upsert, batching, crashes, migrations, failures."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from crm_bridge.migrations import LATEST_VERSION, MIGRATIONS, MigrationError, migrate, split_statements
from crm_bridge.store import Store, StoreError
from gateway.record import CallRecord, LegRecord
from tests.store_writer_child import record_for

REPO_ROOT = Path(__file__).resolve().parent.parent


def leg(leg_id: str, started_at: float, **changes: object) -> LegRecord:
    base = LegRecord(
        leg_id=leg_id,
        kind="agent",
        extension="101",
        number=None,
        started_at=started_at,
        answered_at=None,
        ended_at=started_at + 10.0,
        hangup_cause=16,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def call(call_id: str, started_at: float = 1_700_000_000.0, **changes: object) -> CallRecord:
    """A fully populated answered call; ``changes`` override fields."""
    base = CallRecord(
        call_id=call_id,
        direction="inbound",
        caller="+79991234567",
        caller_name="Мария Иванова",
        dialled="+74951112233",
        outcome="answered",
        answered_by="102",
        rang=("101", "102"),
        talked=("102", "105"),
        started_at=started_at,
        answered_at=started_at + 3.125,
        ended_at=started_at + 93.5,
        ring_seconds=3.125,
        talk_seconds=90.375,
        hangup_cause=16,
        reason=None,
        interrupted=False,
        ended=True,
        recording_path="2024/01/02/rec.wav",
        legs=(
            leg(f"{call_id}.0", started_at, kind="caller", extension=None, number="+79991234567"),
            leg(f"{call_id}.1", started_at + 0.5, answered_at=None, hangup_cause=19),
            leg(f"{call_id}.2", started_at + 0.5, answered_at=started_at + 3.125),
        ),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "calls.db")
    try:
        yield s
    finally:
        await s.close()


async def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    async with aiosqlite.connect(path) as db:
        return [tuple(r) for r in await db.execute_fetchall(sql)]


# -- round trip --------------------------------------------------------------


async def test_saved_call_reads_back_equal(store: Store) -> None:
    full = call("c-full")
    sparse = CallRecord(
        call_id="c-sparse",
        direction="outbound",
        caller="101",
        caller_name=None,
        dialled=None,
        outcome="failed",
        answered_by=None,
        rang=(),
        talked=(),
        started_at=1_700_000_100.0,
        answered_at=None,
        ended_at=None,
        ring_seconds=0.0,
        talk_seconds=0.0,
        hangup_cause=None,
        reason="congestion",
        interrupted=True,
        ended=False,
    )
    await store.save_call(full)
    await store.save_call(sparse)

    assert await store.calls() == [full, sparse]


async def test_since_filters_inclusively_and_orders_by_start_then_id(store: Store) -> None:
    t = 1_700_000_000.0
    records = [call("b", t + 10), call("a", t + 10), call("z", t), call("m", t + 20)]
    await asyncio.gather(*(store.save_call(r) for r in records))

    assert [c.call_id for c in await store.calls()] == ["z", "a", "b", "m"]
    assert [c.call_id for c in await store.calls(since=t + 10)] == ["a", "b", "m"]
    assert [c.call_id for c in await store.calls(since=t + 10.5)] == ["m"]
    assert await store.calls(since=t + 21) == []


async def test_legs_come_back_ordered_by_start_then_leg_id(store: Store) -> None:
    t = 1_700_000_000.0
    shuffled = call("c1", t, legs=(leg("z", t + 2), leg("b", t + 1), leg("a", t + 1)))
    await store.save_call(shuffled)

    (stored,) = await store.calls()
    assert [lg.leg_id for lg in stored.legs] == ["a", "b", "z"]
    in_order = sorted(shuffled.legs, key=lambda lg: (lg.started_at, lg.leg_id))
    assert stored == dataclasses.replace(shuffled, legs=tuple(in_order))


# -- upsert ------------------------------------------------------------------


async def test_call_finished_twice_is_stored_once_and_the_second_wins(store: Store) -> None:
    first = call("c1", outcome="missed", answered_by=None, talked=(), reason="noanswer")
    second = call(
        "c1",
        legs=(call("c1").legs[0], leg("c1.9", first.started_at + 1, answered_at=first.started_at + 2)),
    )
    await store.save_call(first)
    await store.save_call(second)

    assert await store.calls() == [second]
    assert await rows(store.path, "SELECT count(*) FROM calls") == [(1,)]
    assert await rows(store.path, "SELECT leg_id FROM call_legs ORDER BY leg_id") == [("c1.0",), ("c1.9",)]


async def test_same_call_twice_in_one_batch_keeps_the_later(store: Store) -> None:
    first = call("c1", outcome="missed")
    second = call("c1", outcome="answered", caller_name="later")
    # Both land in one batch; the same leg ids in both must not collide.
    await asyncio.gather(store.save_call(first), store.save_call(second))

    assert store.commits == 1
    assert await store.calls() == [second]
    assert await rows(store.path, "SELECT count(*) FROM call_legs") == [(3,)]


async def test_updated_at_is_set_on_every_upsert(store: Store) -> None:
    await store.save_call(call("c1"))
    [(first,)] = await rows(store.path, "SELECT updated_at FROM calls")
    await asyncio.sleep(0.01)
    await store.save_call(call("c1", outcome="missed"))
    [(second,)] = await rows(store.path, "SELECT updated_at FROM calls")

    assert isinstance(first, float) and isinstance(second, float)
    assert second > first


async def test_record_with_duplicate_leg_ids_fails_alone(store: Store) -> None:
    t = 1_700_000_000.0
    bad = call("bad", legs=(leg("x", t), leg("x", t + 1)))
    results = await asyncio.gather(
        store.save_call(call("good-1")), store.save_call(bad), store.save_call(call("good-2")),
        return_exceptions=True,
    )

    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreError)
    assert "two legs with id 'x'" in str(results[1])
    assert [c.call_id for c in await store.calls()] == ["good-1", "good-2"]


# -- batching ----------------------------------------------------------------


async def test_concurrent_saves_are_batched(store: Store) -> None:
    records = [call(f"c{i:04d}", 1_700_000_000.0 + i) for i in range(1000)]
    await asyncio.gather(*(store.save_call(r) for r in records))

    assert await store.calls() == records
    # 1,000 saves, batch_max 500: a couple of transactions, far from one each.
    assert 2 <= store.commits <= 10


async def test_reads_alongside_writes_see_only_whole_committed_batches(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "calls.db", batch_max=20, batch_delay=0)
    try:
        records = [call(f"c{i:03d}", 1_700_000_000.0 + i) for i in range(400)]
        writing = asyncio.ensure_future(asyncio.gather(*(store.save_call(r) for r in records)))
        seen: list[list[CallRecord]] = []
        while not writing.done():
            seen.append(await store.calls())
        await writing

        # Batches commit in queue order, so what a read sees is a prefix of
        # the records, every call with all its legs, never a batch in progress.
        for snapshot in seen:
            assert snapshot == records[: len(snapshot)]
        assert any(0 < len(snapshot) < len(records) for snapshot in seen)
        assert await store.calls() == records
    finally:
        await store.close()


# -- crash -------------------------------------------------------------------


@pytest.mark.parametrize("kill_after", [1, 37, 250])
async def test_database_survives_the_process_being_killed(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "calls.db"
    total = 1000
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.store_writer_child", str(path), str(total), str(kill_after),
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), timeout=60)

    assert child.returncode == -signal.SIGKILL, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == kill_after
    saved = {line.removeprefix("saved ") for line in lines}

    assert await rows(path, "PRAGMA integrity_check") == [("ok",)]
    reopened = await Store.open(path)
    try:
        stored = {c.call_id: c for c in await reopened.calls()}
    finally:
        await reopened.close()
    assert saved <= stored.keys()
    # Killed before the end, and nothing torn: every stored call is whole, legs included.
    assert len(stored) < total
    for call_id, record in stored.items():
        assert record == record_for(int(call_id.removeprefix("kill-")))


# -- migrations ----------------------------------------------------------------


def test_migration_versions_run_from_one_without_gaps() -> None:
    assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert LATEST_VERSION == MIGRATIONS[-1][0] >= 2


def test_split_statements_respects_literals_and_trailing_comments() -> None:
    script = "CREATE TABLE t (a TEXT DEFAULT ';');\nINSERT INTO t VALUES ('x;y'); -- done;\n-- the end\n"
    assert split_statements(script) == [
        "CREATE TABLE t (a TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('x;y');",
    ]
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (a); CREATE TABLE u (b")


async def test_version_1_file_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    (version, script) = MIGRATIONS[0]
    async with aiosqlite.connect(path) as db:
        await db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
        await db.execute(
            "INSERT INTO calls (call_id, direction, outcome, rang, talked, started_at,"
            " ring_seconds, talk_seconds, interrupted, ended)"
            " VALUES ('old-1', 'inbound', 'missed', '[\"101\"]', '[]', 1600000000.0, 20.0, 0.0, 0, 1)"
        )
        await db.execute(
            "INSERT INTO call_legs (call_id, leg_id, kind, started_at)"
            " VALUES ('old-1', 'l1', 'caller', 1600000000.0)"
        )
        await db.commit()

    store = await Store.open(path)
    try:
        assert await store.schema_version() == LATEST_VERSION
        (old,) = await store.calls()
        assert (old.call_id, old.outcome, old.rang, old.talked, old.ended) == (
            "old-1", "missed", ("101",), (), True,
        )
        assert [lg.leg_id for lg in old.legs] == ["l1"]
    finally:
        await store.close()
    columns = [r[1] for r in await rows(path, "PRAGMA table_info(calls)")]
    assert "updated_at" in columns
    assert await rows(path, "SELECT updated_at FROM calls") == [(None,)]


async def test_failed_migration_step_leaves_the_file_at_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    bad_step = "CREATE TABLE half_done (a); INSERT INTO no_such_table VALUES (1);"
    broken = [*MIGRATIONS, (LATEST_VERSION + 1, bad_step)]
    async with aiosqlite.connect(path) as db:
        with pytest.raises(MigrationError, match=f"version {LATEST_VERSION + 1}.*no such table"):
            await migrate(db, broken)
        assert await migrate(db) == LATEST_VERSION  # and the good steps are there
    assert await rows(path, "SELECT name FROM sqlite_master WHERE name = 'half_done'") == []


async def test_file_from_newer_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    async with aiosqlite.connect(path) as db:
        await db.execute(f"PRAGMA user_version = {LATEST_VERSION + 5}")

    with pytest.raises(StoreError, match=rf"{path}.*schema version {LATEST_VERSION + 5} is newer"):
        await Store.open(path)


async def test_open_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "calls.db"
    store = await Store.open(str(path))
    try:
        assert store.path == path
        await store.save_call(call("c1"))
    finally:
        await store.close()
    assert await rows(path, "PRAGMA journal_mode") == [("wal",)]


async def test_unopenable_file_is_a_store_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "not-a-db"
    path.write_bytes(b"this is not a sqlite database, just some bytes" * 100)

    with pytest.raises(StoreError, match=str(path)):
        await Store.open(path)


# -- failure -------------------------------------------------------------------


async def test_a_locked_file_keeps_saves_waiting_and_they_commit_when_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    store = await Store.open(path, busy_timeout_ms=50)
    try:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # holds the write lock: our BEGIN IMMEDIATE times out, and is retried
            saves = [asyncio.create_task(store.save_call(call(f"kept-{i}"))) for i in range(5)]
            while store.commit_failures < 2:
                await asyncio.sleep(0.01)
            assert store.is_retrying and not any(s.done() for s in saves)
            other.execute("ROLLBACK")
        finally:
            other.close()
        await asyncio.gather(*saves)

        assert not store.is_retrying and store.commits == 1
        assert [c.call_id for c in await store.calls()] == [f"kept-{i}" for i in range(5)]
    finally:
        await store.close()


async def test_record_the_schema_rejects_fails_its_batch_and_the_next_one_commits(store: Store) -> None:
    # Typed code cannot build this record; a bug elsewhere could. The failure
    # comes mid-transaction, so the writer must roll back before going on.
    broken = call("broken", outcome=None)
    with pytest.raises(StoreError, match="NOT NULL constraint failed: calls.outcome"):
        await store.save_call(broken)

    await store.save_call(call("fine"))
    assert [c.call_id for c in await store.calls()] == ["fine"]
    assert store.commits == 1


# -- close ---------------------------------------------------------------------


async def test_close_flushes_pending_saves_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "calls.db"
    store = await Store.open(path, batch_delay=0.05)
    records = [call(f"c{i:03d}", 1_700_000_000.0 + i) for i in range(50)]
    saves = [asyncio.create_task(store.save_call(r)) for r in records]
    await asyncio.sleep(0)  # saves are queued, none committed yet

    await asyncio.gather(store.close(), store.close())
    await store.close()

    assert all(s.done() and s.exception() is None for s in saves)
    with pytest.raises(StoreError, match="closed"):
        await store.save_call(call("too-late"))
    with pytest.raises(StoreError, match="closed"):
        await store.calls()

    reopened = await Store.open(path)
    try:
        assert await reopened.calls() == records
    finally:
        await reopened.close()


async def test_close_waits_for_saves_still_waiting_for_queue_room(tmp_path: Path) -> None:
    # More saves than the queue holds: some are blocked in put() when close() starts.
    path = tmp_path / "calls.db"
    store = await Store.open(path)
    n = 10_500
    records = [call(f"c{i:05d}", 1_700_000_000.0 + i, legs=()) for i in range(n)]
    saves = [asyncio.create_task(store.save_call(r)) for r in records]
    await asyncio.sleep(0)
    await store.close()

    assert all(s.done() and s.exception() is None for s in saves)
    assert await rows(path, "SELECT count(*) FROM calls") == [(n,)]
