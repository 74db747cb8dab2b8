"""The generic signed webhook: each event POSTed as JSON to a configured URL,
signed in the manner of the Standard Webhooks specification.

Body: ``{"type": <event>, "timestamp": <when it happened, ISO 8601 UTC>,
"data": {...}}`` (docs/crm-events.schema.json). Headers: ``webhook-id`` (the
event's idempotency key: the same on every retry, so a receiver drops a
repeat), ``webhook-timestamp`` (seconds since the epoch, of this attempt) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``).
A secret written ``whsec_<base64>`` is the base64-decoded key, as the
specification's libraries take it; any other secret is used as its UTF-8 bytes.
A 2xx answer is delivery; 410 Gone and other 4xx (but 401/403/408/409/429)
end the entry as dead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from crm_bridge.outbox import EVENTS, Entry
from crm_bridge.sinks import SinkContext, check_response
from gateway.toml_table import Table

KIND = "webhook"


@dataclass(frozen=True)
class WebhookSinkConfig:
    name: str
    url: str
    secret: str = field(repr=False)
    events: frozenset[str] = frozenset(EVENTS)


def parse(t: Table, name: str, environ: Mapping[str, str], base: Path) -> WebhookSinkConfig:
    url = t.get("url", str, None, 'the receiver\'s URL, like "https://erp.example.com/cti-events"')
    if not url or not url.startswith(("https://", "http://")):
        raise t.fail("url", 'the receiver\'s URL, like "https://erp.example.com/cti-events"', url)
    secret = t.required_secret("secret", environ, "the signing secret (whsec_... or 16+ characters)", base)
    if _key(secret) is None or len(_key(secret) or b"") < 16:
        raise t.fail("secret_env", "a secret of at least 16 bytes (whsec_<base64> or 16+ characters)", "******")
    events = t.get("events", list, list(EVENTS), f"a list of events out of {', '.join(EVENTS)}")
    unknown = [e for e in events if e not in EVENTS]
    if unknown or not events:
        raise t.fail("events", f"a non-empty list out of {', '.join(EVENTS)}", unknown or events)
    return WebhookSinkConfig(name=name, url=url, secret=secret, events=frozenset(events))


def _key(secret: str) -> bytes | None:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError:
            return None
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header for one attempt."""
    key = _key(secret)
    if key is None:
        raise ValueError("the secret is not whsec_<base64>")
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def body_of(entry: Entry) -> bytes:
    at = datetime.fromtimestamp(entry.created_at, tz=timezone.utc).isoformat(timespec="milliseconds")
    return json.dumps({"type": entry.event, "timestamp": at, "data": entry.data}, ensure_ascii=False,
                      separators=(",", ":")).encode()


class WebhookSink:
    kind = KIND

    def __init__(self, config: WebhookSinkConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.name = config.name
        self.config = config
        self.events = config.events
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._host = urlsplit(config.url).netloc  # errors name the host only: a URL may carry a token

    async def deliver(self, entry: Entry) -> None:
        body = body_of(entry)
        timestamp = int(self.clock())
        headers = {"content-type": "application/json", "webhook-id": entry.key,
                   "webhook-timestamp": str(timestamp),
                   "webhook-signature": sign(self.config.secret, entry.key, timestamp, body),
                   "user-agent": "cti-gateway"}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self.config.url, data=body, headers=headers, allow_redirects=False) as response:
            await check_response(response, f"POST to {self._host}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def build(config: WebhookSinkConfig, ctx: SinkContext) -> WebhookSink:
    return WebhookSink(config, clock=ctx.clock)
