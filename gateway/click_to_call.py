"""Click-to-call: an agent asks the gateway to call a customer back.

Vendor-neutral. Placing the call is a ``Dialer``'s business (for Asterisk,
``connectors.ami.dialer.AmiDialer``: one Originate that rings the agent's
phone first, then the customer). This service decides what to place:

- the customer's number, read as E.164 in the configured region;
- the shop he sees calling: the one the request names, else the shop of his
  latest inbound call (any spelling of his number), else the plan's default;
  the caller ID shown to him is that shop's ``caller_id``;
- the call id, ``c2c-<uuid4 hex>``, handed to the PBX, so the call's events
  and its record are known as this request's (and get its shop).

Idempotency: one request per (agent login, client request id). A new request
is written to the store *before* the dialer is asked; a retry with the same
id finds it (the in-flight task while it is being placed, the table after
that, also after a restart) and gets the same answer. Nothing here or in a
dialer ever sends a call request twice: a request whose fate is unknown (the
link died, the PBX did not answer in time) is marked failed with that reason,
because the customer's phone may be ringing already (DESIGN: reliability).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Protocol

from crm_bridge.contacts import e164
from gateway.card import spellings
from gateway.numberplan import PlanBook, Shop
from gateway.users import Directory, Role, User

if TYPE_CHECKING:
    import sqlite3

    from crm_bridge.contacts import Contacts
    from crm_bridge.store import Store

log = logging.getLogger(__name__)

CHANNEL: Final = "click-to-call"  # the ``channel`` of a click-to-call record
CALL_ID_PREFIX: Final = "c2c-"
MAX_REQUEST_ID: Final = 64
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
MAX_NUMBER: Final = 64

PENDING, PLACED, FAILED = "pending", "placed", "failed"


# -- errors -----------------------------------------------------------------------


# What a dialer's exception says in its ``kind`` attribute (see ``Dialer``).
REFUSED: Final = "refused"  # the PBX answered no; the exception's message is its reason. Nothing rings.
UNAVAILABLE: Final = "unavailable"  # the PBX cannot be reached; nothing was sent
UNCERTAIN: Final = "uncertain"  # sent, but no answer came: the phones may ring anyway


class ClickToCallError(Exception):
    """What the agent is told: ``code`` for programs, ``message`` for people.

    Codes: ``bad_number``, ``bad_shop``, ``bad_request_id``, ``no_extension``
    (nothing stored, nothing sent); ``store_unavailable`` (nothing sent);
    ``originate_failed`` (the PBX refused: its message), ``pbx_unavailable``
    (not connected to the PBX: nothing sent), ``originate_uncertain`` (sent,
    unconfirmed: the call may still come). The last three mark the request
    failed; a retry with its id gets the same error again.
    """

    def __init__(self, code: str, message: str, request: CallRequest | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request = request


_CODE_OF_KIND: Final = {
    REFUSED: "originate_failed",
    UNAVAILABLE: "pbx_unavailable",
    UNCERTAIN: "originate_uncertain",
}


# -- the parts ----------------------------------------------------------------------


class Dialer(Protocol):
    """Places one call: the agent's ``extension`` rings first (showing the
    customer's ``contact_name`` or number), then ``number`` is called showing
    ``caller_id``. ``call_id`` becomes the PBX's id of the call. Returns when
    the PBX has accepted the request; never retries.

    On failure it raises an exception whose ``kind`` attribute is ``REFUSED``,
    ``UNAVAILABLE`` or ``UNCERTAIN`` and whose ``message`` (else ``str()``) is
    for the agent. An exception without ``kind`` counts as ``UNCERTAIN``: the
    call may have gone out, so it is never placed again. (An attribute, not a
    class from this module: connectors do not import the gateway's services.)
    """

    async def place(
        self,
        *,
        extension: str,
        number: str,
        caller_id: str | None,
        call_id: str,
        request_id: str,
        contact_name: str | None,
    ) -> None: ...


@dataclass(frozen=True)
class CallRequest:
    request_id: str
    login: str
    call_id: str
    number: str  # E.164
    shop: str | None  # shop id
    caller_id: str | None  # shown to the customer
    status: str  # pending | placed | failed
    created_at: float
    error_code: str | None = None
    error: str | None = None
    repeated: bool = False  # this answer is for a retry of an earlier request

    def public(self) -> dict[str, Any]:
        return {"call_id": self.call_id, "request_id": self.request_id, "status": self.status,
                "number": self.number, "shop": self.shop, "caller_id": self.caller_id}


_COLUMNS: Final = ("request_id", "login", "call_id", "number", "shop", "caller_id", "status", "error_code",
                   "error", "created_at")
_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM click_to_call"
_INSERT: Final = (
    f"INSERT INTO click_to_call ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (login, request_id) DO NOTHING"
)
_UPDATE: Final = "UPDATE click_to_call SET status = ?, error_code = ?, error = ? WHERE login = ? AND request_id = ?"


def _row(request: CallRequest) -> tuple[Any, ...]:
    return (request.request_id, request.login, request.call_id, request.number, request.shop, request.caller_id,
            request.status, request.error_code, request.error, request.created_at)


def _request(row: sqlite3.Row | tuple[Any, ...]) -> CallRequest:
    return CallRequest(**dict(zip(_COLUMNS, row)))


# -- the service ----------------------------------------------------------------------


class ClickToCall:
    """Places agents' call-backs through a ``Dialer``, once per request id.

    ``region`` reads national numbers; ``contacts`` (optional) names the
    customer on the agent's phone; ``remember`` bounds the in-memory map of
    recent requests by call id that the service consults for each finished
    outbound record (older ones are read from the table).
    """

    def __init__(
        self,
        store: Store,
        dialer: Dialer,
        plans: PlanBook,
        directory: Directory,
        clock: Callable[[], float],
        *,
        region: str = "RU",
        contacts: Contacts | None = None,
        remember: int = 10_000,
    ) -> None:
        self.store = store
        self.dialer = dialer
        self.plans = plans
        self.directory = directory
        self.clock = clock
        self.region = region
        self.contacts = contacts
        self._remember_max = remember
        self._by_call: OrderedDict[str, CallRequest] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[CallRequest]] = {}

    # -- placing ------------------------------------------------------------------

    async def call(
        self, user: User | str, number: str, *, shop_id: str | None = None, request_id: str
    ) -> CallRequest:
        """Call ``number`` back for ``user`` (a User or a login); see the module
        docstring. ``CallRequest.repeated`` is True when ``request_id`` was
        seen before (the answer is that request's); raises ``ClickToCallError``."""
        agent = self._agent(user)
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise ClickToCallError("bad_request_id", f"request_id: 1 to {MAX_REQUEST_ID} characters of "
                                   "letters, digits and . _ : -")
        customer = self._number(number)
        plan = self.plans.at(self.clock())
        shop: Shop | None = None
        if shop_id is not None:
            shop = plan.shops.get(shop_id)
            if shop is None:
                raise ClickToCallError("bad_shop", f"no shop {shop_id[:40]!r} in the number plan")
        key = (agent.login, request_id)
        task = self._inflight.get(key)
        if task is None:
            stored = await self._load(key)
            # Another retry may have started placing it while we read.
            task = self._inflight.get(key)
            if task is None:
                if stored is not None:
                    return self._again(stored)
                # From here to the map entry there is no await: one task per key.
                task = asyncio.create_task(self._place(agent, customer, shop, request_id),
                                           name=f"click-to-call {agent.login}/{request_id}")
                self._inflight[key] = task
                task.add_done_callback(partial(self._settled, key))
                # Shielded: an HTTP client that goes away does not cancel a
                # call half-placed; the request still gets its final status.
                return await asyncio.shield(task)
        return replace(await asyncio.shield(task), repeated=True)

    def _agent(self, user: User | str) -> User:
        found = self.directory.by_login(user) if isinstance(user, str) else user
        if found is None or found.role is not Role.AGENT:
            raise ClickToCallError("no_extension", "only agents place calls")
        if not found.extensions:
            raise ClickToCallError("no_extension", f"agent {found.login} has no phone extension configured")
        return found

    def _number(self, raw: str) -> str:
        number = e164(raw, self.region) if isinstance(raw, str) and len(raw) <= MAX_NUMBER else None
        if number is None:
            shown = raw[:40] if isinstance(raw, str) else raw
            raise ClickToCallError("bad_number", f"not a customer's phone number: {shown!r}")
        return number

    def _again(self, stored: CallRequest) -> CallRequest:
        again = replace(stored, repeated=True)
        if stored.status == FAILED:
            raise ClickToCallError(stored.error_code or "originate_failed", stored.error or "failed", again)
        return again

    def _settled(self, key: tuple[str, str], task: asyncio.Task[CallRequest]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: the awaiters may all have gone

    async def _place(self, agent: User, number: str, shop: Shop | None, request_id: str) -> CallRequest:
        now = self.clock()
        plan = self.plans.at(now)
        if shop is None:
            shop = await self._shop_of_last_call(number, plan.shops)
        if shop is None and plan.default_shop is not None:
            shop = plan.shops.get(plan.default_shop)
        request = CallRequest(
            request_id=request_id, login=agent.login, call_id=f"{CALL_ID_PREFIX}{uuid.uuid4().hex}",
            number=number, shop=shop.shop_id if shop else None, caller_id=shop.caller_id if shop else None,
            status=PENDING, created_at=now,
        )
        name = await self._contact_name(number)
        # Written before the dialer is asked: after a crash the retry finds it
        # and does not dial again.
        try:
            await self.store.write((_INSERT, _row(request)))
        except Exception as exc:  # the batch was rolled back: nothing stored, nothing sent
            log.error("click-to-call %s/%s not stored, not placed: %s", agent.login, request_id, exc)
            raise ClickToCallError("store_unavailable", "the gateway cannot store the request; try again") from None
        try:
            stored: CallRequest | None = await self._load((agent.login, request_id))
        except ClickToCallError:
            # Our row is committed; a read failing now must not leave it
            # "pending" and never placed (a retry would not place it either).
            stored = None
        if stored is not None and stored.call_id != request.call_id:
            return self._again(stored)  # another gateway process took this request id first
        self._remember(request)
        log.info("click-to-call %s: agent %s (ext. %s) -> %s, shop %s, caller ID %s", request.call_id, agent.login,
                 agent.extensions[0], number, request.shop or "-", request.caller_id or "-")
        try:
            await self.dialer.place(extension=agent.extensions[0], number=number, caller_id=request.caller_id,
                                    call_id=request.call_id, request_id=request_id, contact_name=name)
        except Exception as exc:
            kind = getattr(exc, "kind", None)
            reason = getattr(exc, "message", None) or str(exc)
            if not isinstance(kind, str) or kind not in _CODE_OF_KIND:
                # A dialer's bug or an unknown failure: whether anything was
                # sent is unknown, so it counts as uncertain (never again).
                log.exception("click-to-call %s: the dialer failed", request.call_id)
                kind, reason = UNCERTAIN, "the gateway failed while placing the call; it may still ring"
            failed = replace(request, status=FAILED, error_code=_CODE_OF_KIND[kind], error=reason or kind)
            log.warning("click-to-call %s failed (%s): %s", request.call_id, failed.error_code, failed.error)
            await self._finish(failed)
            raise ClickToCallError(failed.error_code or "", failed.error or "", failed) from None
        placed = replace(request, status=PLACED)
        await self._finish(placed)
        return placed

    async def _finish(self, request: CallRequest) -> None:
        self._remember(request)
        try:
            await self.store.write((_UPDATE, (request.status, request.error_code, request.error, request.login,
                                              request.request_id)))
        except Exception as exc:  # the row stays "pending": a retry still does not dial
            log.error("click-to-call %s: status %s not stored: %s", request.call_id, request.status, exc)

    async def _load(self, key: tuple[str, str]) -> CallRequest | None:
        try:
            rows = await self.store.read(f"{_SELECT} WHERE login = ? AND request_id = ?", key)
        except Exception as exc:
            log.error("click-to-call %s/%s: cannot read the store: %s", key[0], key[1], exc)
            raise ClickToCallError("store_unavailable", "the gateway cannot read its store; try again") from None
        return _request(rows[0]) if rows else None

    async def _shop_of_last_call(self, number: str, shops: dict[str, Shop]) -> Shop | None:
        """The shop of the customer's latest inbound call, if the plan still has it."""
        forms = spellings(number, self.region)
        marks = ", ".join("?" for _ in forms)
        try:
            rows = await self.store.read(
                f"SELECT shop FROM calls WHERE caller IN ({marks}) AND direction = 'inbound' AND shop IS NOT NULL "
                "ORDER BY started_at DESC LIMIT 1", tuple(forms))
        except Exception as exc:
            log.error("click-to-call to %s: cannot read the last calls: %s", number, exc)
            raise ClickToCallError("store_unavailable", "the gateway cannot read its store; try again") from None
        return shops.get(rows[0][0]) if rows else None

    async def _contact_name(self, number: str) -> str | None:
        if self.contacts is None:
            return None
        try:
            found = await self.contacts.manager_for(number)
        except Exception as exc:  # the phone shows the number instead
            log.warning("click-to-call to %s: contact not read: %s", number, exc)
            return None
        return found.name if found is not None else None

    # -- the records of placed calls ----------------------------------------------

    def _remember(self, request: CallRequest) -> None:
        self._by_call[request.call_id] = request
        self._by_call.move_to_end(request.call_id)
        while len(self._by_call) > self._remember_max:
            self._by_call.popitem(last=False)

    def known_call(self, call_id: str) -> CallRequest | None:
        """The request of a recent call id, from memory (no I/O)."""
        return self._by_call.get(call_id)

    async def find_call(self, call_id: str) -> CallRequest | None:
        """The request of a call id, from memory or the table (after a restart)."""
        known = self._by_call.get(call_id)
        if known is not None or not call_id.startswith(CALL_ID_PREFIX):
            return known
        rows = await self.store.read(f"{_SELECT} WHERE call_id = ?", (call_id,))
        return _request(rows[0]) if rows else None

    async def drain(self) -> None:
        """Wait for the requests being placed (at shutdown, before the store closes)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight.values()), return_exceptions=True)
