"""Retention of recordings: each shop keeps its calls' recordings N days.

``purge`` deletes the files of recordings whose call started more than the
shop's ``recordings_days`` ago (0: kept forever) and marks their rows
*purged* (file and waveform gone, duration and size kept for statistics); the
call record itself stays. A call under legal hold keeps its recording. Calls
without a shop (outbound calls placed from a desk phone, calls before the plan
had the line) follow the plan's default shop; a shop the current plan does not
know keeps its recordings (nothing is deleted without a rule that says so).

Order of work, and why: the files are deleted first, then the rows change in
one ``Store.write`` together with the ``privacy_log`` row that says what was
removed. A failed write leaves rows that still say *ready* but whose files are
gone (the player answers "not found"); the next run finds them again and
finishes, since a missing file is fine. The other order would forget the name
of any file whose deletion failed, and keep it forever.

Only files inside the recordings directory are ever deleted: the row's name is
resolved against the directory (symlinked directories included) and anything
that lands outside is refused; a file that is itself a symlink is unlinked as a
link, never followed. ``watch`` runs ``purge`` once a day.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crm_bridge.store import Store
from gateway.numberplan import PlanBook
from gateway.record import iso

__all__ = ["DAY", "PURGE_BATCH", "PurgeReport", "local_path", "purge", "remove_files", "watch"]

log = logging.getLogger(__name__)

DAY = 86400.0
PURGE_BATCH = 1000  # rows per write (and per privacy_log row): a first run on years of calls is many batches
SYSTEM = "system"  # privacy_log.login of what the gateway does by itself
Statement = tuple[str, tuple[Any, ...]]

_NOT_HELD = "NOT EXISTS (SELECT 1 FROM legal_holds AS h WHERE h.call_id = r.call_id)"
_PURGEABLE = "r.status IN ('ready', 'missing', 'pending')"
# The row as it was read (file IS ?): a pending job that a collector made
# ready in the meantime has a file this run did not delete; it waits for the
# next run instead of leaving its file behind.
_PURGE_ROW = (
    "UPDATE recordings AS r SET status = 'purged', file = NULL, peaks = NULL, next_attempt_at = NULL, "
    f"updated_at = ? WHERE r.call_id = ? AND r.file IS ? AND {_PURGEABLE} AND {_NOT_HELD}"
)
_LOG = "INSERT INTO privacy_log (at, login, action, subject, detail) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class Removal:
    """What became of the files of some recordings (call id -> name)."""

    deleted: tuple[str, ...] = ()  # call ids whose file was deleted (a symlink: the link)
    missing: tuple[str, ...] = ()  # no file to delete (never fetched, or already gone)
    refused: tuple[str, ...] = ()  # the name leads outside the directory: left alone
    failed: tuple[str, ...] = ()  # the file is there and could not be deleted


@dataclass(frozen=True, slots=True)
class PurgeReport:
    at: float
    purged: tuple[str, ...] = ()  # call ids whose recordings are purged now
    by_shop: dict[str, int] = field(default_factory=dict)
    files_deleted: int = 0
    files_missing: int = 0
    refused: tuple[str, ...] = ()  # names outside the directory: rows purged, nothing deleted
    failed: tuple[str, ...] = ()  # files that would not go: rows left as they were, tried again next run
    held: int = 0  # recordings past retention kept for a legal hold

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "purged": len(self.purged), "by_shop": self.by_shop,
                "files_deleted": self.files_deleted, "files_missing": self.files_missing,
                "refused": list(self.refused), "failed": list(self.failed), "held": self.held,
                "call_ids": list(self.purged)}


def local_path(directory: Path, name: str) -> Path | None:
    """Where the file ``name`` of the recordings ``directory`` is, its parent
    resolved (symlinks followed) and its last part not: None when that parent
    is not the directory or below it (``..``, an absolute name, a symlinked
    subdirectory that points elsewhere). Opening or unlinking the result never
    follows a symlink out of the directory, as long as the caller does not
    follow the last part either (``os.unlink``; ``O_NOFOLLOW`` to read)."""
    root = directory.resolve()
    candidate = root / name
    if candidate.name in ("", ".", ".."):
        return None
    parent = candidate.parent.resolve()
    if parent != root and root not in parent.parents:
        return None
    return parent / candidate.name


def remove_files(directory: Path, files: Sequence[tuple[str, str | None]]) -> Removal:
    """Delete the files named (call id, name or None) from ``directory``.
    Blocking: run it in a thread."""
    deleted: list[str] = []
    missing: list[str] = []
    refused: list[str] = []
    failed: list[str] = []
    for call_id, name in files:
        if not name:
            missing.append(call_id)
            continue
        path = local_path(directory, name)
        if path is None:
            log.warning("recording of call %s: file name %r is outside %s; not deleted", call_id, name, directory)
            refused.append(call_id)
            continue
        try:
            if path.is_symlink():
                # Somebody put a link here; the link goes, its target stays.
                log.warning("recording of call %s: %s is a symlink; removing the link only", call_id, path)
            os.unlink(path)  # never follows a symlink in the last part
        except FileNotFoundError:
            missing.append(call_id)
        except OSError as exc:
            log.error("recording of call %s: cannot delete %s: %s", call_id, path, exc)
            failed.append(call_id)
        else:
            deleted.append(call_id)
    return Removal(tuple(deleted), tuple(missing), tuple(refused), tuple(failed))


async def purge(store: Store, plans: PlanBook, directory: Path, now: float, *,
                batch: int = PURGE_BATCH) -> PurgeReport:
    """Purge every recording past its shop's retention (see the module's
    docstring); what was done. One write and one ``privacy_log`` row per
    ``batch`` recordings (a daily run is one). Raises StoreError when the
    store fails: the next run picks up where this one stopped."""
    plan = plans.current
    rules = sorted((shop_id, now - shop.recordings_days * DAY) for shop_id, shop in plan.shops.items()
                   if shop.recordings_days > 0)
    if not rules:
        return PurgeReport(now)
    # The shops' cutoffs as a table; calls without a shop count as the default shop's.
    values = ", ".join("(?, ?)" for _ in rules)
    due = (f"WITH rules (shop, cutoff) AS (VALUES {values}) "
           "SELECT {what} FROM recordings AS r JOIN calls AS c ON c.call_id = r.call_id "
           "JOIN rules ON rules.shop = coalesce(c.shop, ?) "
           f"WHERE c.started_at < rules.cutoff AND {_PURGEABLE} AND {{held}}")
    params = (*(x for rule in rules for x in rule), plan.default_shop)
    held_rows = await store.read(due.format(what="count(*)", held=f"NOT {_NOT_HELD}"), params)
    held = int(held_rows[0][0])
    purged: list[str] = []
    by_shop: dict[str, int] = {}
    deleted = missing = 0
    refused: list[str] = []
    failed: list[str] = []  # not selected again in this run
    while True:
        marks = ", ".join("?" for _ in failed)
        rows = await store.read(
            due.format(what="r.call_id, r.file, rules.shop", held=_NOT_HELD)
            + f" AND r.call_id NOT IN ({marks}) ORDER BY c.started_at, r.call_id LIMIT ?",
            (*params, *failed, batch))
        if not rows:
            break
        files = [(str(call_id), name) for call_id, name, _ in rows]
        removal = await asyncio.to_thread(remove_files, directory, files)
        kept = set(removal.failed)
        done = [(str(call_id), name, shop) for call_id, name, shop in rows if call_id not in kept]
        counts: dict[str, int] = {}
        for _, _, shop in done:
            counts[shop] = counts.get(shop, 0) + 1
        if done:
            detail = {
                "purged": len(done), "by_shop": counts,
                "days": {shop_id: plan.shops[shop_id].recordings_days for shop_id in counts},
                "files_deleted": len(removal.deleted), "files_missing": len(removal.missing),
                "refused": list(removal.refused), "failed": list(removal.failed),
                "call_ids": [call_id for call_id, _, _ in done],
            }
            await store.write(
                *[(_PURGE_ROW, (now, call_id, name)) for call_id, name, _ in done],
                (_LOG, (now, SYSTEM, "purge", "retention", json.dumps(detail, ensure_ascii=False))),
            )
        purged += [call_id for call_id, _, _ in done]
        for shop, n in counts.items():
            by_shop[shop] = by_shop.get(shop, 0) + n
        deleted += len(removal.deleted)
        missing += len(removal.missing)
        refused += removal.refused
        failed += removal.failed
        if len(rows) < batch or len(failed) > batch:
            break  # the last page; or too many failures for one run (a read-only disk): next run
    report = PurgeReport(now, tuple(purged), by_shop, deleted, missing, tuple(refused), tuple(failed), held)
    if purged or failed:
        log.info("retention: purged %d recording(s) (%s), %d file(s) deleted, %d missing, %d refused, "
                 "%d not deletable, %d kept for a legal hold", len(purged),
                 ", ".join(f"shop {shop}: {n}" for shop, n in sorted(by_shop.items())) or "-", deleted, missing,
                 len(refused), len(failed), held)
    else:
        log.debug("retention: nothing to purge (%d kept for a legal hold)", held)
    return report


async def watch(store: Store, plans: PlanBook, directory: Path, *, clock: Callable[[], float] = time.time,
                interval: float = DAY, on_purge: Callable[[PurgeReport], None] | None = None) -> None:
    """Purge now, then every ``interval`` seconds, until cancelled. A failed
    run is logged and tried again at the next interval. ``plans`` is read at
    each run, so a reloaded plan's retention applies from the next run."""
    while True:
        try:
            report = await purge(store, plans, directory, clock())
        except Exception:  # the store is down, the disk is gone: the next run retries
            log.exception("retention: purge failed; trying again in %.0f s", interval)
        else:
            if on_purge is not None:
                on_purge(report)
        await asyncio.sleep(interval)
