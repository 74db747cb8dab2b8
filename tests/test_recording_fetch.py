"""Recordings downloaded from the cloud PBXs: each connector's
``fetch_recording`` against stand-ins of the providers on 127.0.0.1.

Two servers: the provider's API (the account's ``api_base_url`` points at it),
which checks the credentials as the provider does (Zadarma's signature
recomputed here from the query it received, Mango's ``sign``, Twilio's basic
auth), and a file storage on another port, so another origin, where the
providers' links and redirects lead. Every request either server gets is kept,
with its Authorization header: the tests look at who received credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import pytest
from aiohttp import web

from connectors.download import RecordingFetchFailed, RecordingTooLarge
from connectors.mango import MangoConnector
from connectors.sipuni import SipuniConnector
from connectors.twilio import TwilioConnector
from connectors.webhook import Account, RecordingNotReady
from connectors.zadarma import ZadarmaConnector, api_signature

AUDIO = b"ID3\x04\x00" + bytes(range(256)) * 40  # 10 KiB that is not text
Z_KEY, Z_SECRET = "a1b2c3d4e5f6a7b8c9d0", "test-zadarma-secret-0123456789ab"
M_KEY, M_SALT = "mango-vpbx-api-key-0123456789abcdef", "mango-salt-0123456789abcdef"
T_SID, T_TOKEN = "AC11111111111111111111111111111111", "0123456789abcdef0123456789abcdef"
RECORDING_SID = "REffffffffffffffffffffffffffffffff"
LINK_TOKEN = "one-time-token-5f2c9e"  # the query of the providers' signed links
SECRETS = (Z_SECRET, M_SALT, T_TOKEN, LINK_TOKEN)


@dataclass(frozen=True)
class Seen:
    server: str  # "api" or "storage"
    method: str
    path_qs: str
    authorization: str | None
    body: bytes


class Providers:
    """The providers' APIs and their storage, on 127.0.0.1."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.files: dict[str, bytes] = {}
        self.api = ""
        self.storage = ""
        self._runners: list[web.AppRunner] = []

    def link(self, name: str) -> str:
        """A signed one-time link to a stored file, as the providers give them."""
        return f"{self.storage}/files/{name}?token={LINK_TOKEN}"

    async def _keep(self, server: str, request: web.Request) -> None:
        self.seen.append(Seen(server, request.method, request.path_qs, request.headers.get("Authorization"),
                              await request.read()))

    def on(self, server: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.server == server]

    # -- Zadarma / Novofon: GET /v1/pbx/record/request/, signed in Authorization -----------

    async def zadarma(self, request: web.Request) -> web.Response:
        await self._keep("api", request)
        params = {name: request.query[name] for name in request.query}
        if request.headers.get("Authorization") != f"{Z_KEY}:{zadarma_signature(request.path, params)}":
            return web.json_response({"status": "error", "message": "Not authorized"}, status=401)
        call_id = params.get("call_id", "")
        if call_id == "unknown":
            return web.json_response({"status": "error", "message": "Not found"}, status=404)
        if call_id.startswith("several."):
            return web.json_response({"status": "success", "links": [self.link(call_id + ".mp3")],
                                      "lifetime_till": "2026-03-02 11:00:00"})
        return web.json_response({"status": "success", "link": self.link(call_id + ".mp3"),
                                  "lifetime_till": "2026-03-02 11:00:00"})

    # -- Mango: POST /vpbx/queries/recording/post/, a signed form --------------------------

    async def mango(self, request: web.Request) -> web.Response:
        await self._keep("api", request)
        form = dict(parse_qsl((await request.read()).decode()))
        text = form.get("json", "")
        expected = hashlib.sha256((M_KEY + text + M_SALT).encode()).hexdigest()
        if form.get("vpbx_api_key") != M_KEY or form.get("sign") != expected:
            return web.json_response({"result": 3101}, status=401)
        query = json.loads(text)
        assert query["action"] == "download"
        recording = query["recording_id"]
        if recording.startswith("direct-"):  # the file itself, no redirect
            return web.Response(body=self.files[recording], content_type="audio/mpeg")
        if recording == "refused":
            return web.json_response({"result": 4001})
        if recording not in self.files:
            return web.Response(status=404)
        raise web.HTTPFound(self.link(recording))

    # -- Twilio: GET .../Recordings/{sid}.mp3 with basic auth, a redirect to storage ---------

    async def twilio(self, request: web.Request) -> web.Response:
        await self._keep("api", request)
        good = "Basic " + base64.b64encode(f"{T_SID}:{T_TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != good or request.match_info["account"] != T_SID:
            return web.json_response({"code": 20003, "message": "Authenticate"}, status=401)
        name = request.match_info["file"]
        if not name.endswith(".mp3") or name not in self.files:
            return web.json_response({"code": 20404, "message": "not found"}, status=404)
        raise web.HTTPFound(self.link(name))  # Twilio hands the media out from its storage

    # -- the storage the links lead to ------------------------------------------------------

    async def file(self, request: web.Request) -> web.StreamResponse:
        await self._keep("storage", request)
        name = request.match_info["name"]
        if request.query.get("token") != LINK_TOKEN or name not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[name], content_type="audio/mpeg")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """An endless file with no Content-Length (chunked): only the reader's limit stops it."""
        await self._keep("storage", request)
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(1000):
                await response.write(AUDIO)
        except (ConnectionResetError, ConnectionError):
            pass  # the client gave up, as it should
        return response

    async def loop(self, request: web.Request) -> web.Response:
        await self._keep("storage", request)
        raise web.HTTPFound("/loop")

    async def elsewhere(self, request: web.Request) -> web.Response:
        await self._keep("storage", request)
        raise web.HTTPFound("ftp://127.0.0.1/file.mp3")

    async def page(self, request: web.Request) -> web.Response:
        await self._keep("storage", request)
        return web.Response(text="<html>Please log in</html>", content_type="text/html")

    async def start(self) -> None:
        api = web.Application()
        api.router.add_get("/v1/pbx/record/request/", self.zadarma)
        api.router.add_post("/vpbx/queries/recording/post/", self.mango)
        api.router.add_get("/2010-04-01/Accounts/{account}/Recordings/{file}", self.twilio)
        storage = web.Application()
        storage.router.add_get("/files/{name}", self.file)
        storage.router.add_get("/stream", self.stream)
        storage.router.add_get("/loop", self.loop)
        storage.router.add_get("/elsewhere", self.elsewhere)
        storage.router.add_get("/page", self.page)
        urls = []
        for app in (api, storage):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runners.append(runner)
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        self.api, self.storage = urls

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


def zadarma_signature(path: str, params: dict[str, str]) -> str:
    """Zadarma's check, written from its documentation: sorted params as
    http_build_query writes them, path + that + md5(that), hex HMAC-SHA1, base64."""
    query = "&".join(f"{quote_plus(name)}={quote_plus(value)}" for name, value in sorted(params.items()))
    signed = path + query + hashlib.md5(query.encode()).hexdigest()
    return base64.b64encode(hmac.new(Z_SECRET.encode(), signed.encode(), hashlib.sha1).hexdigest().encode()).decode()


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    servers = Providers()
    await servers.start()
    try:
        yield servers
    finally:
        await servers.stop()


Closer = Callable[[Any], Any]


@pytest.fixture
async def closing() -> AsyncIterator[Callable[[Any], Any]]:
    """Register a connector; its HTTP client is closed after the test."""
    made: list[Any] = []

    def register(connector: Any) -> Any:
        made.append(connector)
        return connector

    yield register
    for connector in made:
        await connector.close()


@pytest.fixture(autouse=True)
def _no_secret_logged(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    for secret in SECRETS:
        assert secret not in caplog.text, "a secret or a signed link was logged"


def zadarma(api: str | None, *, name: str = "zadarma", secret: str = Z_SECRET,
            options: dict[str, str] | None = None) -> ZadarmaConnector:
    return ZadarmaConnector([Account(name="main", secrets={"secret": secret}, public_url="http://x",
                                     api_base_url=api, options={"api_key": Z_KEY} if options is None else options)],
                            name)


def mango(api: str, *, salt: str = M_SALT) -> MangoConnector:
    return MangoConnector([Account(name="main", secrets={"key": M_KEY, "salt": salt}, public_url="http://x",
                                   api_base_url=f"{api}/vpbx")], "mango")


def sipuni() -> SipuniConnector:
    return SipuniConnector([Account(name="main", secrets={"url_token": "u" * 32}, public_url="http://x")], "sipuni")


def twilio(api: str | None, *, token: str = T_TOKEN, sid: str | None = T_SID) -> TwilioConnector:
    options = {"default_dial": "+14155550199"} | ({"account_sid": sid} if sid else {})
    return TwilioConnector([Account(name="main", secrets={"auth_token": token}, public_url="http://x",
                                    api_base_url=api, options=options)], "twilio")


async def refused(fetch: Awaitable[bytes]) -> RecordingFetchFailed:
    with pytest.raises(RecordingFetchFailed) as caught:
        await fetch
    for secret in SECRETS:
        assert secret not in str(caught.value)
    return caught.value


# -- Zadarma / Novofon -------------------------------------------------------------------


def test_zadarma_signature_is_the_one_openssl_computes() -> None:
    """The vector was computed outside Python:
    q='call_id=1772435707.2981&format=json'; m=$(printf %s "$q" | openssl dgst -md5 -r)
    printf %s "/v1/pbx/record/request/$q$m" | openssl dgst -sha1 -hmac SECRET -r  (hex) | base64"""
    query, signature = api_signature(Z_SECRET, "/v1/pbx/record/request/",
                                     {"format": "json", "call_id": "1772435707.2981"})
    assert query == "call_id=1772435707.2981&format=json"
    assert signature == "YmNjYzdiYzc2NTVmZDZiOGM1ZjkxOTdkNTZlZGRkOWIwNjg5OTkyYw=="


async def test_zadarma_downloads_through_the_link_the_signed_api_gives(providers: Providers,
                                                                       closing: Closer) -> None:
    providers.files["1772435707.2981.mp3"] = AUDIO
    connector = closing(zadarma(providers.api))
    assert await connector.fetch_recording("main", "1772435707.2981") == AUDIO
    (api,) = providers.on("api")
    assert api.path_qs == "/v1/pbx/record/request/?call_id=1772435707.2981&format=json"
    (storage,) = providers.on("storage")
    assert storage.authorization is None  # the link needs, and gets, no credentials


async def test_novofon_is_the_same_api_and_links_is_read_too(providers: Providers, closing: Closer) -> None:
    providers.files["several.1.mp3"] = AUDIO
    connector = closing(zadarma(providers.api, name="novofon"))
    assert await connector.fetch_recording("main", "several.1") == AUDIO
    with pytest.raises(RecordingNotReady, match="novofon main"):
        await connector.fetch_recording("main", "unknown")


async def test_zadarma_wrong_secret_is_an_error_naming_the_status(providers: Providers, closing: Closer) -> None:
    providers.files["1.2.mp3"] = AUDIO
    error = await refused(closing(zadarma(providers.api, secret="another-secret")).fetch_recording("main", "1.2"))
    assert error.status == 401
    assert "zadarma main" in str(error) and "HTTP 401" in str(error) and "another-secret" not in str(error)
    assert providers.on("storage") == []


async def test_zadarma_file_not_there_yet_is_not_ready(providers: Providers, closing: Closer) -> None:
    connector = closing(zadarma(providers.api))
    with pytest.raises(RecordingNotReady):
        await connector.fetch_recording("main", "1.3")  # the API gives a link, the storage has nothing yet
    with pytest.raises(RecordingNotReady):
        await connector.fetch_recording("main", "unknown")  # the API itself answers 404


async def test_zadarma_without_an_api_key_asks_nobody(providers: Providers, closing: Closer) -> None:
    error = await refused(closing(zadarma(providers.api, options={})).fetch_recording("main", "1.2"))
    assert "api_key" in str(error)
    assert providers.seen == []


async def test_a_file_too_large_is_refused(providers: Providers, closing: Closer) -> None:
    providers.files["1.4.mp3"] = AUDIO
    connector = closing(zadarma(providers.api))
    connector.max_recording = len(AUDIO) - 1
    with pytest.raises(RecordingTooLarge):  # announced by its Content-Length
        await connector.fetch_recording("main", "1.4")
    connector.max_recording = len(AUDIO)
    assert await connector.fetch_recording("main", "1.4") == AUDIO


# -- Mango Office ---------------------------------------------------------------------


async def test_mango_follows_the_redirect_without_the_signed_form(providers: Providers, closing: Closer) -> None:
    providers.files["MToxMDEyODIxOToyMDIz"] = AUDIO
    assert await closing(mango(providers.api)).fetch_recording("main", "MToxMDEyODIxOToyMDIz") == AUDIO
    (api,) = providers.on("api")
    assert api.method == "POST" and api.path_qs == "/vpbx/queries/recording/post/"
    (storage,) = providers.on("storage")
    assert storage.method == "GET" and storage.body == b"" and storage.authorization is None


async def test_mango_may_answer_the_file_itself(providers: Providers, closing: Closer) -> None:
    providers.files["direct-1"] = AUDIO
    assert await closing(mango(providers.api)).fetch_recording("main", "direct-1") == AUDIO


async def test_mango_wrong_salt_unknown_recording_and_refusals(providers: Providers, closing: Closer) -> None:
    providers.files["rec-1"] = AUDIO
    error = await refused(closing(mango(providers.api, salt="another-salt")).fetch_recording("main", "rec-1"))
    assert error.status == 401 and "mango main" in str(error) and "another-salt" not in str(error)
    connector = closing(mango(providers.api))
    with pytest.raises(RecordingNotReady):
        await connector.fetch_recording("main", "rec-2")
    error = await refused(connector.fetch_recording("main", "refused"))
    assert "result 4001" in str(error)  # an answer in JSON is not a file
    assert providers.on("storage") == []


# -- Sipuni ----------------------------------------------------------------------------


async def test_sipuni_fetches_its_link_as_given(providers: Providers, closing: Closer) -> None:
    providers.files["record.mp3"] = AUDIO
    connector = closing(sipuni())
    assert await connector.fetch_recording("main", providers.link("record.mp3")) == AUDIO
    with pytest.raises(RecordingNotReady) as caught:
        await connector.fetch_recording("main", providers.link("later.mp3"))
    assert LINK_TOKEN not in str(caught.value)
    assert [seen.authorization for seen in providers.seen] == [None, None]


@pytest.mark.parametrize("link", ["ftp://127.0.0.1/record.mp3", "file:///etc/passwd", "javascript:alert(1)",
                                  "/files/record.mp3", "http://user:pw@127.0.0.1/x", ""])
async def test_sipuni_fetches_nothing_but_http(providers: Providers, closing: Closer, link: str) -> None:
    error = await refused(closing(sipuni()).fetch_recording("main", link))
    assert "http(s)" in str(error)
    assert providers.seen == []


async def test_a_stream_beyond_the_limit_is_cut_off(providers: Providers, closing: Closer) -> None:
    connector = closing(sipuni())
    connector.max_recording = 3 * len(AUDIO)
    with pytest.raises(RecordingTooLarge):
        await connector.fetch_recording("main", f"{providers.storage}/stream")


async def test_redirect_loops_other_schemes_and_pages_are_errors(providers: Providers, closing: Closer) -> None:
    connector = closing(sipuni())
    assert "redirects" in str(await refused(connector.fetch_recording("main", f"{providers.storage}/loop")))
    assert "non-http(s)" in str(await refused(connector.fetch_recording("main", f"{providers.storage}/elsewhere")))
    assert "text/html" in str(await refused(connector.fetch_recording("main", f"{providers.storage}/page")))


# -- Twilio ----------------------------------------------------------------------------


async def test_twilio_basic_auth_goes_to_the_api_only(providers: Providers, closing: Closer) -> None:
    providers.files[RECORDING_SID + ".mp3"] = AUDIO
    assert await closing(twilio(providers.api)).fetch_recording("main", RECORDING_SID) == AUDIO
    (api,) = providers.on("api")
    assert api.path_qs == f"/2010-04-01/Accounts/{T_SID}/Recordings/{RECORDING_SID}.mp3"
    assert api.authorization == "Basic " + base64.b64encode(f"{T_SID}:{T_TOKEN}".encode()).decode()
    (storage,) = providers.on("storage")
    assert storage.authorization is None  # the redirect to the storage left the credentials behind


async def test_twilio_wrong_token_and_not_ready(providers: Providers, closing: Closer) -> None:
    providers.files[RECORDING_SID + ".mp3"] = AUDIO
    error = await refused(closing(twilio(providers.api, token="f" * 32)).fetch_recording("main", RECORDING_SID))
    assert error.status == 401 and "twilio main" in str(error) and "HTTP 401" in str(error)
    assert "f" * 32 not in str(error)
    with pytest.raises(RecordingNotReady):
        await closing(twilio(providers.api)).fetch_recording("main", "RE" + "0" * 32)


async def test_twilio_recording_url_only_on_the_api(providers: Providers, closing: Closer) -> None:
    providers.files[RECORDING_SID + ".mp3"] = AUDIO
    connector = closing(twilio(providers.api))
    on_api = f"{providers.api}/2010-04-01/Accounts/{T_SID}/Recordings/{RECORDING_SID}"
    assert await connector.fetch_recording("main", on_api) == AUDIO
    assert providers.on("api")[-1].path_qs.endswith(f"{RECORDING_SID}.mp3")
    before = len(providers.seen)
    for elsewhere in (f"{providers.storage}/2010-04-01/Accounts/{T_SID}/Recordings/{RECORDING_SID}",
                      f"https://evil.example/2010-04-01/Accounts/{T_SID}/Recordings/{RECORDING_SID}",
                      f"{on_api}?redirect=1", "ftp://api.twilio.com/x"):
        assert "refused" in str(await refused(connector.fetch_recording("main", elsewhere)))
    assert len(providers.seen) == before  # nobody was asked, so nobody got the credentials


async def test_twilio_needs_the_account_sid_and_a_plain_sid(providers: Providers, closing: Closer) -> None:
    assert "account_sid" in str(await refused(closing(twilio(providers.api, sid=None))
                                              .fetch_recording("main", RECORDING_SID)))
    assert "neither" in str(await refused(closing(twilio(providers.api)).fetch_recording("main", "../../x")))
    assert providers.seen == []


async def test_unknown_account_is_an_error(closing: Closer) -> None:
    for connector in (zadarma(None), mango("http://127.0.0.1:9"), sipuni(), twilio(None)):
        assert "no such account" in str(await refused(closing(connector).fetch_recording("other", "x")))


async def test_an_unreachable_provider_is_an_error_without_the_link(closing: Closer) -> None:
    error = await refused(closing(sipuni()).fetch_recording("main", f"http://127.0.0.1:9/r?token={LINK_TOKEN}"))
    assert "127.0.0.1" in str(error)
