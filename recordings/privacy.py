"""Personal data of one phone number: export it, erase it; legal holds.

Made for requests under GDPR and Russia's 152-FZ, by an administrator. Every
export, erasure and hold is written to ``privacy_log`` with who did it.

*The number's calls* are those whose ``customer`` is the number (E.164), and
older rows without ``customer`` whose customer's side (the caller of an
inbound call, the dialled number of an outbound one) is one of its spellings.

``export`` gives a zip: ``export.json`` (what, when, by whom), ``contact.json``,
``calls.json`` (records with legs, result and note, recording, hold),
``tasks.json`` (callback tasks, their attempts, the calls that reached him),
``click_to_call.json``, ``interactions.json`` and ``listens.json`` of those
calls, and the recording files as ``recordings/<call id><suffix>``. It is
logged before it is handed out: no export without its audit row.

``erase`` keeps the statistics and removes the person:

- calls: the customer's side (``caller`` or ``dialled``, ``customer``, legs'
  ``number``) becomes one pseudonym, ``erased:`` + 12 hex digits of SHA-256 of
  the number and a random value thrown away afterwards: the same for all calls
  of one erasure (unique callers still count once) and not reversible, not even
  by trying every phone number. ``caller_name`` goes. Direction, outcome,
  shop, channel, agents, times and durations stay, so counts per shop,
  channel and outcome and the talk time are what they were.
- recordings: files deleted, rows *erased* (file, waveform and source gone:
  the source often holds the number); an erased recording is never fetched
  again (``storage.job_statements``).
- notes: the agent's note on the call goes, the result code stays; notes of
  interactions on those calls go.
- the contact is kept as a row without the person: name and company blanked,
  the number's phone removed (a contact with no phone is nobody's; leads per
  channel and shop still count him). His other phones, if any, are not
  touched: they are listed in the report, to erase too if they are his.
- callback tasks, reaches and click-to-call requests of the number get the
  pseudonym; an open task is closed (reason ``erased``): nobody should call back
  a person who asked to be forgotten. Task notes go.
- the raw webhook requests of those calls (kept in ``webhook_inbox`` once done)
  lose body and query, which hold the number; their keys stay, so a duplicate
  delivery is still absorbed.

A call under legal hold is left whole (record, recording, note) and listed in
the report: the hold is exactly the reason to keep it. So is a call whose
recording file could not be deleted, so that erasing again finds it.
Files are deleted before the rows change (in one ``Store.write`` with the log
row): a failed write leaves the rows as they were, pointing at files that are
gone, and erasing again completes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import re
import secrets
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crm_bridge.contacts import Contacts
from crm_bridge.store import Store
from gateway.card import spellings
from gateway.record import iso

from .retention import local_path, remove_files

__all__ = [
    "ERASED_PREFIX",
    "EraseReport",
    "Hold",
    "clear_hold",
    "erase",
    "export",
    "hold_of",
    "privacy_log",
    "set_hold",
]

log = logging.getLogger(__name__)

ERASED_PREFIX = "erased:"
MAX_REASON = 500
_CHUNK = 500  # ids per IN (...) list: SQLite's bound on parameters is far above, the statement stays small
Statement = tuple[str, tuple[Any, ...]]

_CALL_COLUMNS = ("call_id", "direction", "caller", "caller_name", "dialled", "outcome", "answered_by", "rang",
                 "talked", "started_at", "answered_at", "ended_at", "ring_seconds", "talk_seconds", "hangup_cause",
                 "reason", "interrupted", "ended", "recording_path", "shop", "channel", "customer", "updated_at")
_LEG_COLUMNS = ("call_id", "leg_id", "kind", "extension", "number", "started_at", "answered_at", "ended_at",
                "hangup_cause")
_RESULT_COLUMNS = ("call_id", "result", "note", "set_by", "set_at")
_RECORDING_COLUMNS = ("call_id", "status", "file", "content_type", "duration", "size", "created_at", "updated_at")
_HOLD_COLUMNS = ("call_id", "set_by", "set_at", "reason")
_TASK_COLUMNS = ("task_id", "phone", "status", "shop", "channel", "owner", "attempts", "first_attempt_at",
                 "last_attempt_at", "due_at", "escalated_at", "closed_at", "closed_by", "close_reason", "close_note",
                 "closed_call_id", "callback_seconds", "within_sla", "created_at", "updated_at")
_ATTEMPT_COLUMNS = ("call_id", "task_id", "at", "outcome")
_REACH_COLUMNS = ("call_id", "phone", "at", "by", "reason", "points")
_C2C_COLUMNS = ("request_id", "login", "call_id", "number", "shop", "caller_id", "status", "error_code", "error",
                "created_at")
_INTERACTION_COLUMNS = ("interaction_id", "login", "kind", "at", "points", "call_id", "note", "recorded_by")
_LISTEN_COLUMNS = ("listen_id", "call_id", "login", "at", "bytes", "range", "remote")
_LOG = "INSERT INTO privacy_log (at, login, action, subject, detail) VALUES (?, ?, ?, ?, ?)"


# -- the number's calls -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    call_id: str
    file: str | None  # the recording's file, if it has one
    held: bool


async def _calls_of(store: Store, number: str) -> list[_Call]:
    """The number's calls (see the module's docstring), oldest first."""
    forms = spellings(number, "RU")  # the number is E.164: the region changes nothing
    marks = ", ".join("?" for _ in forms)
    rows = await store.read(
        "SELECT c.call_id, r.file, h.call_id IS NOT NULL FROM calls AS c "
        "LEFT JOIN recordings AS r ON r.call_id = c.call_id LEFT JOIN legal_holds AS h ON h.call_id = c.call_id "
        "WHERE c.call_id IN ("
        "SELECT call_id FROM calls WHERE customer = ? "
        f"UNION SELECT call_id FROM calls WHERE caller IN ({marks}) AND direction = 'inbound' AND customer IS NULL "
        f"UNION SELECT call_id FROM calls WHERE dialled IN ({marks}) AND direction = 'outbound' AND customer IS NULL"
        ") ORDER BY c.started_at, c.call_id",
        (number, *forms, *forms),
    )
    return [_Call(str(call_id), file, bool(held)) for call_id, file, held in rows]


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]


async def _rows_of_calls(store: Store, table: str, columns: Sequence[str], ids: Sequence[str],
                         order: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in _chunks(ids):
        rows = await store.read(
            f"SELECT {', '.join(columns)} FROM {table} WHERE call_id IN ({', '.join('?' for _ in part)}) "
            f"ORDER BY {order}", tuple(part))
        out += [_jsonable(columns, row) for row in rows]
    return out


async def _rows(store: Store, table: str, columns: Sequence[str], where: str, params: tuple[Any, ...],
                order: str) -> list[dict[str, Any]]:
    rows = await store.read(f"SELECT {', '.join(columns)} FROM {table} WHERE {where} ORDER BY {order}", params)
    return [_jsonable(columns, row) for row in rows]


def _jsonable(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A row as a JSON object: times as ISO 8601 (UTC), JSON columns decoded."""
    out: dict[str, Any] = {}
    for column, value in zip(columns, row):
        if (column == "at" or column.endswith("_at")) and isinstance(value, (int, float)):
            value = iso(value)
        elif column in ("rang", "talked") and isinstance(value, str):
            value = json.loads(value)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[column] = value
    return out


# -- export -------------------------------------------------------------------------


async def export(store: Store, directory: Path, phone_e164: str, *, by: str, now: float) -> bytes:
    """Everything held about the number, as a zip (see the module's docstring),
    logged as exported by ``by``. Raises StoreError when the store fails."""
    calls = await _calls_of(store, phone_e164)
    ids = [call.call_id for call in calls]
    contact = await Contacts(store).get(phone_e164)
    records = await _rows_of_calls(store, "calls", _CALL_COLUMNS, ids, "started_at, call_id")
    legs = await _rows_of_calls(store, "call_legs", _LEG_COLUMNS, ids, "call_id, started_at, leg_id")
    results = await _rows_of_calls(store, "call_results", _RESULT_COLUMNS, ids, "call_id")
    recordings = await _rows_of_calls(store, "recordings", _RECORDING_COLUMNS, ids, "call_id")
    holds = await _rows_of_calls(store, "legal_holds", _HOLD_COLUMNS, ids, "call_id")
    interactions = await _rows_of_calls(store, "interactions", _INTERACTION_COLUMNS, ids, "at, interaction_id")
    listens = await _rows_of_calls(store, "recording_listens", _LISTEN_COLUMNS, ids, "at, listen_id")
    tasks = await _rows(store, "callback_tasks", _TASK_COLUMNS, "phone = ?", (phone_e164,), "task_id")
    task_ids = [t["task_id"] for t in tasks]
    attempts: list[dict[str, Any]] = []
    for part in _chunks(task_ids):
        attempts += await _rows(store, "callback_attempts", _ATTEMPT_COLUMNS,
                                f"task_id IN ({', '.join('?' for _ in part)})", tuple(part), "at, call_id")
    reaches = await _rows(store, "callback_reaches", _REACH_COLUMNS, "phone = ?", (phone_e164,), "at, call_id")
    clicks = await _rows(store, "click_to_call", _C2C_COLUMNS, "number = ?", (phone_e164,), "created_at")

    # Names in the zip: the call id made safe for any file system, unique.
    files: list[tuple[str, str, str]] = []  # (call id, name in the directory, name in the zip)
    taken: set[str] = set()
    zip_name: dict[str, str] = {}
    for recording in recordings:
        if recording["status"] != "ready" or not recording["file"]:
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", recording["call_id"])[:120] or "call"
        suffix = Path(recording["file"]).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"
        name, n = f"recordings/{stem}{suffix}", 1
        while name in taken:
            n += 1
            name = f"recordings/{stem}-{n}{suffix}"
        taken.add(name)
        zip_name[recording["call_id"]] = name
        files.append((recording["call_id"], recording["file"], name))

    by_call: dict[str, dict[str, Any]] = {r["call_id"]: r for r in records}
    for leg in legs:
        by_call[leg.pop("call_id")].setdefault("legs", []).append(leg)
    for result in results:
        by_call[result.pop("call_id")]["result"] = result
    for recording in recordings:
        call_id = recording.pop("call_id")
        recording.pop("file")  # the gateway's own name: nothing about him
        recording["in_zip"] = zip_name.get(call_id)
        by_call[call_id]["recording"] = recording
    for hold in holds:
        by_call[hold.pop("call_id")]["legal_hold"] = hold
    for record in records:
        record.setdefault("legs", [])
        for key in ("result", "recording", "legal_hold"):
            record.setdefault(key, None)

    documents: dict[str, Any] = {
        "contact.json": contact.to_json() if contact is not None else None,
        "calls.json": records,
        "tasks.json": {"tasks": tasks, "attempts": attempts, "reaches": reaches},
        "click_to_call.json": clicks,
        "interactions.json": interactions,
        "listens.json": listens,
    }
    data, written, unreadable = await asyncio.to_thread(_zip, directory, documents, files, {
        "phone": phone_e164, "exported_at": iso(now), "exported_by": by,
    })
    detail = {"calls": len(records), "contact": contact.contact_id if contact else None, "tasks": len(tasks),
              "recordings": written, "recordings_unreadable": unreadable, "bytes": len(data)}
    await store.write((_LOG, (now, by, "export", phone_e164, json.dumps(detail))))
    log.info("personal data of a number exported by %s: %s", by, detail)
    return data


def _zip(directory: Path, documents: dict[str, Any], files: Sequence[tuple[str, str, str]],
         about: dict[str, Any]) -> tuple[bytes, int, list[str]]:
    """The zip, how many recordings went in, and the calls whose file could
    not be read. Blocking: run it in a thread."""
    out = io.BytesIO()
    written = 0
    unreadable: list[str] = []
    with zipfile.ZipFile(out, "w") as archive:
        for call_id, name, in_zip in files:
            content = _read_inside(directory, name)
            if content is None:
                log.warning("export: recording of call %s is not readable in %s", call_id, directory)
                unreadable.append(call_id)
                continue
            # Audio is compressed already: stored as it is.
            archive.writestr(in_zip, content, compress_type=zipfile.ZIP_STORED)
            written += 1
        about = {**about, "files": sorted(documents), "recordings": written, "recordings_unreadable": unreadable}
        for name, document in [("export.json", about), *documents.items()]:
            archive.writestr(name, json.dumps(document, ensure_ascii=False, indent=1),
                             compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue(), written, unreadable


def _read_inside(directory: Path, name: str) -> bytes | None:
    """The file's bytes, or None if it is missing, outside the directory or a symlink."""
    path = local_path(directory, name)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # missing, or a symlink (ELOOP): never followed
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


# -- erase --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EraseReport:
    phone: str
    pseudonym: str
    calls: tuple[str, ...]  # anonymised
    held: tuple[str, ...]  # under legal hold: left whole
    failed: tuple[str, ...]  # the recording file would not go: left whole, erase again
    recordings: int  # recording rows erased
    files_deleted: int
    notes: int  # call notes removed
    contact: int | None  # the contact blanked, if the number had one
    other_phones: tuple[str, ...]  # the contact's phones that stay: erase them too if they are his
    tasks: int
    reaches: int
    click_to_call: int
    webhook_requests: int

    @property
    def complete(self) -> bool:
        return not self.held and not self.failed

    def to_json(self) -> dict[str, Any]:
        return {"phone": self.phone, "complete": self.complete, "calls": len(self.calls),
                "held": list(self.held), "failed": list(self.failed), "recordings": self.recordings,
                "files_deleted": self.files_deleted, "notes": self.notes, "contact": self.contact,
                "other_phones": list(self.other_phones), "tasks": self.tasks, "reaches": self.reaches,
                "click_to_call": self.click_to_call, "webhook_requests": self.webhook_requests}


def pseudonym(number: str) -> str:
    """A new pseudonym for ``number``: random salt, thrown away."""
    return ERASED_PREFIX + hashlib.sha256(secrets.token_bytes(16) + number.encode()).hexdigest()[:12]


async def erase(store: Store, directory: Path, phone_e164: str, by: str, now: float) -> EraseReport:
    """Erase the number's personal data (see the module's docstring), logged
    as done by ``by``. Raises StoreError when the store fails (files already
    deleted stay deleted; erasing again completes it)."""
    number = phone_e164
    forms = spellings(number, "RU")
    fake = pseudonym(number)
    calls = await _calls_of(store, number)
    held = [c.call_id for c in calls if c.held]
    free = [c for c in calls if not c.held]
    removal = await asyncio.to_thread(remove_files, directory, [(c.call_id, c.file) for c in free if c.file])
    failed = set(removal.failed)
    ids = [c.call_id for c in free if c.call_id not in failed]

    counts: dict[str, int] = {}
    for table, where in (("call_results", "note IS NOT NULL"), ("recordings", "status != 'erased'")):
        counts[table] = 0
        for part in _chunks(ids):
            rows = await store.read(f"SELECT count(*) FROM {table} WHERE call_id IN ({', '.join('?' for _ in part)}) "
                                    f"AND {where}", tuple(part))
            counts[table] += int(rows[0][0])
    inbox: list[int] = []
    if ids:
        # No index on the composed call id; a read off the writer, on a rare request.
        wanted = set(ids)
        providers = sorted({call_id.split(":", 1)[0] for call_id in ids if ":" in call_id})
        for provider in providers:
            rows = await store.read(
                "SELECT inbox_id, provider || ':' || account || ':' || call_key FROM webhook_inbox "
                "WHERE provider = ? AND done = 1 AND call_key IS NOT NULL", (provider,))
            inbox += [int(inbox_id) for inbox_id, call_id in rows if call_id in wanted]
    contact_rows = await store.read(
        "SELECT p.contact_id, (SELECT json_group_array(phone) FROM contact_phones AS o "
        "WHERE o.contact_id = p.contact_id AND o.phone != p.phone) FROM contact_phones AS p WHERE p.phone = ?",
        (number,))
    contact = int(contact_rows[0][0]) if contact_rows else None
    other_phones = tuple(json.loads(contact_rows[0][1])) if contact_rows else ()
    # Rows found here and changed by key below: these tables have no index on
    # the column searched, and a scan belongs on the reader, not in the
    # writer's transaction that every call being saved waits for.
    notes: list[int] = []
    for part in _chunks(ids):
        rows = await store.read(f"SELECT interaction_id FROM interactions WHERE call_id IN "
                                f"({', '.join('?' for _ in part)}) AND note IS NOT NULL", tuple(part))
        notes += [int(row[0]) for row in rows]
    tasks = [int(r[0]) for r in await store.read("SELECT task_id FROM callback_tasks WHERE phone = ?", (number,))]
    clicks = [int(r[0]) for r in await store.read("SELECT rowid FROM click_to_call WHERE number = ?", (number,))]
    reaches = int((await store.read("SELECT count(*) FROM callback_reaches WHERE phone = ?", (number,)))[0][0])

    marks = ", ".join("?" for _ in forms)
    statements: list[Statement] = []
    # Per call; the store runs a run of one statement as one executemany.
    statements += [(
        "UPDATE calls SET "
        f"caller = CASE WHEN direction = 'inbound' OR caller IN ({marks}) THEN ? ELSE caller END, "
        f"dialled = CASE WHEN direction = 'outbound' OR dialled IN ({marks}) THEN ? ELSE dialled END, "
        "customer = ?, caller_name = NULL, "
        "recording_path = CASE WHEN recording_path IS NULL THEN NULL ELSE 'erased' END, updated_at = ? "
        "WHERE call_id = ?",
        (*forms, fake, *forms, fake, fake, now, call_id)) for call_id in ids]
    statements += [(f"UPDATE call_legs SET number = ? WHERE call_id = ? AND number IN ({marks})",
                     (fake, call_id, *forms)) for call_id in ids]
    statements += [("UPDATE call_results SET note = NULL WHERE call_id = ?", (call_id,)) for call_id in ids]
    statements += [("UPDATE interactions SET note = NULL WHERE interaction_id = ?", (i,)) for i in notes]
    statements += [(
        "UPDATE recordings SET status = 'erased', source = 'erased', file = NULL, peaks = NULL, error = NULL, "
        "next_attempt_at = NULL, updated_at = ? WHERE call_id = ?", (now, call_id)) for call_id in ids]
    statements += [("UPDATE webhook_inbox SET body = X'', query = '' WHERE inbox_id = ?", (inbox_id,))
                   for inbox_id in inbox]
    # All SET expressions see the row as it was: status is still 'open' in each CASE.
    statements += [(
        "UPDATE callback_tasks SET phone = ?1, close_note = NULL, "
        "closed_at = CASE WHEN status = 'open' THEN ?2 ELSE closed_at END, "
        "closed_by = CASE WHEN status = 'open' THEN ?3 ELSE closed_by END, "
        "close_reason = CASE WHEN status = 'open' THEN 'erased' ELSE close_reason END, "
        "status = CASE WHEN status = 'open' THEN 'closed' ELSE status END, updated_at = ?2 "
        "WHERE task_id = ?4 AND phone = ?5", (fake, now, by, task_id, number)) for task_id in tasks]
    # A dialler's error may quote the number.
    statements += [(
        "UPDATE click_to_call SET number = ?, error = CASE WHEN error IS NULL THEN NULL "
        f"WHEN {' OR '.join('instr(error, ?) > 0' for _ in forms)} THEN 'erased' ELSE error END "
        "WHERE rowid = ? AND number = ?", (fake, *forms, rowid, number)) for rowid in clicks]
    statements += [
        ("UPDATE callback_reaches SET phone = ? WHERE phone = ?", (fake, number)),
        ("UPDATE contacts SET name = NULL, company = NULL, updated_at = ? "
         "WHERE contact_id = (SELECT contact_id FROM contact_phones WHERE phone = ?)", (now, number)),
        ("DELETE FROM contact_phones WHERE phone = ?", (number,)),
    ]
    report = EraseReport(
        phone=number, pseudonym=fake, calls=tuple(ids), held=tuple(held), failed=tuple(sorted(failed)),
        recordings=counts["recordings"], files_deleted=len(removal.deleted), notes=counts["call_results"],
        contact=contact, other_phones=other_phones, tasks=len(tasks), reaches=reaches, click_to_call=len(clicks),
        webhook_requests=len(inbox),
    )
    # The number stays in the log as the subject of the request, the proof
    # that it was honoured; the detail has counts only, no call ids, so the
    # log does not tie the number back to the anonymised calls.
    detail = {**report.to_json(), "other_phones": len(other_phones), "held": len(held), "failed": len(failed)}
    del detail["phone"]
    statements.append((_LOG, (now, by, "erase", number, json.dumps(detail))))
    await store.write(*statements)
    log.info("personal data of a number erased by %s: %d call(s), %d held, %d failed, %d file(s) deleted",
             by, len(ids), len(held), len(failed), len(removal.deleted))
    return report


# -- legal holds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    call_id: str
    set_by: str
    set_at: float
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {"set_by": self.set_by, "set_at": iso(self.set_at), "reason": self.reason}


async def hold_of(store: Store, call_id: str) -> Hold | None:
    rows = await store.read(f"SELECT {', '.join(_HOLD_COLUMNS)} FROM legal_holds WHERE call_id = ?", (call_id,))
    return Hold(*rows[0]) if rows else None


async def set_hold(store: Store, call_id: str, *, by: str, reason: str | None, now: float) -> Hold:
    """Put the call under legal hold (again: a new reason replaces the old,
    who and when stay those of the first). Its recording outlives retention
    and the call is left out of erasures until the hold is cleared."""
    reason = (reason.strip()[:MAX_REASON] or None) if reason else None
    await store.write(
        ("INSERT INTO legal_holds (call_id, set_by, set_at, reason) VALUES (?, ?, ?, ?) "
         "ON CONFLICT (call_id) DO UPDATE SET reason = coalesce(excluded.reason, legal_holds.reason)",
         (call_id, by, now, reason)),
        (_LOG, (now, by, "hold", f"call {call_id}", json.dumps({"call_id": call_id, "reason": reason},
                                                                ensure_ascii=False))),
    )
    hold = await hold_of(store, call_id)
    assert hold is not None  # just written; only clear_hold deletes
    return hold


async def clear_hold(store: Store, call_id: str, *, by: str, now: float) -> bool:
    """Lift the call's legal hold; whether it had one. Retention applies
    again from the next purge."""
    before = await hold_of(store, call_id)
    if before is None:
        return False
    await store.write(
        ("DELETE FROM legal_holds WHERE call_id = ?", (call_id,)),
        (_LOG, (now, by, "release", f"call {call_id}", json.dumps({"call_id": call_id, "was": before.to_json()},
                                                                   ensure_ascii=False))),
    )
    return True


# -- the log ------------------------------------------------------------------------


async def privacy_log(store: Store, *, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    """Entries newest first; ``before``: an entry id, for the next page."""
    rows = await store.read(
        "SELECT entry_id, at, login, action, subject, detail FROM privacy_log WHERE entry_id < ? "
        "ORDER BY entry_id DESC LIMIT ?", (before if before is not None else 2**62, max(1, min(limit, 1000))))
    return [{"entry_id": r[0], "at": iso(r[1]), "login": r[2], "action": r[3], "subject": r[4],
             "detail": json.loads(r[5])} for r in rows]
