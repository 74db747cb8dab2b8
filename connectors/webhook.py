"""What every cloud-PBX connector shares: the request as kept, the verdict on
it, and the two things the gateway lends a connector (a durable inbox and the
routing function).

A connector owns its provider's URLs under ``/webhooks/{provider}/{account}/``.
For each request it checks the provider's signature over the raw bytes, reads
the event's own key (for duplicates) and its call, and hands the request to
the ``Intake``, which answers only once the request is on disk; then the
connector replies as the provider expects. Later (and again after a restart)
the gateway asks the connector for a call's normalised events, from every
request of that call kept so far: ``Connector.call_events``. The core never
sees a vendor's format.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from gateway.events import CallEvent

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024  # the largest callback any of these providers sends is a few KiB
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last second datetime can hold
MAX_DURATION = 7 * 86400.0  # seconds: a longer talk or call is not believed


@dataclass(frozen=True)
class Account:
    """One provider account, as its connector needs it (built from the config)."""

    name: str
    secrets: Mapping[str, str]  # by the provider's names: "secret", "key", "salt", "auth_token", "url_token"
    public_url: str  # the URL prefix the provider calls, e.g. https://gw.example.com/webhooks/zadarma/main
    allowed_ips: tuple[str, ...] = ()
    timezone: str = "Europe/Moscow"
    api_base_url: str | None = None
    route_deadline: float = 1.0  # seconds
    options: Mapping[str, str] = field(default_factory=dict)  # provider-specific settings


@dataclass(frozen=True, slots=True)
class Request:
    """A webhook as the inbox keeps it: enough to parse it again after a restart."""

    path: str  # below the account's prefix, e.g. "events/call" ("" for Zadarma's one URL)
    query: str  # the raw query string
    body: bytes  # the raw body, exactly as signed
    received_at: float  # the gateway's clock when it arrived (epoch seconds)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verified request: its provider-given identity and its call."""

    dedup_key: str  # the same event delivered twice has the same key
    call_key: str | None  # None: no call's event (a ping, a command result)


class WebhookRejected(Exception):
    """A request the gateway refuses; the connector answers ``status`` with the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RecordingNotReady(Exception):
    """The provider has no file for this recording yet (it is still being processed)."""


class Route(Protocol):
    """What the routing function answers (``gateway.routing.RouteDecision``)."""

    @property
    def reason(self) -> str: ...
    @property
    def extension(self) -> str | None: ...
    @property
    def contact_name(self) -> str | None: ...


Decide = Callable[[str | None, str | None], Awaitable[Route]]  # (caller, dialled) -> route


class Intake(Protocol):
    async def deliver(self, provider: str, account: str, request: Request, accepted: Accepted) -> None:
        """Store the request durably (a duplicate is absorbed), then have it
        processed; returns once it is on disk. Raises when it cannot be stored:
        the connector then answers 503, so the provider sends it again."""


class Connector(Protocol):
    name: str  # the provider's part of the URL: "zadarma", "mango", ...

    def add_routes(self, app: web.Application, intake: Intake, decide: Decide | None,
                   clock: Callable[[], float]) -> None:
        """Serve this provider's URLs (``/webhooks/{name}/{account}/...``) for each of its accounts."""

    def call_events(self, account: str, history: Sequence[Request]) -> list[CallEvent]:
        """The normalised events of one call from every request of it kept so
        far (any order, possibly repeated), in the provider's own order. Pure."""

    async def fetch_recording(self, account: str, ref: str) -> bytes:
        """The audio file of a recording this connector reported as
        ``{provider}://{account}/{ref}``, downloaded from the provider with the
        account's credentials. RecordingNotReady when the provider does not
        have it yet (try later); any other exception: this attempt failed."""


def with_plus(raw: str | None) -> str | None:
    """An international number written without '+' (Zadarma, Mango) gets it;
    an 8XXXXXXXXXX national one is left for the number plan and contacts to
    read as Russian. Only after the signature is checked: never mutate before."""
    if not raw:
        return None
    if raw.isdigit() and len(raw) >= 11 and not raw.startswith("8"):
        return "+" + raw
    return raw


def plausible_time(at: float | None) -> float | None:
    """A provider's time (epoch seconds) if a call can have it, else None: a
    record with a time before 1970 or beyond datetime's range (nan, 1e20) could
    not be stored, and the call would be lost."""
    return at if at is not None and 0 < at < LATEST else None


def plausible_duration(seconds: float | None) -> float | None:
    """A provider's duration if a call can last that long (0 to MAX_DURATION), else None."""
    return seconds if seconds is not None and 0 <= seconds <= MAX_DURATION else None


def account_of(request: web.Request, accounts: Mapping[str, Account], provider: str) -> Account:
    """The account the URL names, if the request may come from where it does:
    WebhookRejected 404 (no such account) or 403 (not in its allowed_ips)."""
    account = accounts.get(request.match_info["account"])
    if account is None:
        log.warning("%s: request from %s refused: no account %r", provider, request.remote,
                    request.match_info["account"][:40])
        raise WebhookRejected(404, "no_such_account", "no such account")
    if not remote_allowed(request, account.allowed_ips):
        log.warning("%s %s: request from %s refused: not in allowed_ips", provider, account.name, request.remote)
        raise WebhookRejected(403, "forbidden", "address not allowed")
    return account


def remote_allowed(request: web.Request, allowed: Sequence[str]) -> bool:
    """Whether the request comes from an allowed network (empty: any)."""
    if not allowed:
        return True
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allowed)


async def read_body(request: web.Request) -> bytes:
    """The raw body, refused beyond MAX_BODY (413) before it is all read."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise WebhookRejected(413, "too_large", f"body larger than {MAX_BODY} bytes")
    # read(n) returns what has arrived so far, not n bytes: loop to the end (a
    # body may come in several segments, or chunked with no length to check).
    body = bytearray()
    while chunk := await request.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            raise WebhookRejected(413, "too_large", f"body larger than {MAX_BODY} bytes")
    return bytes(body)


def rejected_response(exc: WebhookRejected) -> web.Response:
    return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
