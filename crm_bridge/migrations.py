"""Versioned schema of the call store.

``MIGRATIONS`` lists ``(version, script)`` in order; versions run 1, 2, 3, ...
with no gaps. The schema version of a file is SQLite's ``PRAGMA user_version``
(0 for a new file). ``migrate`` applies every step above it, each in its own
``BEGIN IMMEDIATE`` transaction together with the new ``user_version``, so a
file is always at exactly one version: a step that fails leaves no trace.

Rules for adding a step: append, never edit a released one; one script may
hold several statements separated by ``;``; do not put ``BEGIN``/``COMMIT`` in
it. A step that has to rebuild a table with foreign keys needs
``PRAGMA foreign_keys=OFF`` outside the transaction: extend ``migrate`` for
that when it first happens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import aiosqlite

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE calls (
            call_id        TEXT PRIMARY KEY NOT NULL,
            direction      TEXT NOT NULL,
            caller         TEXT,
            caller_name    TEXT,
            dialled        TEXT,
            outcome        TEXT NOT NULL,
            answered_by    TEXT,
            rang           TEXT NOT NULL,   -- JSON array of extensions, in ring order
            talked         TEXT NOT NULL,   -- JSON array of extensions, in talk order
            started_at     REAL NOT NULL,   -- epoch seconds, UTC
            answered_at    REAL,
            ended_at       REAL,
            ring_seconds   REAL NOT NULL,
            talk_seconds   REAL NOT NULL,
            hangup_cause   INTEGER,
            reason         TEXT,
            interrupted    INTEGER NOT NULL,  -- 0/1
            ended          INTEGER NOT NULL,  -- 0/1
            recording_path TEXT
        );
        -- calls(since=...) filters and orders on these two.
        CREATE INDEX calls_by_started_at ON calls (started_at, call_id);

        CREATE TABLE call_legs (
            call_id      TEXT NOT NULL REFERENCES calls (call_id) ON DELETE CASCADE,
            leg_id       TEXT NOT NULL,
            kind         TEXT NOT NULL,
            extension    TEXT,
            number       TEXT,
            started_at   REAL NOT NULL,
            answered_at  REAL,
            ended_at     REAL,
            hangup_cause INTEGER,
            PRIMARY KEY (call_id, leg_id)
        );
        """,
    ),
    (
        2,
        """
        -- When the row was last written (epoch seconds): set by every upsert.
        ALTER TABLE calls ADD COLUMN updated_at REAL;
        """,
    ),
    (
        3,
        # The agent's call result and note, set from the caller card, often
        # while the call is still going (so before its record exists): a table
        # of its own, keyed by the call id. And the indexes behind the card's
        # history and the agent's recent calls.
        """
        CREATE TABLE call_results (
            call_id TEXT PRIMARY KEY,
            result TEXT NOT NULL,
            note TEXT,
            set_by TEXT NOT NULL,
            set_at REAL NOT NULL
        );
        CREATE INDEX calls_caller ON calls (caller, started_at);
        CREATE INDEX calls_dialled ON calls (dialled, started_at);
        CREATE INDEX call_legs_extension ON call_legs (extension, started_at);
        """,
    ),
    (
        4,
        # The number plan's answer for the dialled number, fixed when the call
        # started (a reload applies to the next call only).
        """
        ALTER TABLE calls ADD COLUMN shop TEXT;
        ALTER TABLE calls ADD COLUMN channel TEXT;
        """,
    ),
    (
        5,
        # Contacts and leads, keyed by E.164 phone (several phones per contact).
        """
        CREATE TABLE contacts (
            contact_id INTEGER PRIMARY KEY,
            name TEXT,
            company TEXT,
            vip INTEGER NOT NULL DEFAULT 0,
            blacklisted INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL DEFAULT 'lead',
            manager TEXT,
            manager_set_by TEXT,
            source_channel TEXT,
            first_shop TEXT,
            first_call_at REAL,
            last_call_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE contact_phones (
            phone TEXT PRIMARY KEY,
            contact_id INTEGER NOT NULL REFERENCES contacts (contact_id) ON DELETE CASCADE
        );
        CREATE INDEX contact_phones_contact ON contact_phones (contact_id);
        CREATE INDEX contacts_manager ON contacts (manager);
        """,
    ),
    (
        6,
        # Click-to-call requests, one per (agent, client request id): a retry
        # with the same id finds its row and never dials twice, also after a
        # restart. The row is written before the Originate is sent.
        # status: pending (being placed, or the gateway stopped before the PBX
        # answered), placed, failed (error_code and error say why).
        """
        CREATE TABLE click_to_call (
            request_id TEXT NOT NULL,
            login      TEXT NOT NULL,
            call_id    TEXT NOT NULL,
            number     TEXT NOT NULL,   -- E.164
            shop       TEXT,
            caller_id  TEXT,            -- what the customer is shown: the shop's number
            status     TEXT NOT NULL,
            error_code TEXT,
            error      TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (login, request_id)
        );
        -- The call record finds its request (and shop) by the call id.
        CREATE UNIQUE INDEX click_to_call_call_id ON click_to_call (call_id);
        """,
    ),
    (
        7,
        # The follow-up of calls (gateway.callbacks, gateway.kpi):
        # - calls.customer: the customer's number as E.164 (NULL for internal
        #   or withheld), so one index finds a contact's calls however the PBX
        #   wrote the number (the VIP plan counts them);
        # - callback_tasks: one per missed customer until he is reached; at most
        #   one open per phone (the partial unique index), attempts counted from
        #   callback_attempts, which is keyed by call so a record handled twice
        #   counts once; callback_reaches: the calls that reached a customer;
        # - interactions: KPI points, one row per (kind, call, agent) for those
        #   counted from calls, per client request id for those posted by hand.
        """
        ALTER TABLE calls ADD COLUMN customer TEXT;
        CREATE INDEX calls_customer ON calls (customer, started_at);
        CREATE TABLE callback_tasks (
            task_id          INTEGER PRIMARY KEY,
            phone            TEXT NOT NULL,      -- E.164
            status           TEXT NOT NULL,      -- open | reached | closed (by hand)
            shop             TEXT,
            channel          TEXT,
            owner            TEXT,               -- a user's login
            attempts         INTEGER NOT NULL DEFAULT 0,
            first_attempt_at REAL NOT NULL,      -- when the first missed call ended
            last_attempt_at  REAL NOT NULL,
            due_at           REAL NOT NULL,      -- the SLA deadline (working time of the shop)
            escalated_at     REAL,               -- SLA breach notified (once); the digest's flag
            closed_at        REAL,
            closed_by        TEXT,               -- who reached the customer or closed it by hand
            close_reason     TEXT,               -- called_back | called_in | a reason given by hand
            close_note       TEXT,
            closed_call_id   TEXT,
            callback_seconds REAL,               -- first attempt to reaching the customer
            within_sla       INTEGER,            -- 0/1 once reached
            created_at       REAL NOT NULL,
            updated_at       REAL NOT NULL
        );
        CREATE UNIQUE INDEX callback_tasks_one_open ON callback_tasks (phone) WHERE status = 'open';
        CREATE INDEX callback_tasks_owner ON callback_tasks (owner, status);
        CREATE INDEX callback_tasks_due ON callback_tasks (status, due_at);
        CREATE TABLE callback_attempts (
            call_id TEXT PRIMARY KEY,
            task_id INTEGER NOT NULL REFERENCES callback_tasks (task_id),
            at      REAL NOT NULL,
            outcome TEXT NOT NULL
        );
        CREATE INDEX callback_attempts_task ON callback_attempts (task_id);
        -- Answered calls with a customer, kept so that a missed call whose
        -- record comes in after the call that reached him (webhooks can be
        -- late) still finds it and closes at once.
        CREATE TABLE callback_reaches (
            call_id TEXT PRIMARY KEY,
            phone   TEXT NOT NULL,
            at      REAL NOT NULL,   -- when he answered or was answered
            by      TEXT,            -- the agent's login (or extension)
            reason  TEXT NOT NULL,   -- called_back | called_in
            points  REAL             -- callback_in_sla points for "by", if within the SLA; NULL: none
        );
        CREATE INDEX callback_reaches_phone ON callback_reaches (phone, at);
        CREATE TABLE interactions (
            interaction_id INTEGER PRIMARY KEY,
            login       TEXT NOT NULL,
            kind        TEXT NOT NULL,
            at          REAL NOT NULL,
            points      REAL NOT NULL,   -- as the points table said when it was recorded
            call_id     TEXT,
            note        TEXT,
            recorded_by TEXT,            -- NULL when counted from a call
            dedup_key   TEXT NOT NULL UNIQUE
        );
        CREATE INDEX interactions_by_time ON interactions (at, login);
        CREATE INDEX interactions_by_login ON interactions (login, at);
        """,
    ),
    (
        8,
        # Webhooks from cloud PBXs, stored before they are acknowledged: a 2xx
        # means the request is on disk. The provider's own key of an event
        # (dedup_key) absorbs duplicate deliveries; call_key groups a call's
        # events so the call can be rebuilt from them after a restart; done is
        # set once the call's record is stored.
        """
        CREATE TABLE webhook_inbox (
            inbox_id    INTEGER PRIMARY KEY,
            provider    TEXT NOT NULL,
            account     TEXT NOT NULL,
            dedup_key   TEXT NOT NULL,
            call_key    TEXT,            -- NULL: an event of no call (a ping, a command result)
            received_at REAL NOT NULL,
            path        TEXT NOT NULL,   -- below the account's prefix, e.g. "events/call"
            query       TEXT NOT NULL,   -- the raw query string
            body        BLOB NOT NULL,   -- the raw body, as signed
            done        INTEGER NOT NULL DEFAULT 0,
            UNIQUE (provider, account, dedup_key)
        );
        CREATE INDEX webhook_inbox_call ON webhook_inbox (provider, account, call_key);
        CREATE INDEX webhook_inbox_pending ON webhook_inbox (done, inbox_id);
        """,
    ),
    (
        9,
        # Recordings: one per call, fetched from the PBX (a file Asterisk wrote,
        # or a provider's download), transcoded, kept under a name the gateway
        # makes. status: pending (to fetch; next_attempt_at), ready, missing
        # (gave up after the retries; error says why), purged (retention),
        # erased (personal data). Every listen is audited. A call under legal
        # hold keeps its recording past retention.
        """
        CREATE TABLE recordings (
            call_id         TEXT PRIMARY KEY,
            source          TEXT NOT NULL,   -- the record's recording_path: a PBX file or provider://account/id
            status          TEXT NOT NULL,
            file            TEXT,            -- the gateway's own file name in the recordings directory
            content_type    TEXT,
            duration        REAL,            -- seconds
            size            INTEGER,         -- bytes
            peaks           TEXT,            -- JSON array of 0..1, the player's waveform
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            error           TEXT,
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL
        );
        CREATE INDEX recordings_due ON recordings (status, next_attempt_at);
        CREATE TABLE recording_listens (
            listen_id INTEGER PRIMARY KEY,
            call_id   TEXT NOT NULL,
            login     TEXT NOT NULL,
            at        REAL NOT NULL,
            bytes     INTEGER NOT NULL,
            range     TEXT,                -- the Range header asked for, if any
            remote    TEXT
        );
        CREATE INDEX recording_listens_at ON recording_listens (at);
        -- The call log shows which task a call closed.
        CREATE INDEX callback_tasks_closed_call ON callback_tasks (closed_call_id);
        CREATE TABLE legal_holds (
            call_id TEXT PRIMARY KEY,
            set_by  TEXT NOT NULL,
            set_at  REAL NOT NULL,
            reason  TEXT
        );
        CREATE TABLE privacy_log (
            entry_id INTEGER PRIMARY KEY,
            at       REAL NOT NULL,
            login    TEXT NOT NULL,
            action   TEXT NOT NULL,        -- export | erase | purge
            subject  TEXT NOT NULL,        -- the phone number, or "retention"
            detail   TEXT NOT NULL         -- JSON: what was exported, erased or purged
        );
        """,
    ),
    (
        10,
        # Reports: each call's local day and hour (the reports' time zone), so
        # daily roll-ups per (day, shop, channel) can be recomputed from the
        # calls of one key in the transaction that stores a call (or its
        # result), whatever order calls come in; the (day, shop, channel,
        # caller) set behind exact unique-caller counts; deals with their
        # first- and last-touch channels; spend per channel and day.
        """
        ALTER TABLE calls ADD COLUMN day TEXT;
        ALTER TABLE calls ADD COLUMN hour INTEGER;
        CREATE INDEX calls_day ON calls (day);
        CREATE TABLE rollup_daily (
            day        TEXT NOT NULL,
            shop       TEXT NOT NULL,       -- '' for none
            channel    TEXT NOT NULL,
            calls      INTEGER NOT NULL,
            answered   INTEGER NOT NULL,
            missed     INTEGER NOT NULL,
            abandoned  INTEGER NOT NULL,
            wait_sum   REAL NOT NULL,       -- seconds callers waited until answered (answered calls)
            talk_sum   REAL NOT NULL,
            qualified  INTEGER NOT NULL,    -- calls whose result is one of the qualified results
            PRIMARY KEY (day, shop, channel)
        ) WITHOUT ROWID;
        CREATE TABLE rollup_hours (
            day     TEXT NOT NULL,
            hour    INTEGER NOT NULL,
            shop    TEXT NOT NULL,
            channel TEXT NOT NULL,
            calls   INTEGER NOT NULL,
            missed  INTEGER NOT NULL,       -- missed or abandoned
            PRIMARY KEY (day, hour, shop, channel)
        ) WITHOUT ROWID;
        -- One row per caller, key and day he called, for the keys (shop,
        -- channel), ('*', channel), (shop, '*') and ('*', '*'); prev_day is
        -- the day he called before on that key (NULL: never), so the unique
        -- callers of a period are its rows whose prev_day is before the
        -- period: a range count, no DISTINCT.
        CREATE TABLE caller_days (
            shop     TEXT NOT NULL,
            channel  TEXT NOT NULL,
            day      TEXT NOT NULL,
            customer TEXT NOT NULL,
            prev_day TEXT,
            PRIMARY KEY (shop, channel, day, customer)
        ) WITHOUT ROWID;
        CREATE INDEX caller_days_caller ON caller_days (customer, shop, channel, day);
        CREATE INDEX caller_days_prev ON caller_days (shop, channel, prev_day, day);
        -- caller_days counted per (key, day, month of prev_day; '' for none):
        -- the unique callers of a period are the counts of its days whose
        -- prev_month is before the period's month, plus the few rows whose
        -- prev_day falls in that month before the period starts.
        CREATE TABLE caller_day_counts (
            shop       TEXT NOT NULL,
            channel    TEXT NOT NULL,
            day        TEXT NOT NULL,
            prev_month TEXT NOT NULL,
            n          INTEGER NOT NULL,
            PRIMARY KEY (shop, channel, day, prev_month)
        ) WITHOUT ROWID;
        CREATE TABLE deals (
            deal_id       INTEGER PRIMARY KEY,
            external_id   TEXT NOT NULL UNIQUE,
            phone         TEXT NOT NULL,     -- E.164
            amount        REAL NOT NULL,
            margin        REAL NOT NULL,
            status        TEXT NOT NULL,     -- won | lost
            day           TEXT NOT NULL,     -- YYYY-MM-DD
            first_shop    TEXT,
            first_channel TEXT,              -- the channel of the contact's first call
            last_shop     TEXT,
            last_channel  TEXT,              -- the channel of his last call before the deal
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL
        );
        CREATE INDEX deals_day ON deals (day);
        CREATE TABLE channel_costs (
            day     TEXT NOT NULL,
            shop    TEXT NOT NULL,           -- '' for all shops
            channel TEXT NOT NULL,
            amount  REAL NOT NULL,
            PRIMARY KEY (day, shop, channel)
        ) WITHOUT ROWID;
        """,
    ),
    (
        11,
        # The daily digest: one row per (recipient, his local day, channel), so
        # a restart the same morning sends nothing twice and a failed send is
        # retried from last_attempt_at.
        """
        CREATE TABLE digest_sent (
            recipient       TEXT NOT NULL,
            day             TEXT NOT NULL,
            channel         TEXT NOT NULL,     -- email | telegram
            sent_at         REAL,              -- NULL until it went out
            attempts        INTEGER NOT NULL DEFAULT 0,
            last_attempt_at REAL,
            error           TEXT,              -- the last error; NULL once sent
            PRIMARY KEY (recipient, day, channel)
        ) WITHOUT ROWID;
        """,
    ),
    (
        12,
        # The CRM bridge's outbox: one row per (sink, event), delivered at least
        # once. Rows are written in the transaction of the change they report:
        # call events by the service, task and recording events by the
        # triggers below (those rows change inside SQL statements).
        """
        CREATE TABLE outbox_sinks (
            sink    TEXT PRIMARY KEY NOT NULL,
            events  TEXT NOT NULL,          -- JSON array of the event types it takes
            max_age REAL NOT NULL           -- seconds of retrying before an entry is dead
        ) WITHOUT ROWID;
        CREATE TABLE outbox (
            entry_id   INTEGER PRIMARY KEY,
            sink       TEXT NOT NULL,
            event      TEXT NOT NULL,       -- call.ringing, call.finished, task.opened, ...
            stream     TEXT NOT NULL,       -- a call's id or task:<id>: delivered in entry order
            key        TEXT NOT NULL,       -- idempotency key, the same for every retry
            payload    TEXT NOT NULL,       -- JSON: the event's data
            state      TEXT NOT NULL DEFAULT 'pending',  -- pending | done | dead
            attempts   INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            next_at    REAL NOT NULL,       -- the next attempt, epoch seconds
            give_up_at REAL NOT NULL,       -- dead when an attempt after this fails
            last_error TEXT,
            done_at    REAL,
            UNIQUE (sink, key)
        );
        CREATE INDEX outbox_due ON outbox (sink, state, next_at);
        CREATE INDEX outbox_stream ON outbox (sink, stream, entry_id) WHERE state = 'pending';
        -- The other side's id for one of our calls (Bitrix24's CALL_ID), and its tokens.
        CREATE TABLE crm_links (
            sink      TEXT NOT NULL,
            call_id   TEXT NOT NULL,
            remote_id TEXT NOT NULL,
            data      TEXT,                 -- JSON the sink keeps with it (users shown a card)
            PRIMARY KEY (sink, call_id)
        ) WITHOUT ROWID;
        CREATE TABLE crm_tokens (
            sink          TEXT PRIMARY KEY NOT NULL,
            access_token  TEXT NOT NULL,
            refresh_token TEXT NOT NULL,
            expires_at    REAL NOT NULL
        ) WITHOUT ROWID;

        CREATE TRIGGER outbox_task_opened AFTER INSERT ON callback_attempts
        WHEN (SELECT count(*) FROM callback_attempts WHERE task_id = NEW.task_id) = 1
        BEGIN
            INSERT INTO outbox (sink, event, stream, key, payload, created_at, next_at, give_up_at)
            SELECT s.sink, 'task.opened', 'task:' || t.task_id, 'task:' || t.task_id || ':opened',
                   json_object('task_id', t.task_id, 'phone', t.phone, 'shop', t.shop, 'channel', t.channel,
                               'owner', t.owner, 'call_id', NEW.call_id, 'opened_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', t.first_attempt_at, 'unixepoch'),
                               'due_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', t.due_at, 'unixepoch')),
                   t.updated_at, t.updated_at, t.updated_at + s.max_age
            FROM callback_tasks AS t, outbox_sinks AS s
            WHERE t.task_id = NEW.task_id
              AND EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = 'task.opened')
            ON CONFLICT (sink, key) DO NOTHING;
        END;

        CREATE TRIGGER outbox_task_closed AFTER UPDATE OF status ON callback_tasks
        WHEN OLD.status = 'open' AND NEW.status != 'open'
        BEGIN
            INSERT INTO outbox (sink, event, stream, key, payload, created_at, next_at, give_up_at)
            SELECT s.sink, 'task.closed', 'task:' || NEW.task_id, 'task:' || NEW.task_id || ':closed',
                   json_object('task_id', NEW.task_id, 'phone', NEW.phone, 'shop', NEW.shop,
                               'channel', NEW.channel, 'owner', NEW.owner, 'status', NEW.status,
                               'attempts', NEW.attempts, 'opened_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', NEW.first_attempt_at, 'unixepoch'), 'due_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', NEW.due_at, 'unixepoch'),
                               'closed_at', strftime('%Y-%m-%dT%H:%M:%f+00:00', NEW.closed_at, 'unixepoch'), 'closed_by', NEW.closed_by,
                               'reason', NEW.close_reason, 'call_id', NEW.closed_call_id,
                               'callback_seconds', NEW.callback_seconds,
                               'within_sla', CASE WHEN NEW.within_sla IS NULL THEN NULL
                                                  WHEN NEW.within_sla THEN json('true') ELSE json('false') END),
                   NEW.updated_at, NEW.updated_at, NEW.updated_at + s.max_age
            FROM outbox_sinks AS s
            WHERE EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = 'task.closed')
            ON CONFLICT (sink, key) DO NOTHING;
        END;

        CREATE TRIGGER outbox_recording_ready AFTER UPDATE OF status ON recordings
        WHEN NEW.status = 'ready' AND OLD.status != 'ready'
        BEGIN
            INSERT INTO outbox (sink, event, stream, key, payload, created_at, next_at, give_up_at)
            SELECT s.sink, 'recording.ready', NEW.call_id, NEW.call_id || ':recording',
                   json_object('call_id', NEW.call_id, 'content_type', NEW.content_type,
                               'duration', NEW.duration, 'size', NEW.size),
                   NEW.updated_at, NEW.updated_at, NEW.updated_at + s.max_age
            FROM outbox_sinks AS s
            WHERE EXISTS (SELECT 1 FROM json_each(s.events) WHERE value = 'recording.ready')
            ON CONFLICT (sink, key) DO NOTHING;
        END;
        """,
    ),
    (
        13,
        # Roll-ups kept by parts: each inbound call's contribution to its day's
        # and hour's rows is kept, subtracted when the call is stored again
        # and added anew, so storing a call costs the same however many calls
        # its day already has (recomputing the key from its calls grew with the
        # day). Sums in whole milliseconds: subtracting and adding integers
        # never drifts. Filled here from the calls with the default qualified
        # result ("order"); `cti-gateway rebuild-rollups` applies another
        # [reports] qualified_results.
        """
        CREATE TABLE rollup_parts (
            call_id   TEXT PRIMARY KEY NOT NULL,
            day       TEXT NOT NULL,
            hour      INTEGER NOT NULL,
            shop      TEXT NOT NULL,
            channel   TEXT NOT NULL,
            answered  INTEGER NOT NULL,
            missed    INTEGER NOT NULL,
            abandoned INTEGER NOT NULL,
            wait_ms   INTEGER NOT NULL,
            talk_ms   INTEGER NOT NULL,
            qualified INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO rollup_parts
        SELECT c.call_id, c.day, c.hour, coalesce(c.shop, ''), coalesce(c.channel, ''), c.outcome = 'answered',
               c.outcome = 'missed', c.outcome = 'abandoned',
               CASE WHEN c.outcome = 'answered' THEN CAST(round(c.ring_seconds * 1000) AS INTEGER) ELSE 0 END,
               CAST(round(c.talk_seconds * 1000) AS INTEGER), coalesce(r.result = 'order', 0)
        FROM calls AS c LEFT JOIN call_results AS r ON r.call_id = c.call_id
        WHERE c.direction = 'inbound' AND c.day IS NOT NULL AND c.hour IS NOT NULL;
        DROP TABLE rollup_daily;
        CREATE TABLE rollup_daily (
            day        TEXT NOT NULL,
            shop       TEXT NOT NULL,       -- '' for none
            channel    TEXT NOT NULL,
            calls      INTEGER NOT NULL,
            answered   INTEGER NOT NULL,
            missed     INTEGER NOT NULL,
            abandoned  INTEGER NOT NULL,
            wait_ms    INTEGER NOT NULL,    -- callers' wait until answered (answered calls)
            talk_ms    INTEGER NOT NULL,
            qualified  INTEGER NOT NULL,    -- calls whose result is one of the qualified results
            PRIMARY KEY (day, shop, channel)
        ) WITHOUT ROWID;
        INSERT INTO rollup_daily
        SELECT day, shop, channel, count(*), sum(answered), sum(missed), sum(abandoned), sum(wait_ms), sum(talk_ms),
               sum(qualified)
        FROM rollup_parts GROUP BY day, shop, channel;
        DELETE FROM rollup_hours;
        INSERT INTO rollup_hours
        SELECT day, hour, shop, channel, count(*), sum(missed + abandoned) FROM rollup_parts
        GROUP BY day, hour, shop, channel;
        """,
    ),
]

LATEST_VERSION: int = MIGRATIONS[-1][0]


class MigrationError(Exception):
    """A migration step failed or the file's schema is unknown to this code."""


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    assert row is not None  # PRAGMA user_version always answers one row
    return int(row[0])


async def migrate(
    db: aiosqlite.Connection,
    migrations: Sequence[tuple[int, str]] = MIGRATIONS,
) -> int:
    """Bring the database up to the last version in ``migrations``; return it.

    Safe against another process migrating the same file at the same time:
    each step re-reads the version once it holds the write lock and skips
    what is already applied. Raises ``MigrationError`` (the cause chained) when
    a step fails, or when the file is newer than the code.
    """
    _check_sequence(migrations)
    target = migrations[-1][0] if migrations else 0
    current = await schema_version(db)
    if current > target:
        raise MigrationError(
            f"database schema version {current} is newer than this code knows "
            f"({target}); refusing to use it"
        )
    for version, script in migrations:
        if version <= current:
            continue
        await db.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have just
            # applied this step between our first read and the lock.
            current = await schema_version(db)
            if version > current:
                for statement in split_statements(script):
                    await db.execute(statement)
                # PRAGMA cannot take bound parameters; version is our own int.
                await db.execute(f"PRAGMA user_version = {int(version)}")
                current = version
            await db.execute("COMMIT")
        except BaseException as exc:
            await _rollback_quietly(db)
            if isinstance(exc, sqlite3.Error):
                raise MigrationError(
                    f"migration to schema version {version} failed: {exc}"
                ) from exc
            raise
    return current


def split_statements(script: str) -> list[str]:
    """Cut a script into single statements (``execute`` takes one at a time).

    ``sqlite3.complete_statement`` decides where a statement ends, so a ``;``
    inside a string literal or a trigger body does not cut it.
    """
    statements: list[str] = []
    pending = ""
    pieces = script.split(";")
    for i, piece in enumerate(pieces):
        pending += piece if i == len(pieces) - 1 else piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    leftover = [line.strip() for line in pending.splitlines()]
    if any(line and not line.startswith("--") for line in leftover):
        raise ValueError(f"migration script ends in an incomplete statement: {pending.strip()!r}")
    return statements


def _check_sequence(migrations: Sequence[tuple[int, str]]) -> None:
    versions = [version for version, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must run 1, 2, 3, ... without gaps: {versions}")


async def _rollback_quietly(db: aiosqlite.Connection) -> None:
    try:
        await db.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # no transaction left to roll back (BEGIN itself failed, or SQLite already did)
