"""The call store: finished calls on a SQLite file, written in batches.

``save_call`` returns only once the record is committed (WAL, synchronous=FULL),
so a caller may acknowledge upstream (a webhook's 2xx) right after it. One
writer task takes saves from a bounded queue and commits whatever has gathered
(up to ``batch_max``, waiting at most ``batch_delay`` for more) in one
transaction, so a burst costs a few fsyncs, not one per call.

Calls are keyed by ``call_id``: saving a call again updates its row in place
(the later save wins) and replaces its legs.

A commit that fails for a passing reason (the file locked by another process,
the disk full, an I/O error) is retried with backoff, the same batch, for as
long as it takes (``close`` gives up after ``close_grace``): savers keep
waiting, nothing is dropped, and new saves queue behind it up to
``queue_max``; then ``save_call`` waits for room and ``write_nowait`` refuses
at once with ``StoreFull`` (a webhook answers 503). Any other failure is the
data's or the code's: the batch is split until the save at fault fails alone
with ``StoreError`` and the others commit. The metrics read ``queue_depth``,
``commit_failures`` and ``is_retrying``.

All SQLite work runs off the event loop: the writer on a thread of its own
with a plain sqlite3 connection (a batch is one call into that thread),
queries on an aiosqlite read-only connection, which in WAL mode reads a
committed snapshot while the writer works and never sees a batch half-written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from gateway.record import CallRecord, LegRecord

from . import migrations
from .migrations import MigrationError, migrate

__all__ = ["Store", "StoreError", "StoreFull"]

log = logging.getLogger(__name__)

QUEUE_MAX = 10_000
RETRY_FIRST = 0.05  # seconds before the first retry of a commit that failed for a passing reason
RETRY_MAX = 2.0  # the backoff's ceiling (a locked file also waits busy_timeout inside each attempt)
CLOSE_GRACE = 10.0  # seconds close() lets a failing commit go on retrying before failing what is left
# SQLite's primary result codes of a commit that may succeed later, unchanged:
# BUSY, LOCKED (another connection or process), IOERR, FULL (the disk), CANTOPEN.
_PASSING = {5, 6, 10, 13, 14}


class StoreError(Exception):
    """The call store could not do what was asked; the message names the file."""


class StoreFull(StoreError):
    """``write_nowait`` found the queue full: nothing was queued; try again later."""


_CALL_COLUMNS = (
    "call_id",
    "direction",
    "caller",
    "caller_name",
    "dialled",
    "outcome",
    "answered_by",
    "rang",
    "talked",
    "started_at",
    "answered_at",
    "ended_at",
    "ring_seconds",
    "talk_seconds",
    "hangup_cause",
    "reason",
    "interrupted",
    "ended",
    "recording_path",
    "shop",
    "channel",
    "customer",
)
_LEG_COLUMNS = (
    "call_id",
    "leg_id",
    "kind",
    "extension",
    "number",
    "started_at",
    "answered_at",
    "ended_at",
    "hangup_cause",
)

# An upsert, not INSERT OR REPLACE: REPLACE deletes the old row first, which
# would cascade to everything that references the call (legs today; tasks and
# contact links later) and change its rowid.
_UPSERT_CALL = (
    f"INSERT INTO calls ({', '.join(_CALL_COLUMNS)}, updated_at) "
    f"VALUES ({', '.join('?' for _ in _CALL_COLUMNS)}, ?) "
    "ON CONFLICT (call_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in (*_CALL_COLUMNS[1:], "updated_at"))
    # A call whose customer was erased on request stays erased, whatever comes in later.
    + " WHERE calls.customer IS NULL OR calls.customer NOT LIKE 'erased:%'"
)
_DELETE_LEGS = (  # (an erased call keeps its anonymised legs; see _UPSERT_CALL)
    "DELETE FROM call_legs WHERE call_id = ?1 "
    "AND NOT EXISTS (SELECT 1 FROM calls WHERE call_id = ?1 AND customer LIKE 'erased:%')"
)
_INSERT_LEG = (  # OR IGNORE: only an erased call's legs, kept by _DELETE_LEGS, can be there already
    f"INSERT OR IGNORE INTO call_legs ({', '.join(_LEG_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _LEG_COLUMNS)})"
)
_SELECT_CALLS = f"SELECT {', '.join(_CALL_COLUMNS)} FROM calls"
_SELECT_LEGS = (
    f"SELECT {', '.join('l.' + c for c in _LEG_COLUMNS)} "
    "FROM call_legs AS l JOIN calls AS c ON c.call_id = l.call_id"
)


@dataclass(slots=True)
class _Pending:
    """A call record to upsert and statements to run after it (or only statements), in one batch."""

    record: CallRecord | None
    done: asyncio.Future[None]
    statements: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    @property
    def label(self) -> str:
        return f"call {self.record.call_id}" if self.record is not None else "write"


@dataclass(frozen=True, slots=True)
class CallSummary:
    """A call as the caller card and the recent-calls list show it."""

    call_id: str
    started_at: float
    direction: str
    caller: str | None
    dialled: str | None
    outcome: str
    answered_by: str | None
    talk_seconds: float
    result: str | None
    note: str | None


_SELECT_SUMMARY = (
    "SELECT c.call_id, c.started_at, c.direction, c.caller, c.dialled, c.outcome, c.answered_by, "
    "c.talk_seconds, r.result, r.note FROM calls AS c LEFT JOIN call_results AS r ON r.call_id = c.call_id"
)


class Store:
    """Finished calls on one SQLite file. Create with ``await Store.open(path)``."""

    path: Path
    commits: int  # write transactions committed so far (shows batching)
    commit_failures: int  # commit attempts that failed, retried or not (metrics)

    def __init__(
        self,
        path: Path,
        writer: _WriterThread,
        reader_db: aiosqlite.Connection,
        *,
        batch_max: int,
        batch_delay: float,
        queue_max: int,
        close_grace: float,
    ) -> None:
        # Use ``Store.open``: this only wires up connections that are ready.
        self.path = path
        self.commits = 0
        self.commit_failures = 0
        self.queue_max = queue_max
        self._close_grace = close_grace
        self._writer_thread = writer
        self._reader_db = reader_db
        self._batch_max = batch_max
        self._batch_delay = batch_delay
        # None is the writer's stop signal, put by close() after the last save.
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(maxsize=queue_max)
        self._retrying = False
        self._give_up_at: float | None = None  # set by close(): when retrying stops
        self._closing = False
        self._closed = False
        self._close_lock = asyncio.Lock()
        self._saves_in_progress = 0
        self._no_saves_in_progress = asyncio.Event()
        self._no_saves_in_progress.set()
        self._failing = False  # log a run of failed commits once, not per batch
        # One read transaction at a time on the reader connection.
        self._read_lock = asyncio.Lock()
        self._writer = asyncio.create_task(self._run_writer(), name=f"call store writer {path}")

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        batch_max: int = 500,
        batch_delay: float = 0.005,
        busy_timeout_ms: int = 5000,
        queue_max: int = QUEUE_MAX,
        close_grace: float = CLOSE_GRACE,
    ) -> Store:
        """Open (creating if needed) the store at ``path`` and bring its schema up to date.

        ``busy_timeout_ms`` is how long a statement waits for another
        connection's lock before the attempt fails (and is retried);
        ``queue_max``: saves that may wait for the writer; ``close_grace``:
        how long ``close`` lets a failing commit go on retrying.
        """
        if batch_max < 1:
            raise ValueError(f"batch_max must be at least 1, not {batch_max}")
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, not {queue_max}")
        if batch_delay < 0:
            raise ValueError(f"batch_delay must not be negative, not {batch_delay}")
        path = Path(path)
        try:
            # A few microseconds of filesystem work, once, at startup.
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path}: cannot create the directory for the call store: {exc}") from exc

        writer_db = await _connect(path, busy_timeout_ms, step="open the call store")
        try:
            mode = await _pragma(writer_db, "journal_mode = WAL")
            if str(mode).lower() != "wal":
                raise StoreError(f"{path}: SQLite would not switch to WAL mode (got {mode!r})")
            await _pragma(writer_db, "synchronous = FULL")
            await _pragma(writer_db, "foreign_keys = ON")
            await migrate(writer_db)
        except BaseException as exc:
            await _close_quietly(writer_db)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: cannot prepare the call store: {exc}") from exc
            if isinstance(exc, MigrationError):
                raise StoreError(f"{path}: {exc}") from exc
            raise
        await _close_quietly(writer_db)  # schema ready; the writer's own thread takes over
        writer = _WriterThread(path)
        try:
            await writer.open(busy_timeout_ms)
        except sqlite3.Error as exc:
            await writer.close()
            raise StoreError(f"{path}: cannot open the call store's writer: {exc}") from exc

        try:
            reader_db = await _connect(path, busy_timeout_ms, step="open a reader on the call store")
            try:
                await _pragma(reader_db, "query_only = ON")
            except BaseException as exc:
                await _close_quietly(reader_db)
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{path}: cannot open a reader on the call store: {exc}") from exc
                raise
        except BaseException:
            await writer.close()
            raise

        return cls(path, writer, reader_db, batch_max=batch_max, batch_delay=batch_delay, queue_max=queue_max,
                   close_grace=close_grace)

    @property
    def queue_depth(self) -> int:
        """Saves waiting for the writer (not counting the batch it is writing)."""
        return self._queue.qsize()

    @property
    def is_retrying(self) -> bool:
        """The writer is retrying a commit that failed for a passing reason."""
        return self._retrying

    async def save_call(self, record: CallRecord, *, also: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> None:
        """Store ``record`` (replacing an earlier version of the call); return once committed.

        ``also``: statements that belong with the record (its contact, its
        callback task, its KPI points), run right after it in the same
        transaction, so a crash never keeps the call and loses what follows
        from it. Waits for room when the queue of pending saves is full.
        Cancelling the caller does not withdraw a record already queued.
        """
        if self._closing:
            raise StoreError(f"{self.path}: the call store is closed; call {record.call_id} not saved")
        _check_record(self.path, record)
        await self._enqueue(record, tuple(also))

    async def set_result(self, call_id: str, result: str, note: str | None, set_by: str, at: float,
                         *, also: Sequence[tuple[str, tuple[Any, ...]]] = ()) -> None:
        """Record (or replace) the agent's result and note for a call (with
        ``also``, e.g. the roll-ups it changes); returns once committed."""
        sql = (
            "INSERT INTO call_results (call_id, result, note, set_by, set_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (call_id) DO UPDATE SET result = excluded.result, note = excluded.note, "
            "set_by = excluded.set_by, set_at = excluded.set_at"
        )
        await self.write((sql, (call_id, result, note, set_by, at)), *also)

    async def write(self, *statements: tuple[str, tuple[Any, ...]]) -> None:
        """Run statements in the writer's next batch (one transaction with the
        calls around it); returns once committed. The one door for writes, so
        every module that keeps data in this file shares the batching."""
        if self._closing:
            raise StoreError(f"{self.path}: the call store is closed; write not done")
        await self._enqueue(None, tuple(statements))

    def write_nowait(self, *statements: tuple[str, tuple[Any, ...]]) -> asyncio.Future[None]:
        """Queue statements like ``write`` but never wait for room: ``StoreFull``
        at once when the queue is full (a webhook then answers 503 rather than
        hold its provider). The future is done once committed."""
        if self._closing:
            raise StoreError(f"{self.path}: the call store is closed; write not done")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            # Queued ahead of close()'s stop signal (that comes after _closing), so always written.
            self._queue.put_nowait(_Pending(None, done, tuple(statements)))
        except asyncio.QueueFull:
            raise StoreFull(f"{self.path}: {self.queue_max} writes are waiting already; write not queued") from None
        return done

    async def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Rows of one query on the reader connection (a committed snapshot)."""
        self._check_open()
        try:
            async with self._read_lock:
                return list(await self._reader_db.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read: {exc}") from exc

    async def _enqueue(self, record: CallRecord | None, statements: tuple[tuple[str, tuple[Any, ...]], ...]) -> None:
        self._saves_in_progress += 1
        self._no_saves_in_progress.clear()
        try:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            await self._queue.put(_Pending(record, done, statements))
            await done
        finally:
            self._saves_in_progress -= 1
            if self._saves_in_progress == 0:
                self._no_saves_in_progress.set()

    async def calls_with_number(
        self, numbers: Sequence[str], *, limit: int = 5, exclude: str | None = None
    ) -> list[CallSummary]:
        """The latest calls from or to any of ``numbers`` (the ways one number is
        written: +7916..., 8916...), newest first: the card's history."""
        if not numbers:
            return []
        marks = ", ".join("?" for _ in numbers)
        return await self._summaries(
            f"{_SELECT_SUMMARY} WHERE (c.caller IN ({marks}) OR c.dialled IN ({marks})) AND c.call_id != ? "
            "ORDER BY c.started_at DESC LIMIT ?",
            (*numbers, *numbers, exclude or "", limit),
        )

    async def calls_of_agent(self, extensions: Sequence[str], *, limit: int = 20) -> list[CallSummary]:
        """The latest calls that rang or were placed by one of ``extensions``, newest first."""
        marks = ", ".join("?" for _ in extensions)
        return await self._summaries(
            f"{_SELECT_SUMMARY} WHERE c.call_id IN (SELECT call_id FROM call_legs WHERE extension IN ({marks})) "
            "ORDER BY c.started_at DESC LIMIT ?",
            (*extensions, limit),
        )

    async def call_summary(self, call_id: str) -> CallSummary | None:
        rows = await self._summaries(f"{_SELECT_SUMMARY} WHERE c.call_id = ?", (call_id,))
        return rows[0] if rows else None

    async def _summaries(self, sql: str, params: tuple[Any, ...]) -> list[CallSummary]:
        return [CallSummary(*row) for row in await self.read(sql, params)]

    async def call(self, call_id: str) -> CallRecord | None:
        """One call's record with its legs, or None."""
        rows = await self.read(f"{_SELECT_CALLS} AS c WHERE c.call_id = ?", (call_id,))
        if not rows:
            return None
        legs = await self.read(f"{_SELECT_LEGS} WHERE l.call_id = ? ORDER BY l.started_at, l.leg_id", (call_id,))
        return _call_from_row(rows[0], [_leg_from_row(leg) for leg in legs])

    async def calls(self, *, since: float | None = None) -> list[CallRecord]:
        """Stored calls with ``started_at >= since`` (all when None), oldest first.

        Ordered by (started_at, call_id); legs by (started_at, leg_id).
        """
        self._check_open()
        where, params = ("", ()) if since is None else (" WHERE c.started_at >= ?", (since,))
        db = self._reader_db
        try:
            async with self._read_lock:
                try:
                    # One read transaction: both queries see the same snapshot.
                    await db.execute("BEGIN")
                    call_rows = await db.execute_fetchall(
                        f"{_SELECT_CALLS} AS c{where} ORDER BY c.started_at, c.call_id", params
                    )
                    leg_rows = await db.execute_fetchall(
                        f"{_SELECT_LEGS}{where} ORDER BY l.call_id, l.started_at, l.leg_id", params
                    )
                finally:
                    # Also after a cancel: an open read transaction would pin
                    # the WAL (no checkpoint past it) and break the next BEGIN.
                    await _rollback_quietly(db)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read calls: {exc}") from exc

        legs: dict[str, list[LegRecord]] = {}
        for row in leg_rows:
            legs.setdefault(row[0], []).append(_leg_from_row(row))
        return [_call_from_row(row, legs.get(row[0], ())) for row in call_rows]

    async def schema_version(self) -> int:
        self._check_open()
        try:
            return await migrations.schema_version(self._reader_db)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot read the schema version: {exc}") from exc

    async def close(self) -> None:
        """Write every save already accepted, stop the writer, close the file. Idempotent."""
        self._closing = True  # refuse new saves from here on
        if self._give_up_at is None:  # a commit that keeps failing must not hold the shutdown for ever
            self._give_up_at = asyncio.get_running_loop().time() + self._close_grace
        async with self._close_lock:
            if self._closed:
                return
            # Saves already inside save_call (even ones still waiting for
            # queue room) are written before the stop signal, so none is
            # stranded behind it.
            if not self._writer.done():
                idle = asyncio.ensure_future(self._no_saves_in_progress.wait())
                try:
                    # (or the writer died: then nobody would make us idle)
                    await asyncio.wait([idle, self._writer], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    idle.cancel()
                if not self._writer.done():
                    await self._queue.put(None)
                    await asyncio.wait([self._writer])
            self._fail_stranded()
            self._closed = True
            await _close_quietly(self._reader_db)
            await self._writer_thread.close()

    # -- the writer ------------------------------------------------------

    async def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            stopping = self._take_more(batch)
            if not stopping and len(batch) < self._batch_max and self._batch_delay > 0:
                await asyncio.sleep(self._batch_delay)
                stopping = self._take_more(batch)
            await self._commit(batch)

    def _take_more(self, batch: list[_Pending]) -> bool:
        """Move queued saves into ``batch`` up to batch_max; True if the stop signal came."""
        while len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    async def _commit(self, batch: list[_Pending]) -> None:
        """Commit ``batch``: retry a passing failure until it goes (or close
        gives up); split the batch on any other, so only the save at fault fails."""
        delay = RETRY_FIRST
        failure: Exception | None = None
        passing = False
        while True:
            try:
                try:
                    await self._write(batch)
                    failure = None
                    break
                except Exception as exc:  # rolled back already, in the writer's thread
                    failure = exc
                self.commit_failures += 1
                passing = _is_passing(failure)
                self._log_failure(batch, failure, passing)
                if not passing or self._giving_up():
                    break
                self._retrying = True
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, RETRY_MAX)
            except asyncio.CancelledError:
                # The writer is being torn down from outside (loop shutdown): the
                # batch may or may not have been committed, so say so.
                self._fail(batch, "the call store writer was cancelled; the record may not be saved")
                raise
        self._retrying = False
        if failure is not None:
            if not passing and len(batch) > 1:
                half = len(batch) // 2  # in order: a later save of a call still wins
                await self._commit(batch[:half])
                await self._commit(batch[half:])
            else:
                self._fail(batch, f"commit of a batch of {len(batch)} call record(s) failed", failure)
            return
        if self._failing:
            log.warning("%s: commits succeed again (%d failed attempt(s) so far)", self.path, self.commit_failures)
            self._failing = False
        self.commits += 1
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    def _giving_up(self) -> bool:
        return self._give_up_at is not None and asyncio.get_running_loop().time() >= self._give_up_at

    def _log_failure(self, batch: Sequence[_Pending], exc: Exception, passing: bool) -> None:
        # Once per run of failures (a locked file fails every attempt for as long as it is held).
        giving_up = passing and self._giving_up()
        if giving_up:
            what = "the store is closing: these saves fail"
        elif passing:
            what = "retrying; saves wait, nothing is dropped"
        else:
            what = "not a passing failure: the save at fault fails alone"
        level = logging.DEBUG if self._failing and not giving_up else logging.WARNING
        log.log(level, "%s: commit of %d call record(s) failed: %s (%s; %d queued behind it)",
                self.path, len(batch), exc, what, self._queue.qsize())
        self._failing = True

    async def _write(self, batch: Sequence[_Pending]) -> None:
        # Several saves of one call in a batch: the last one wins (dict keeps
        # the first position, takes the last value); writing each in turn
        # would insert the same legs twice.
        latest = {pending.record.call_id: pending.record for pending in batch if pending.record is not None}
        updated_at = time.time()
        await self._writer_thread.write(
            [(*_call_row(r), updated_at) for r in latest.values()],
            [(call_id,) for call_id in latest],
            [_leg_row(r.call_id, leg) for r in latest.values() for leg in r.legs],
            [statement for pending in batch for statement in pending.statements],
        )

    def _fail(self, batch: Iterable[_Pending], what: str, cause: BaseException | None = None) -> None:
        for pending in batch:
            if pending.done.done():
                continue  # its saver was cancelled
            error = StoreError(
                f"{self.path}: {what}; {pending.label} not saved"
                + (f": {cause}" if cause is not None else "")
            )
            error.__cause__ = cause
            pending.done.set_exception(error)

    def _fail_stranded(self) -> None:
        """Fail saves left in the queue by a writer that stopped abnormally."""
        stranded: list[_Pending] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if item is not None:
                stranded.append(item)
        self._fail(stranded, "the call store closed before writing the record")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the call store is closed")


def _is_passing(exc: Exception) -> bool:
    """A failure that the same batch may not meet again later (see _PASSING)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code is not None and code & 0xFF in _PASSING


# -- the writer's thread ----------------------------------------------------


class _WriterThread:
    """The writer's own thread and plain sqlite3 connection. A whole batch is
    one call into the thread (``_write_batch``), not one trip per statement:
    under load the batch is committed in a fraction of the time, and the
    event loop never waits for SQLite."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="call-store-writer")
        self._db: sqlite3.Connection | None = None

    async def open(self, busy_timeout_ms: int) -> None:
        self._db = await self.run(_open_writer, self.path, busy_timeout_ms)

    async def write(self, *args: Any) -> None:
        """``_write_batch(connection, *args)`` in the thread."""
        if self._db is None:
            raise StoreError(f"{self.path}: the call store's writer is closed")
        await self.run(_write_batch, self._db, *args)

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            try:
                await self.run(db.close)
            except sqlite3.Error as exc:
                log.warning("closing the call store's writer failed: %s", exc)
        self._thread.shutdown(wait=True)


_T = TypeVar("_T")


def _open_writer(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions, the store says
    # BEGIN/COMMIT itself (a batch is exactly one transaction).
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        for pragma in (f"busy_timeout = {int(busy_timeout_ms)}", "synchronous = FULL", "foreign_keys = ON"):
            db.execute(f"PRAGMA {pragma}")
    except BaseException:
        db.close()
        raise
    return db


def _write_batch(
    db: sqlite3.Connection,
    calls: list[tuple[Any, ...]],
    legs_of: list[tuple[str]],
    legs: list[tuple[Any, ...]],
    statements: list[tuple[str, tuple[Any, ...]]],
) -> None:
    """One transaction, in the writer's thread: the calls first (statements
    may refer to the calls of their batch), then the statements in order,
    runs of one statement (the inbox's inserts) in one executemany. Rolled
    back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(_UPSERT_CALL, calls)
        db.executemany(_DELETE_LEGS, legs_of)
        db.executemany(_INSERT_LEG, legs)
        start = 0
        while start < len(statements):
            end = start + 1
            while end < len(statements) and statements[end][0] == statements[start][0]:
                end += 1
            db.executemany(statements[start][0], [params for _, params in statements[start:end]])
            start = end
        db.execute("COMMIT")
    except BaseException:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolled back already
        raise


# -- rows ----------------------------------------------------------------


def _check_record(path: Path, record: CallRecord) -> None:
    # Checked here, before the record joins a batch: a duplicate leg id would
    # break the (call_id, leg_id) key and fail every other save in its batch.
    seen: set[str] = set()
    for leg in record.legs:
        if leg.leg_id in seen:
            raise StoreError(f"{path}: call {record.call_id} has two legs with id {leg.leg_id!r}; not saved")
        seen.add(leg.leg_id)


def _call_row(r: CallRecord) -> tuple[Any, ...]:
    return (
        r.call_id,
        r.direction,
        r.caller,
        r.caller_name,
        r.dialled,
        r.outcome,
        r.answered_by,
        json.dumps(list(r.rang), ensure_ascii=False),
        json.dumps(list(r.talked), ensure_ascii=False),
        r.started_at,
        r.answered_at,
        r.ended_at,
        r.ring_seconds,
        r.talk_seconds,
        r.hangup_cause,
        r.reason,
        int(r.interrupted),
        int(r.ended),
        r.recording_path,
        r.shop,
        r.channel,
        r.customer,
    )


def _leg_row(call_id: str, leg: LegRecord) -> tuple[Any, ...]:
    return (
        call_id,
        leg.leg_id,
        leg.kind,
        leg.extension,
        leg.number,
        leg.started_at,
        leg.answered_at,
        leg.ended_at,
        leg.hangup_cause,
    )


def _call_from_row(row: sqlite3.Row, legs: Iterable[LegRecord]) -> CallRecord:
    return CallRecord(
        call_id=row[0],
        direction=row[1],
        caller=row[2],
        caller_name=row[3],
        dialled=row[4],
        outcome=row[5],
        answered_by=row[6],
        rang=tuple(json.loads(row[7])),
        talked=tuple(json.loads(row[8])),
        started_at=row[9],
        answered_at=row[10],
        ended_at=row[11],
        ring_seconds=row[12],
        talk_seconds=row[13],
        hangup_cause=row[14],
        reason=row[15],
        interrupted=bool(row[16]),
        ended=bool(row[17]),
        recording_path=row[18],
        shop=row[19],
        channel=row[20],
        customer=row[21],
        legs=tuple(legs),
    )


def _leg_from_row(row: sqlite3.Row) -> LegRecord:
    return LegRecord(
        leg_id=row[1],
        kind=row[2],
        extension=row[3],
        number=row[4],
        started_at=row[5],
        answered_at=row[6],
        ended_at=row[7],
        hangup_cause=row[8],
    )


# -- connections -----------------------------------------------------------


async def _connect(path: Path, busy_timeout_ms: int, *, step: str) -> aiosqlite.Connection:
    try:
        # isolation_level=None: no implicit transactions, the store says
        # BEGIN/COMMIT itself (a batch is exactly one transaction).
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot {step}: {exc}") from exc
    try:
        # First, so that even switching to WAL waits for other connections.
        await _pragma(db, f"busy_timeout = {int(busy_timeout_ms)}")
    except BaseException as exc:
        await _close_quietly(db)
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"{path}: cannot {step}: {exc}") from exc
        raise
    return db


async def _pragma(db: aiosqlite.Connection, pragma: str) -> Any:
    rows = list(await db.execute_fetchall(f"PRAGMA {pragma}"))
    return rows[0][0] if rows else None


async def _rollback_quietly(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except (sqlite3.Error, ValueError):
        pass  # no transaction left (BEGIN failed, or SQLite rolled back), or connection gone


async def _close_quietly(db: aiosqlite.Connection) -> None:
    try:
        await db.close()
    except sqlite3.Error as exc:
        log.warning("closing the call store connection failed: %s", exc)

