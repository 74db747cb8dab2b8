"""Recordings through the whole gateway: the a_answered capture names its
MixMonitor file; the test writes a WAV there (in the directory standing for
Asterisk's), the collector transcodes it with ffmpeg, and it is played back
through the real app with HTTP Range, by role, with the audit."""

from __future__ import annotations

import io
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydub import AudioSegment  # type: ignore[import-untyped]
from pydub.generators import Sine  # type: ignore[import-untyped]

from connectors.ami.server import capture_stream
from gateway.numberplan import PlanBook
from recordings.collector import RETRY_DELAYS, Collector
from recordings.storage import Recording
from tests.conftest import CAPTURES
from tests.harness import PASSWORD, Harness
from tests.test_hub import FakeClock
from tests.test_numberplan import example_plan

SECONDS = 3.4


def wav(seconds: float = SECONDS) -> bytes:
    tone = Sine(440).to_audio_segment(duration=int(seconds * 1000)).set_frame_rate(8000).set_channels(1)
    out = io.BytesIO()
    tone.export(out, format="wav")
    return out.getvalue()


def settle(path: Path) -> None:
    """As if MixMonitor had finished writing a while ago."""
    past = time.time() - 60
    os.utime(path, (past, past))


async def answered_call(h: Harness, *, write: bool = True) -> str:
    """Play a_answered; its recording (the name it gives) is written where Asterisk would."""
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
    (record,) = await h.wait_records(1)
    await h.gateway.drain()
    assert record.recording_path is not None
    if write:
        target = h.asterisk_dir / record.recording_path.rsplit("/", 1)[-1]
        target.write_bytes(wav())
        settle(target)
    return record.call_id


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as harness:
        yield harness


async def ready(h: Harness, call_id: str) -> Recording:
    assert await h.collector.collect_due() >= 1
    recording = await h.recordings.get(call_id)
    assert recording is not None
    return recording


async def session(http: aiohttp.ClientSession, h: Harness, login: str) -> dict[str, str]:
    async with http.post(f"{h.url}/api/login", json={"login": login, "password": PASSWORD}) as response:
        assert response.status == 200
        return {"Cookie": f"cti_session={response.cookies['cti_session'].value}"}


async def test_the_capture_s_recording_is_collected_transcoded_and_described(h: Harness) -> None:
    call_id = await answered_call(h)
    recording = await ready(h, call_id)
    assert (recording.status, recording.content_type, recording.error) == ("ready", "audio/ogg", None)
    assert recording.duration == pytest.approx(SECONDS, abs=0.1)
    assert recording.file is not None and call_id not in recording.file  # a name the gateway made
    kept = (h.recordings_dir / recording.file).read_bytes()
    assert recording.size == len(kept) < len(wav()) / 3  # compact
    played = AudioSegment.from_file(io.BytesIO(kept))
    assert played.duration_seconds == pytest.approx(SECONDS, abs=0.1) and played.channels == 1
    assert recording.peaks is not None and len(recording.peaks) == 200 and max(recording.peaks) > 0.9


async def test_a_file_not_there_yet_is_retried_then_reported_missing(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=clock) as h:
        call_id = await answered_call(h, write=False)
        for attempt, delay in enumerate(RETRY_DELAYS):
            assert await h.collector.collect_due() == 1
            job = await h.recordings.get(call_id)
            assert job is not None and (job.status, job.attempts) == ("pending", attempt + 1)
            assert "not found" in (job.error or "")
            assert await h.collector.collect_due() == 0  # not before its time
            clock.now += delay
        assert await h.collector.collect_due() == 1
        gone = await h.recordings.get(call_id)
        assert gone is not None and gone.status == "missing" and "not found" in (gone.error or "")


async def test_range_requests_through_the_app(h: Harness) -> None:
    call_id = await answered_call(h)
    recording = await ready(h, call_id)
    assert recording.file is not None and recording.size is not None
    data, size = (h.recordings_dir / recording.file).read_bytes(), recording.size
    url = f"{h.url}/api/calls/{call_id}/recording"
    async with aiohttp.ClientSession() as http:
        olga = await session(http, h, "olga")
        async with http.get(url, headers=olga) as response:
            assert (response.status, response.headers["Content-Type"], response.headers["Accept-Ranges"]) == (
                200, "audio/ogg", "bytes")
            assert await response.read() == data
        for asked, (start, end) in (("bytes=0-99", (0, 99)), ("bytes=1000-1999", (1000, 1999)),
                                    (f"bytes={size - 300}-", (size - 300, size - 1))):
            async with http.get(url, headers={**olga, "Range": asked}) as response:
                assert response.status == 206, asked
                assert response.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
                assert await response.read() == data[start:end + 1]
        async with http.get(url, headers={**olga, "Range": f"bytes={size + 10}-"}) as response:
            assert response.status == 416
    audit = await h.recordings.listens(since=0)
    assert [(a["login"], a["bytes"], a["range"]) for a in reversed(audit)] == [
        ("olga", size, None), ("olga", 100, "bytes=0-99"), ("olga", 1000, "bytes=1000-1999"),
        ("olga", 300, f"bytes={size - 300}-")]


async def test_who_may_listen(tmp_path: Path) -> None:
    for agents_hear_own, anna_hears in ((False, 403), (True, 200)):
        async with Harness(tmp_path / str(agents_hear_own), plans=PlanBook(example_plan()),
                           agents_hear_own=agents_hear_own) as h:
            call_id = await answered_call(h)  # answered by anna (101), team sales, led by olga
            await ready(h, call_id)
            url = f"{h.url}/api/calls/{call_id}/recording"
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as response:
                    assert response.status == 401
                expected = {"olga": 200, "admin": 200, "pavel": 403, "anna": anna_hears, "boris": 403, "mark": 403}
                got = {}
                for login in expected:
                    async with http.get(url, headers=await session(http, h, login)) as response:
                        got[login] = response.status
                        await response.read()
                assert got == expected
                async with http.get(f"{h.url}/api/admin/listens", headers=await session(http, h, "admin")) as r:
                    heard = sorted(item["login"] for item in (await r.json())["listens"])
                async with http.get(f"{h.url}/api/admin/listens", headers=await session(http, h, "olga")) as r:
                    assert r.status == 403
            assert heard == sorted(login for login, status in expected.items() if status == 200)


async def test_a_signed_link_plays_without_a_session_for_that_call_only(tmp_path: Path) -> None:
    clock = FakeClock()
    async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=clock) as h:
        call_id = await answered_call(h)
        recording = await ready(h, call_id)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{h.url}/api/calls/{call_id}/recording/link",
                                headers=await session(http, h, "olga")) as response:
                body = await response.json()
            assert body["recording"]["duration"] == pytest.approx(SECONDS, abs=0.1)
            assert len(body["recording"]["peaks"]) == 200
            link = h.url + body["url"]
            async with http.get(link, headers={"Range": "bytes=0-9"}) as response:  # no cookie: the link is enough
                assert (response.status, len(await response.read())) == (206, 10)
            token = body["url"].split("t=", 1)[1]
            async with http.get(f"{h.url}/api/calls/other-call/recording?t={token}") as response:
                assert response.status == 401  # a link is for its own call only
            clock.now += 31 * 60
            async with http.get(link) as response:
                assert (response.status, (await response.json())["error"]) == (401, "bad_link")
        audit = await h.recordings.listens(since=0)
        assert [(a["login"], a["bytes"]) for a in audit] == [("olga", 10)]
        assert recording.size is not None


@pytest.mark.parametrize("source", [
    "../../etc/passwd",
    "/var/spool/asterisk/recordings/../../../etc/passwd",
    "/var/spool/asterisk/recordings/%2e%2e/%2e%2e/etc/passwd",
    "/var/spool/asterisk/recordings/%252e%252e/secret.wav",
    "/etc/passwd",
    "/var/spool/asterisk/recordings/..\\..\\secret.wav",
    "/var/spool/asterisk/recordings/x.wav\0../../etc/passwd",
    "/var/spool/asterisk/recordings/",
])
def test_recording_paths_never_lead_out_of_the_directory(tmp_path: Path, source: str) -> None:
    inside = tmp_path / "monitor"
    inside.mkdir()
    outside = tmp_path / "secret.wav"
    outside.write_bytes(wav())
    collector = Collector(None, directory=tmp_path / "kept", asterisk_dir=inside,  # type: ignore[arg-type]
                          asterisk_prefix="/var/spool/asterisk/recordings/")
    try:
        path = collector.local_path(source)
    except Exception as exc:
        assert type(exc).__name__ == "SourceRefused"
    else:  # only a name inside the directory (which does not exist) is looked up
        assert path.is_relative_to(inside.resolve()) and not path.exists()


async def test_a_symlink_planted_in_the_directory_is_not_followed_out(h: Harness, tmp_path: Path) -> None:
    secret = tmp_path / "secret.wav"
    secret.write_bytes(wav())
    await h.ami.send_raw(capture_stream(CAPTURES / "a_answered.ami"))
    (record,) = await h.wait_records(1)
    await h.gateway.drain()
    assert record.recording_path is not None
    planted = h.asterisk_dir / record.recording_path.rsplit("/", 1)[-1]
    planted.symlink_to(secret)
    assert await h.collector.collect_due() == 1
    job = await h.recordings.get(record.call_id)
    assert job is not None and job.status == "missing" and "leads out of" in (job.error or "")
    assert not h.recordings_dir.exists() or list(h.recordings_dir.iterdir()) == []


async def test_a_call_id_in_the_url_is_never_a_path(h: Harness) -> None:
    async with aiohttp.ClientSession() as http:
        admin = await session(http, h, "admin")
        for call_id in ("..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..", "x%00y"):
            async with http.get(f"{h.url}/api/calls/{call_id}/recording", headers=admin) as response:
                assert response.status == 404, call_id


async def test_an_erased_call_stays_erased_when_its_record_comes_again(h: Harness) -> None:
    from recordings.privacy import erase

    call_id = await answered_call(h)
    await ready(h, call_id)
    record = await h.store.call(call_id)
    assert record is not None and record.customer == "+79161110001"
    await erase(h.store, h.recordings_dir, "+79161110001", "admin", h.clock())
    erased = await h.store.call(call_id)
    assert erased is not None and erased.customer is not None and erased.customer.startswith("erased:")
    await h.store.save_call(record)  # a late webhook or a replay brings the original record again
    again = await h.store.call(call_id)
    assert again == erased
    assert "+79161110001" not in repr(again) and "79161110001" not in repr(again.legs)
    gone = await h.recordings.get(call_id)
    assert gone is not None and (gone.status, gone.file) == ("erased", None)
    assert not h.recordings_dir.exists() or list(h.recordings_dir.iterdir()) == []


async def test_a_provider_s_recording_is_downloaded_and_attached_to_its_call(tmp_path: Path) -> None:
    """Sipuni's hangup event names its recording's link: the gateway downloads it
    (here from a local server standing in for Sipuni's storage) and keeps it."""
    from urllib.parse import quote

    from aiohttp import web

    from gateway.config import Secret, WebhookAccount, WebhooksConfig
    from tests.test_sipuni import TOKEN, query

    served: list[str] = []

    async def file(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=wav(2.0), content_type="audio/wav")

    storage = web.Application()
    storage.router.add_get("/record/abc.wav", file)
    runner = web.AppRunner(storage)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    link = f"http://127.0.0.1:{runner.addresses[0][1]}/record/abc.wav"
    config = WebhooksConfig(accounts=(WebhookAccount("sipuni", "main", {"url_token": Secret(TOKEN)}),))
    clock = FakeClock()
    clock.now = 1772435900.0  # just after the sample call (2026-03-02)
    try:
        async with Harness(tmp_path, plans=PlanBook(example_plan()), clock=clock, webhooks=config) as h:
            events = [query(name) for name in ("sipuni_event_1_call__inbound_answered",
                                                "sipuni_event_3_answer__inbound_answered",
                                                "sipuni_event_2_hangup__inbound_answered")]
            events[-1] = events[-1].replace(quote("https://sipuni.example.invalid/record/abc.mp3", safe=""),
                                            quote(link, safe=""))
            async with aiohttp.ClientSession() as http:
                for event in events:
                    async with http.get(f"{h.url}/webhooks/sipuni/main/{TOKEN}?{event}") as response:
                        assert response.status == 200
            await h.webhooks.idle()
            await h.gateway.drain()
            (record,) = h.records
            assert record.recording_path == f"sipuni://main/{link}"
            recording = await ready(h, record.call_id)
            assert (recording.status, served) == ("ready", ["/record/abc.wav"])
            assert recording.duration == pytest.approx(2.0, abs=0.1)
    finally:
        await runner.cleanup()
