"""Contacts and leads: who the customers are, keyed by E.164 phone.

A contact has one or more phones (each phone belongs to one contact), a name,
company, VIP and blacklist flags, a status (``lead`` until someone says
otherwise) and an assigned manager (a user's login). Everything lives in the
call store's file (tables ``contacts`` and ``contact_phones``) and is written
through ``Store.write``, so it shares the store's batches and fsyncs.

Rules:

- An unknown customer becomes a lead on his first call (inbound: the caller;
  outbound: the dialled number; internal calls and withheld numbers have no
  customer). ``source_channel`` and ``first_shop`` are those of his earliest
  call seen, ``first_call_at``/``last_call_at`` the earliest/latest start.
- The manager is assigned by rule: the first agent who talked on a call with
  him, while the contact has no manager. A manager set by hand, by import or
  by an earlier rule is never replaced by the rule (clearing it by hand hands
  the contact back to the rule).
- Every write is decided inside SQLite, in the writer's transaction, not from
  an earlier read: two calls of the same new number in one batch make one
  contact, a record handled twice changes nothing, and no statement can fail
  (a failing statement would fail every call saved in the same batch).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import time
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple


from gateway.phones import format_e164, parse_phone
from gateway.record import CallRecord, iso

from .store import Store, StoreError

__all__ = [
    "Assignment",
    "Contact",
    "ContactError",
    "Contacts",
    "FieldError",
    "ImportReport",
    "RowError",
    "RULE",
    "e164",
]

log = logging.getLogger(__name__)

RULE = "rule"  # manager_set_by of a manager assigned by the first-talker rule
EDITABLE = ("name", "company", "vip", "blacklisted", "manager", "status")
CSV_COLUMNS = ("phone", *EDITABLE, "source_channel", "first_shop", "first_call_at", "last_call_at")
_READ_ONLY_COLUMNS = frozenset(CSV_COLUMNS) - {"phone", *EDITABLE}
MAX_TEXT = 200  # name, company
MAX_LOGIN = 64
MAX_PHONES_PER_ROW = 10
MAX_REPORTED_ERRORS = 1000
IMPORT_CHUNK = 100  # rows validated and written together; the loop breathes between chunks
EXPORT_PAGE = 1000
_STATUS = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRUE = frozenset({"1", "true", "yes", "y", "да", "д"})
_FALSE = frozenset({"", "0", "false", "no", "n", "нет", "н"})
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class ContactError(ValueError):
    """A request about contacts that cannot be done as asked; the message says why."""


class FieldError(ContactError):
    """One field (or the phone) of a request is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True, slots=True)
class Contact:
    contact_id: int
    name: str | None
    company: str | None
    vip: bool
    blacklisted: bool
    status: str
    manager: str | None
    manager_set_by: str | None  # RULE, or the login of whoever set it by hand, API or import
    source_channel: str | None
    first_shop: str | None
    first_call_at: float | None
    last_call_at: float | None
    created_at: float
    updated_at: float
    phones: tuple[str, ...] = field(default=())  # E.164, in the order they were added

    def to_json(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "phones": list(self.phones),
            "name": self.name,
            "company": self.company,
            "vip": self.vip,
            "blacklisted": self.blacklisted,
            "status": self.status,
            "manager": self.manager,
            "manager_set_by": self.manager_set_by,
            "source_channel": self.source_channel,
            "first_shop": self.first_shop,
            "first_call_at": iso(self.first_call_at),
            "last_call_at": iso(self.last_call_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Assignment(NamedTuple):
    """What the router needs to know about a caller."""

    manager: str | None
    vip: bool
    blacklisted: bool
    name: str | None
    last_call_at: float | None


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # as a spreadsheet numbers it: the header is row 1
    field: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class ImportReport:
    rows: int  # data rows read (blank lines not counted)
    created: int
    updated: int
    errors: tuple[RowError, ...]  # the first MAX_REPORTED_ERRORS
    error_count: int  # all of them

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "error_count": self.error_count,
            "errors": [e.to_json() for e in self.errors],
        }


def e164(raw: str | None, region: str) -> str | None:
    """``raw`` as E.164, or None when it is no customer's number: empty,
    withheld, unreadable, or an extension (digits only, at most 6, as the
    caller card decides)."""
    if not raw:
        return None
    raw = raw.strip()
    if raw.isdigit() and len(raw) <= 6:
        return None
    parsed = parse_phone(raw, region)
    return format_e164(parsed) if parsed is not None else None


def customer_of(record: CallRecord) -> str | None:
    """The customer's number as the PBX wrote it: the caller of an inbound call,
    the dialled number of an outbound one; internal calls have none."""
    if record.direction == "inbound":
        return record.caller
    if record.direction == "outbound":
        return record.dialled
    return None


# -- SQL ---------------------------------------------------------------------------

_CONTACT_COLUMNS = (
    "contact_id", "name", "company", "vip", "blacklisted", "status", "manager", "manager_set_by",
    "source_channel", "first_shop", "first_call_at", "last_call_at", "created_at", "updated_at",
)
_SELECT_CONTACT = (
    f"SELECT {', '.join('c.' + c for c in _CONTACT_COLUMNS)}, "
    "(SELECT json_group_array(phone) FROM "
    "(SELECT phone FROM contact_phones WHERE contact_id = c.contact_id ORDER BY rowid)) "
    "FROM contacts AS c"
)
_OWNER = "(SELECT contact_id FROM contact_phones WHERE phone = ?)"
# The router's question: one lookup on the phone's primary key, one on the contact's rowid.
_MANAGER_FOR = (
    "SELECT c.manager, c.vip, c.blacklisted, c.name, c.last_call_at "
    "FROM contact_phones AS p JOIN contacts AS c ON c.contact_id = p.contact_id WHERE p.phone = ?"
)
Statement = tuple[str, tuple[Any, ...]]


def _ensure_lead(phone: str, now: float) -> list[Statement]:
    """Statements that make a new lead holding ``phone`` unless some contact
    has it already."""
    unknown = "NOT EXISTS (SELECT 1 FROM contact_phones WHERE phone = ?)"
    return [
        (f"INSERT INTO contacts (status, created_at, updated_at) SELECT 'lead', ?, ? WHERE {unknown}",
         (now, now, phone)),
        # Right after the insert above, with nothing in between: last_insert_rowid()
        # is the new contact exactly when the insert happened (else nothing is inserted).
        (f"INSERT INTO contact_phones (phone, contact_id) SELECT ?, last_insert_rowid() WHERE {unknown}",
         (phone, phone)),
    ]


def _upsert(phones: Sequence[str], values: Mapping[str, Any], set_by: str, now: float,
            attached: Container[str] = ()) -> list[Statement]:
    """Statements that set ``values`` on the contact holding any of ``phones``
    (the one whose phone was added first), or create him (a lead unless
    ``values`` says otherwise), and give him the phones he lacks.

    One upsert: the contact id is his, so the insert turns into an update, or
    NULL for a new number, so SQLite picks a new one. ``attached``: phones known
    to be his already (phones never move or go away), for which no statement is
    needed. Never fail: the contact ids come from rows that exist in the same
    transaction and the phone's primary key conflicts are absorbed.
    """
    marks = ", ".join("?" for _ in phones)
    owner = f"(SELECT contact_id FROM contact_phones WHERE phone IN ({marks}) ORDER BY rowid LIMIT 1)"
    columns = dict(values)
    if "manager" in columns:
        columns["manager_set_by"] = set_by
    names = [*columns, "updated_at"]
    statements: list[Statement] = [(
        f"INSERT INTO contacts (contact_id, {', '.join(names)}, created_at) "
        f"VALUES ({owner}, {', '.join('?' for _ in names)}, ?) "
        f"ON CONFLICT (contact_id) DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names)}",
        (*phones, *columns.values(), now, now),
    )]
    for phone in phones:
        if phone in attached:
            continue
        # The owner first: last_insert_rowid() is the contact just inserted
        # only while none of the phones is attached (then the upsert inserted,
        # right before this statement).
        statements.append((
            f"INSERT INTO contact_phones (phone, contact_id) SELECT ?, coalesce({owner}, last_insert_rowid()) "
            "WHERE true ON CONFLICT (phone) DO NOTHING",  # WHERE: SQLite's rule for INSERT-SELECT upserts
            (phone, *phones),
        ))
    return statements


# -- the service -----------------------------------------------------------------


class Contacts:
    """Contacts and leads over a ``Store``.

    ``region`` reads national numbers (8916... in Russia); ``is_login`` says
    whether a manager login exists (None: any login is accepted); ``clock``
    gives created_at/updated_at.
    """

    def __init__(
        self,
        store: Store,
        *,
        region: str = "RU",
        is_login: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.region = region
        self._is_login = is_login
        self._clock = clock

    def phone(self, raw: str) -> str:
        """``raw`` as E.164, or FieldError("phone")."""
        number = e164(raw, self.region)
        if number is None:
            raise FieldError("phone", f"not a phone number: {raw[:40]!r}")
        return number

    # -- calls ---------------------------------------------------------------

    async def on_call_finished(
        self,
        record: CallRecord,
        *,
        shop: str | None,
        channel: str | None,
        manager_of: Callable[[str], str | None],
    ) -> Contact | None:
        """Apply ``call_statements`` on their own; the contact as committed, or
        None when the call has no customer (internal, withheld, unreadable)."""
        number = e164(customer_of(record), self.region)
        if number is None:
            return None
        await self.store.write(*self.call_statements(record, number, shop=shop, channel=channel,
                                                     manager_of=manager_of))
        return await self._get_e164(number)

    def call_statements(
        self,
        record: CallRecord,
        number: str,
        *,
        shop: str | None,
        channel: str | None,
        manager_of: Callable[[str], str | None],
    ) -> list[Statement]:
        """What a finished call with the customer ``number`` (E.164) does to
        him: make him a lead if he is new, note the call's time, and assign the
        first agent who talked as his manager if he has none. Statements for
        the writer, to run with the call's record."""
        now, t = self._clock(), record.started_at
        statements = _ensure_lead(number, now)
        # source_channel and first_shop follow the earliest call that has them
        # (a first call placed from a desk phone has no shop), so handling calls
        # out of order converges to the same contact; the WHERE keeps a
        # repeated record from touching updated_at.
        statements.append((
            "UPDATE contacts SET "
            "source_channel = CASE WHEN first_call_at IS NULL OR ?1 < first_call_at "
            "THEN coalesce(?2, source_channel) ELSE coalesce(source_channel, ?2) END, "
            "first_shop = CASE WHEN first_call_at IS NULL OR ?1 < first_call_at "
            "THEN coalesce(?3, first_shop) ELSE coalesce(first_shop, ?3) END, "
            "first_call_at = min(coalesce(first_call_at, ?1), ?1), "
            "last_call_at = max(coalesce(last_call_at, ?1), ?1), "
            "updated_at = ?4 "
            "WHERE contact_id = (SELECT contact_id FROM contact_phones WHERE phone = ?5) "
            "AND (first_call_at IS NULL OR last_call_at IS NULL OR ?1 < first_call_at OR ?1 > last_call_at)",
            (t, channel, shop, now, number),
        ))
        manager = manager_of(record.talked[0]) if record.talked else None
        if manager:
            statements.append((
                f"UPDATE contacts SET manager = ?, manager_set_by = ?, updated_at = ? "
                f"WHERE contact_id = {_OWNER} AND manager IS NULL",
                (manager, RULE, now, number),
            ))
        return statements

    # -- reads ---------------------------------------------------------------

    async def get(self, phone: str) -> Contact | None:
        """The contact with this phone (any spelling), or None. FieldError for a non-number."""
        return await self._get_e164(self.phone(phone))

    async def by_id(self, contact_id: int) -> Contact | None:
        rows = await self.store.read(f"{_SELECT_CONTACT} WHERE c.contact_id = ?", (contact_id,))
        return _contact(rows[0]) if rows else None

    async def _get_e164(self, number: str) -> Contact | None:
        rows = await self.store.read(f"{_SELECT_CONTACT} WHERE c.contact_id = {_OWNER}", (number,))
        return _contact(rows[0]) if rows else None

    async def manager_for(self, phone: str) -> Assignment | None:
        """Manager, VIP, blacklist, name and last call of the caller with this
        number, in one indexed query; None for an unknown or unreadable number."""
        number = e164(phone, self.region)
        if number is None:
            return None
        rows = await self.store.read(_MANAGER_FOR, (number,))
        if not rows:
            return None
        manager, vip, blacklisted, name, last_call_at = rows[0]
        return Assignment(manager, bool(vip), bool(blacklisted), name, last_call_at)

    async def last_seen(self, phone: str) -> float | None:
        """When the contact with this number (any of his phones) last called or
        was called; None if never or unknown."""
        found = await self.manager_for(phone)
        return found.last_call_at if found is not None else None

    # -- changes by people ---------------------------------------------------

    async def put(self, phone: str, fields: Mapping[str, Any], *, set_by: str) -> Contact:
        """Set some of name, company, vip, blacklisted, manager, status on the
        contact with this phone, creating him (as a lead) if he is new.
        FieldError names the first bad or unknown field."""
        number = self.phone(phone)
        values = self._check_json(fields)
        now = self._clock()
        await self.store.write(*_upsert([number], values, set_by, now))
        contact = await self._get_e164(number)
        assert contact is not None  # just written; contacts are never deleted
        return contact

    async def add_phone(self, contact_id: int, phone: str) -> Contact:
        """Give the contact another phone. ContactError if he does not exist or
        the phone belongs to someone else (contacts are not merged)."""
        number = self.phone(phone)
        owner = await self.store.read("SELECT contact_id FROM contact_phones WHERE phone = ?", (number,))
        if owner and owner[0][0] != contact_id:
            raise FieldError("phone", f"{number} already belongs to contact {owner[0][0]}")
        if not owner:
            await self.store.write(
                # Adds nothing when the contact does not exist (no foreign key
                # error to fail the batch with) or the phone was taken meanwhile.
                ("INSERT INTO contact_phones (phone, contact_id) SELECT ?, contact_id FROM contacts "
                 "WHERE contact_id = ? ON CONFLICT (phone) DO NOTHING", (number, contact_id)),
                ("UPDATE contacts SET updated_at = ? WHERE contact_id = ?", (self._clock(), contact_id)),
            )
        contact = await self.by_id(contact_id)
        if contact is None:
            raise ContactError(f"no contact {contact_id}")
        if number not in contact.phones:
            raise FieldError("phone", f"{number} already belongs to another contact")
        return contact

    # -- CSV -----------------------------------------------------------------

    async def export_csv(self) -> str:
        """Every contact as CSV (UTF-8 text, comma-separated, header first),
        in contact order. Phones are joined with ';'. Read a page at a time,
        so the router's lookups are not held up by a long read."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS)
        after = 0
        while True:
            rows = await self.store.read(
                f"{_SELECT_CONTACT} WHERE c.contact_id > ? ORDER BY c.contact_id LIMIT ?", (after, EXPORT_PAGE)
            )
            for row in rows:
                c = _contact(row)
                writer.writerow((
                    ";".join(c.phones), _cell(c.name), _cell(c.company), int(c.vip), int(c.blacklisted),
                    _cell(c.manager), _cell(c.status), _cell(c.source_channel), _cell(c.first_shop),
                    iso(c.first_call_at) or "", iso(c.last_call_at) or "",
                ))
            if len(rows) < EXPORT_PAGE:
                return out.getvalue()
            after = rows[-1][0]

    async def import_csv(self, text: str, *, set_by: str) -> ImportReport:
        """Create or update contacts from CSV text.

        The header names the columns (any order, any case): ``phone`` is
        required; name, company, vip, blacklisted, manager, status are set
        when present (an empty cell clears the field; a column that is absent
        leaves it as it is); the export's read-only columns are ignored; any
        other column refuses the whole file (ContactError). Comma, semicolon
        or tab separated, as the header shows. A row whose phones belong to
        different contacts, or with any bad cell, is reported and skipped; the
        other rows are written. Rows are numbered as a spreadsheet shows them
        (header = 1).
        """
        if text.startswith("\ufeff"):
            text = text[1:]
        reader, columns = _open_csv(text)
        created = updated = rows_read = error_count = 0
        errors: list[RowError] = []
        seen: dict[str, str] = {}  # phone -> owner key within this file ("id:5" or "row:7")

        pending: list[RowError] = []  # this chunk's, reported in row order

        def fail(row: int, field: str | None, message: str) -> None:
            pending.append(RowError(row, field, message))

        def report_pending() -> None:
            nonlocal error_count
            error_count += len(pending)
            errors.extend(sorted(pending, key=lambda e: e.row)[:max(0, MAX_REPORTED_ERRORS - len(errors))])
            pending.clear()

        row_number = 1
        done = False
        while not done:
            chunk: list[tuple[int, list[str], dict[str, Any]]] = []
            while len(chunk) < IMPORT_CHUNK:
                try:
                    cells = next(reader)
                except StopIteration:
                    done = True
                    break
                except csv.Error as exc:
                    row_number += 1
                    rows_read += 1
                    fail(row_number, None, f"unreadable CSV: {exc}")
                    continue
                row_number += 1
                if not any(cell.strip() for cell in cells):
                    continue  # a blank line
                rows_read += 1
                try:
                    phones, values = self._check_row(cells, columns)
                except FieldError as exc:
                    fail(row_number, exc.field, exc.reason)
                    continue
                chunk.append((row_number, phones, values))
            if not chunk:
                report_pending()
                continue

            # Who owns these phones now (and earlier rows of this file): to
            # refuse a row that would merge two contacts, and to count.
            wanted = sorted({p for _, phones, _ in chunk for p in phones if p not in seen})
            owners = dict(seen)
            for start in range(0, len(wanted), 500):
                part = wanted[start:start + 500]
                marks = ", ".join("?" for _ in part)
                for phone, contact_id in await self.store.read(
                    f"SELECT phone, contact_id FROM contact_phones WHERE phone IN ({marks})", tuple(part)
                ):
                    owners[phone] = f"id:{contact_id}"
            statements: list[Statement] = []
            outcome: list[tuple[int, bool]] = []  # (row, created)
            now = self._clock()
            for row, phones, values in chunk:
                keys = sorted({owners[p] for p in phones if p in owners})
                if len(keys) > 1:
                    holders = ", ".join(k.replace("id:", "contact ").replace("row:", "row ") for k in keys)
                    fail(row, "phone", f"the phones belong to different contacts ({holders}); not merged")
                    continue
                key = keys[0] if keys else f"row:{row}"
                # Phones committed to this contact before this chunk need no statement.
                attached = {p for p in phones if key.startswith("id:") and owners.get(p) == key}
                for p in phones:
                    owners[p] = key
                statements += _upsert(phones, values, set_by, now, attached)
                outcome.append((row, not keys))
            if not statements:
                report_pending()
                continue
            try:
                await self.store.write(*statements)
            except StoreError as exc:
                for row, _ in outcome:
                    fail(row, None, f"not saved: {exc}")
                report_pending()
                continue
            report_pending()
            seen.update(owners)
            created += sum(1 for _, new in outcome if new)
            updated += sum(1 for _, new in outcome if not new)
        log.info("contacts import by %s: %d rows, %d created, %d updated, %d errors",
                 set_by, rows_read, created, updated, error_count)
        return ImportReport(rows_read, created, updated, tuple(errors), error_count)

    # -- validation ----------------------------------------------------------

    def _check_json(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in EDITABLE:
                raise FieldError(str(name)[:40], f"unknown field; the fields are {', '.join(EDITABLE)}")
            if name in ("vip", "blacklisted"):
                if not isinstance(value, bool):
                    raise FieldError(name, "must be true or false")
                values[name] = int(value)
            elif value is not None and not isinstance(value, str):
                raise FieldError(name, "must be text or null")
            else:
                values[name] = self._check_text(name, value)
        return values

    def _check_row(self, cells: list[str], columns: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
        if len(cells) != len(columns):
            raise FieldError("row", f"{len(cells)} cells, but the header has {len(columns)} columns")
        phones: list[str] = []
        values: dict[str, Any] = {}
        for column, cell in zip(columns, cells):
            cell = _uncell(cell.strip())
            if column == "phone":
                for raw in re.split(r"[;,]", cell):
                    if not raw.strip():
                        continue
                    number = e164(raw, self.region)
                    if number is None:
                        raise FieldError("phone", f"not a phone number: {raw.strip()[:40]!r}")
                    if number not in phones:
                        phones.append(number)
                if not phones:
                    raise FieldError("phone", "no phone number")
                if len(phones) > MAX_PHONES_PER_ROW:
                    raise FieldError("phone", f"more than {MAX_PHONES_PER_ROW} phones")
            elif column in ("vip", "blacklisted"):
                flag = cell.lower()
                if flag not in _TRUE and flag not in _FALSE:
                    raise FieldError(column, f"{cell[:20]!r} is not yes/no (1/0, true/false, да/нет)")
                values[column] = int(flag in _TRUE)
            elif column == "status" and not cell:
                continue  # an empty status keeps the contact's status (there is no "no status")
            elif column in EDITABLE:
                values[column] = self._check_text(column, cell)
        return phones, values

    def _check_text(self, name: str, value: str | None) -> str | None:
        value = value.replace("\r\n", "\n").strip() if value is not None else None
        if not value:
            if name == "status":
                raise FieldError(name, "must not be empty")
            return None
        if _CONTROL.search(value):
            raise FieldError(name, "must not contain control characters")
        if name in ("name", "company"):
            if len(value) > MAX_TEXT:
                raise FieldError(name, f"longer than {MAX_TEXT} characters")
        elif name == "manager":
            if len(value) > MAX_LOGIN or (self._is_login is not None and not self._is_login(value)):
                raise FieldError(name, f"no user with login {value[:MAX_LOGIN]!r}")
        elif name == "status":
            if not _STATUS.fullmatch(value):
                raise FieldError(name, "must be a word of lowercase latin letters, digits, '_' or '-' (e.g. lead)")
        return value


def _contact(row: Sequence[Any]) -> Contact:
    return Contact(
        contact_id=row[0],
        name=row[1],
        company=row[2],
        vip=bool(row[3]),
        blacklisted=bool(row[4]),
        status=row[5],
        manager=row[6],
        manager_set_by=row[7],
        source_channel=row[8],
        first_shop=row[9],
        first_call_at=row[10],
        last_call_at=row[11],
        created_at=row[12],
        updated_at=row[13],
        phones=tuple(json.loads(row[14])) if row[14] else (),
    )


def _cell(value: str | None) -> str:
    """A text cell that a spreadsheet will not run as a formula ('=1+1' -> "'=1+1")."""
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _uncell(value: str) -> str:
    """Undo ``_cell``: the export's guard quote does not come back in on import."""
    return value[1:] if value.startswith("'") and value[1:].startswith(_FORMULA_START) else value


def _open_csv(text: str) -> tuple[Iterator[list[str]], list[str]]:
    """A reader positioned after the header, and the header's column names."""
    first_line = text.split("\n", 1)[0]
    for delimiter in (",", ";", "\t"):
        header = next(csv.reader([first_line], delimiter=delimiter), [])
        columns = [c.strip().lower() for c in header]
        if "phone" in columns:
            break
    else:
        raise ContactError("the first line must be a header with a 'phone' column")
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise ContactError(f"unknown column {unknown[0][:40]!r}; the columns are {', '.join(CSV_COLUMNS)}")
    doubled = sorted({c for c in columns if columns.count(c) > 1})
    if doubled:
        raise ContactError(f"column {doubled[0]!r} appears twice")
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    next(reader)  # the header, read above
    # Read-only columns are carried through _check_row as cells and ignored there.
    return reader, [c if c not in _READ_ONLY_COLUMNS else "-" + c for c in columns]
