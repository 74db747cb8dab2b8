"""Downloading a recording from a cloud PBX: what the connectors' ``fetch_recording`` share.

One attempt, no retries (the caller retries with backoff); every exchange is
bounded in time (connect ``CONNECT_TIMEOUT``, the whole attempt, redirects
included, ``TOTAL_TIMEOUT``) and in size: a file is streamed and refused beyond
the connector's limit (``MAX_RECORDING``), an API answer or an error page is
read only up to ``MAX_ANSWER``.

Redirects are followed here, not by aiohttp, so that the account's credentials
go only where they were meant to: the ``Authorization`` header and a signed
form body are sent to the first URL's origin (scheme, host, port) and
never to another one. Twilio and Mango answer with a redirect to a one-time
link on their storage, which needs no credentials.

Errors say the provider, the account, the host and the HTTP status, never a
URL (a download link's query is a credential of its own) nor a secret; a
foreign exception is not chained, because its text may hold the URL.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from connectors.webhook import RecordingNotReady

log = logging.getLogger(__name__)

MAX_RECORDING = 200 * 1024 * 1024  # bytes; a long call in WAV is tens of MB
MAX_ANSWER = 64 * 1024  # an API's JSON answer, the start of an error page
CONNECT_TIMEOUT = 5.0
TOTAL_TIMEOUT = 60.0  # seconds for one attempt, redirects included
TIMEOUT = aiohttp.ClientTimeout(total=TOTAL_TIMEOUT, connect=CONNECT_TIMEOUT)
MAX_REDIRECTS = 5
CHUNK = 256 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class RecordingFetchFailed(Exception):
    """This attempt to download a recording failed (the caller may try again later)."""

    def __init__(self, provider: str, account: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{provider} {account}: recording not fetched: {reason}")
        self.provider = provider
        self.account = account
        self.status = status  # the HTTP status, when the provider answered


class RecordingTooLarge(RecordingFetchFailed):
    """The file is larger than the connector accepts."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What the last hop answered: its status, its body (bounded) and its content type."""

    status: int
    body: bytes
    content_type: str
    host: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def is_web_url(text: str) -> bool:
    """An absolute http(s) URL with a host and no user:password in it."""
    try:
        url = URL(text)
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.host) and url.user is None and url.password is None


def basic_auth(login: str, password: str) -> str:
    """An ``Authorization`` header's value for HTTP basic auth (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme, (url.host or "").lower(), url.port


async def fetch(session: aiohttp.ClientSession, provider: str, account: str, method: str, url: URL, *,
                limit: int, headers: Mapping[str, str] | None = None,
                form: Mapping[str, str] | None = None) -> Answer:
    """One attempt: the request, its redirects, the last answer. A 2xx body
    is read up to ``limit`` (RecordingTooLarge beyond it); any other status's
    body up to MAX_ANSWER. ``headers`` and ``form`` are credentials: only
    ``url``'s origin gets them."""
    home = origin(url)
    try:
        async with asyncio.timeout(TOTAL_TIMEOUT):
            for _ in range(MAX_REDIRECTS + 1):
                at_home = origin(url) == home
                async with session.request(method, url, headers=headers if at_home else None, data=form,
                                           allow_redirects=False, timeout=TIMEOUT) as response:
                    location = response.headers.get("Location")
                    if response.status not in _REDIRECTS or not location:
                        limit_ = limit if 200 <= response.status < 300 else MAX_ANSWER
                        body = await _read(response, limit_, provider, account, strict=limit_ == limit)
                        return Answer(response.status, body, response.content_type, url.host or "")
                try:
                    target = url.join(URL(location))
                except ValueError:
                    raise RecordingFetchFailed(provider, account, f"{url.host} redirected to an unreadable address",
                                               response.status) from None
                if not is_web_url(str(target)):
                    raise RecordingFetchFailed(provider, account, f"{url.host} redirected to a non-http(s) address",
                                               response.status)
                if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                    method, form = "GET", None  # what browsers do: the file is fetched by GET
                if form is not None and origin(target) != home:
                    raise RecordingFetchFailed(provider, account, f"{url.host} redirected a signed request to "
                                               f"{target.host}: not sent there", response.status)
                url = target
            raise RecordingFetchFailed(provider, account, f"more than {MAX_REDIRECTS} redirects (last {url.host})")
    except TimeoutError:
        raise RecordingFetchFailed(provider, account, f"no answer from {url.host} within {TOTAL_TIMEOUT:.0f} s") \
            from None
    except aiohttp.ClientError as exc:
        # Only the class: the message of some (InvalidURL, ClientConnectorError...) names the URL.
        raise RecordingFetchFailed(provider, account, f"{type(exc).__name__} talking to {url.host}") from None


async def _read(response: aiohttp.ClientResponse, limit: int, provider: str, account: str, *, strict: bool) -> bytes:
    """The body, streamed: beyond ``limit`` RecordingTooLarge (``strict``) or cut there."""
    host = response.url.host
    if strict and response.content_length is not None and response.content_length > limit:
        raise RecordingTooLarge(provider, account, f"{host} announces {response.content_length} bytes, "
                                f"more than the {limit} accepted", response.status)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            if strict:
                raise RecordingTooLarge(provider, account, f"{host} sent more than the {limit} bytes accepted",
                                        response.status)
            chunks.append(chunk[:limit - (size - len(chunk))])
            break
        chunks.append(chunk)
    return b"".join(chunks)


def file_of(answer: Answer, provider: str, account: str, what: str = "the file") -> bytes:
    """The body of a download: 404 (or nothing) is RecordingNotReady; another
    failure, or a page instead of audio, RecordingFetchFailed naming the status."""
    if answer.status == 404:
        raise RecordingNotReady(f"{provider} {account}: {what} is not there yet (HTTP 404 from {answer.host})")
    if not answer.ok:
        raise RecordingFetchFailed(provider, account, f"HTTP {answer.status} from {answer.host} for {what}",
                                   answer.status)
    if not answer.body:
        raise RecordingNotReady(f"{provider} {account}: {what} is empty (HTTP {answer.status} from {answer.host})")
    if answer.content_type.startswith("text/") or answer.content_type == "application/json":
        # A page or an API's message (an expired link, a login form), not audio.
        raise RecordingFetchFailed(provider, account, f"HTTP {answer.status} from {answer.host} is "
                                   f"{answer.content_type[:60]}, not a recording", answer.status)
    log.info("%s %s: recording fetched, %d bytes from %s", provider, account, len(answer.body), answer.host)
    return answer.body


class ProviderClient:
    """A connector's one HTTP session to its provider, made when first needed
    and closed with the app (``close_with``) or by ``close``."""

    def __init__(self, timeout: aiohttp.ClientTimeout = TIMEOUT) -> None:
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def close_with(self, app: web.Application) -> None:
        async def cleanup(app: web.Application) -> None:
            await self.close()

        app.on_cleanup.append(cleanup)
