"""The collector: fetches each call's recording, transcodes it, keeps it.

Jobs come from the store (``recordings`` rows made with the call's record).
Sources:

- a file Asterisk's MixMonitor wrote: the path in the call's events is never
  trusted as it is (a caller ID can end up in a file name). Only its part
  below ``asterisk_prefix`` (else its bare name) is looked up inside
  ``asterisk_dir``; the resolved path must stay inside that directory (no
  ``..``, no symlink out of it) and be a regular file that has not changed for
  a moment (MixMonitor may still be writing when the call ends);
- ``provider://account/ref``: the connector of that provider downloads it with
  the account's credentials.

A source that is not there yet is tried again with backoff (1, 2, 4 ... 60
minutes, 10 attempts, about 4 hours); then the job is *missing*, with the
reason, logged and counted. Transcoding runs off the event loop, at most
``concurrency`` at once. Files get names the gateway makes (a hash of the call
id and a random part), never a name from the PBX or a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from connectors.webhook import RecordingNotReady
from recordings.storage import Recording, Recordings
from recordings.transcode import TranscodeError, transcode

log = logging.getLogger(__name__)

Fetch = Callable[[str, str], Awaitable[bytes]]  # (account, ref) -> audio bytes
RETRY_DELAYS = (60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0)  # then: missing
SETTLED = 2.0  # seconds a MixMonitor file must stay unchanged before it is read
POLL = 2.0


class SourceNotReady(Exception):
    """Not there yet (or still being written): try again later."""


class SourceRefused(Exception):
    """A source that must never be read (outside the directory, not a file)."""


class Collector:
    def __init__(
        self,
        recordings: Recordings,
        *,
        directory: Path,
        asterisk_dir: Path | None = None,
        asterisk_prefix: str = "/var/spool/asterisk/monitor/",
        fetchers: Mapping[str, Fetch] | None = None,
        fmt: str = "opus",
        bitrate: str = "24k",
        keep_original: bool = True,
        concurrency: int = 2,
        clock: Callable[[], float] = time.time,
        on_missing: Callable[[Recording, str], None] | None = None,
    ) -> None:
        self.recordings = recordings
        self.directory = directory
        self.asterisk_dir = asterisk_dir
        self.asterisk_prefix = asterisk_prefix
        self.fetchers = dict(fetchers or {})
        self.fmt, self.bitrate, self.keep_original = fmt, bitrate, keep_original
        self.clock = clock
        self._on_missing = on_missing
        self._limit = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._working: set[str] = set()

    def poke(self) -> None:
        """A job may be due now (a call with a recording was stored)."""
        self._wake.set()

    async def run(self) -> None:
        """Collect due jobs until cancelled."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                try:
                    for job in await self.recordings.due(self.clock(), limit=50):
                        if job.call_id not in self._working:
                            self._working.add(job.call_id)
                            task = asyncio.create_task(self._guarded(job), name=f"recording-{job.call_id}")
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                except Exception as exc:  # the store is busy: next round
                    log.warning("recordings: cannot read the due jobs: %s", exc)
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL)
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect_due(self) -> int:
        """Collect every job due now, and wait for them (tests, the CLI)."""
        jobs = [job for job in await self.recordings.due(self.clock(), limit=1000) if job.call_id not in self._working]
        for job in jobs:
            self._working.add(job.call_id)
        await asyncio.gather(*(self._guarded(job) for job in jobs))
        return len(jobs)

    async def _guarded(self, job: Recording) -> None:
        try:
            await self.collect(job)
        except Exception:
            log.exception("recordings: call %s: collecting failed", job.call_id)
        finally:
            self._working.discard(job.call_id)

    async def collect(self, job: Recording) -> None:
        now = self.clock()
        try:
            data, original = await self._read(job.source)
            async with self._limit:
                done = await asyncio.to_thread(transcode, data, fmt=self.fmt, bitrate=self.bitrate)
        except SourceNotReady as exc:
            await self._retry(job, f"not available yet: {exc}", now)
            return
        except RecordingNotReady as exc:
            await self._retry(job, f"the provider has no file yet: {exc}", now)
            return
        except (SourceRefused, TranscodeError) as exc:
            await self._give_up(job, str(exc), now)
            return
        except Exception as exc:  # a download that failed: the network, the provider
            await self._retry(job, f"{type(exc).__name__}: {exc}", now)
            return
        name = self._file_name(job.call_id, done.suffix)
        await asyncio.to_thread(_write_atomically, self.directory / name, done.data)
        await self.recordings.ready(job.call_id, job.source, file=name, content_type=done.content_type,
                                    duration=done.duration, size=len(done.data), peaks=done.peaks, now=self.clock())
        kept = await self.recordings.get(job.call_id)
        if kept is None or kept.file != name:  # purged, erased or re-pointed meanwhile: no orphan file
            await asyncio.to_thread((self.directory / name).unlink, missing_ok=True)
            return
        log.info("recordings: call %s: %.1f s of audio kept (%d bytes, %s)", job.call_id, done.duration,
                 len(done.data), done.content_type)
        if original is not None and not self.keep_original:
            await asyncio.to_thread(original.unlink, missing_ok=True)

    async def _retry(self, job: Recording, error: str, now: float) -> None:
        if job.attempts >= len(RETRY_DELAYS):
            await self._give_up(job, error, now)
            return
        log.info("recordings: call %s: %s; trying again in %.0f s", job.call_id, error, RETRY_DELAYS[job.attempts])
        await self.recordings.failed(job.call_id, job.source, error=error, retry_at=now + RETRY_DELAYS[job.attempts],
                                     now=now)

    async def _give_up(self, job: Recording, error: str, now: float) -> None:
        log.warning("recordings: call %s: recording missing after %d attempt(s): %s", job.call_id,
                    job.attempts + 1, error)
        await self.recordings.failed(job.call_id, job.source, error=error, retry_at=None, now=now)
        if self._on_missing is not None:
            self._on_missing(job, error)

    def _file_name(self, call_id: str, suffix: str) -> str:
        return f"{hashlib.sha256(call_id.encode()).hexdigest()[:16]}-{secrets.token_hex(4)}{suffix}"

    async def _read(self, source: str) -> tuple[bytes, Path | None]:
        """The audio bytes, and the local file they came from (an Asterisk recording)."""
        provider, sep, rest = source.partition("://")
        if sep and provider in self.fetchers:
            account, _, ref = rest.partition("/")
            return await self.fetchers[provider](account, ref), None
        if sep:
            raise SourceRefused(f"no connector for recordings of {provider!r}")
        path = self.local_path(source)
        return await asyncio.to_thread(_read_settled, path), path

    def local_path(self, source: str) -> Path:
        """Where an Asterisk recording is, inside ``asterisk_dir``; SourceRefused
        for anything that would lead out of it."""
        if self.asterisk_dir is None:
            raise SourceRefused("no [recordings] asterisk_dir configured to read Asterisk's recordings from")
        if "\0" in source or "\\" in source:
            raise SourceRefused("a recording path with NUL or backslash")
        relative = source[len(self.asterisk_prefix):] if source.startswith(self.asterisk_prefix) else \
            source.rsplit("/", 1)[-1]
        parts = [p for p in relative.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise SourceRefused(f"a recording path that leaves the directory: {source[:200]!r}")
        base = self.asterisk_dir.resolve()
        path = (base / Path(*parts)).resolve()
        if not path.is_relative_to(base):
            raise SourceRefused(f"a recording path that leads out of {base} (a symlink?)")
        return path


def _read_settled(path: Path) -> bytes:
    """The file, once MixMonitor is done with it (by the file system's clock)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise SourceNotReady(f"{path.name} not found") from None
    if not path.is_file():
        raise SourceRefused(f"{path.name} is not a regular file")
    if stat.st_size == 0 or time.time() - stat.st_mtime < SETTLED:
        raise SourceNotReady(f"{path.name} is still being written")
    return path.read_bytes()


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    with open(partial, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
