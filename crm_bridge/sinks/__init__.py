"""CRM sinks: each turns the gateway's events (``crm_bridge.events``) into one
CRM's calls. A sink is optional and configured per company (``[crm]``); the
outbox and ``crm_bridge.delivery`` retry for all of them.

A sink's ``deliver`` returns when the other side has the event, raises
``DeliveryError`` (``permanent``: retrying cannot help, e.g. a 400 about the
payload), and may raise anything else for a temporary failure (a connection
refused, a timeout), which is retried with backoff.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from typing import Protocol

import aiohttp

from crm_bridge.outbox import Entry, Outbox


class DeliveryError(Exception):
    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after  # seconds the other side asked us to wait (429, 503)


class Sink(Protocol):
    name: str
    kind: str  # webhook | bitrix24 | amocrm | onec
    events: frozenset[str]

    async def deliver(self, entry: Entry) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class RecordingFile:
    path: Path
    content_type: str  # audio/ogg (Opus) or audio/mpeg
    duration: float


@dataclass(frozen=True)
class SinkContext:
    """What sinks may use of the gateway, handed to each kind's ``build``."""

    outbox: Outbox  # links to the other side's ids (``Outbox.link``/``set_link``)
    clock: Callable[[], float]
    region: str  # phone numbers without a country code are read in this region
    public_base_url: str | None  # the gateway as CRM users reach it: links to calls and recordings
    zone_of: Callable[[str | None], str]  # a shop's time zone (None or unknown: the default's)
    recording_file: Callable[[str], Awaitable[RecordingFile | None]]  # the kept recording of a call id

    def recording_link(self, call_id: str) -> str | None:
        return recording_link(self.public_base_url, call_id) if self.public_base_url else None


def recording_link(public_base_url: str, call_id: str) -> str:
    """Where a CRM user plays the call's recording: the gateway's page, with its
    own login and access rules (recordings/api.py ``listen_page``)."""
    return f"{public_base_url}/calls/{quote(call_id, safe='')}/recording"


# Answers that can heal by waiting: the other side is busy or down, or its
# credentials are being fixed by an administrator (retried until give-up).
_TEMPORARY = {401, 403, 408, 409, 423, 425, 429}


async def check_response(response: aiohttp.ClientResponse, what: str) -> None:
    """Raise DeliveryError for a non-2xx answer: temporary (5xx, 429, auth) or
    permanent (other 4xx). The message carries the status and at most 200
    characters of the body, never the request (it may hold credentials)."""
    if 200 <= response.status < 300:
        return
    body = (await response.text(errors="replace"))[:200].replace("\n", " ")
    retry_after = _seconds(response.headers.get("Retry-After"))
    permanent = response.status < 500 and response.status not in _TEMPORARY
    raise DeliveryError(f"{what}: HTTP {response.status} {body}".rstrip(), permanent=permanent,
                        retry_after=retry_after)


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: our own backoff applies
