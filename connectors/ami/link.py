"""AmiLink: one supervised connection to Asterisk's manager interface.

The link owns the socket and nothing else: it connects, logs in, sends
actions and hands every event it reads, with the time it arrived, to a bounded
queue that one consumer drains in order. What the events mean is the
normaliser's business.

Failure rules (each one is a bug seen in the usual Python AMI client):
- connect, banner, login and every action have a deadline;
- a rejected login raises ``AmiLoginError`` and is retried slowly, not in a storm;
- keepalive pings have a reply deadline: two unanswered pings declare the link dead;
- when the link dies every waiting action fails at once with ``AmiLinkLost``,
  and actions that place calls (Originate) are never sent again by the link;
- reconnects back off exponentially with jitter; ``close()`` really stops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from connectors.ami.codec import AmiCodec, AmiMessage, encode_action
from connectors.ami.normalise import AmiNormaliser
from connectors.ami.rights import dangerous_rights, excess_message

log = logging.getLogger(__name__)

_BANNER_PREFIX = "Asterisk Call Manager/"


class AmiError(Exception):
    """Base of the link's errors."""


class AmiConnectError(AmiError):
    """Could not reach a working manager interface (refused, no banner, closed). Retried."""


class AmiLoginError(AmiError):
    """The PBX rejected our credentials. Retried slowly: a person must fix the config."""


class AmiActionError(AmiError):
    """The PBX answered an action with ``Response: Error``."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"{action} refused: {message}")
        self.action = action
        self.message = message


class AmiLinkLost(AmiError):
    """The link died while an action waited for its response; it was not re-sent."""


class AmiTimeout(AmiError):
    """No response within the action's deadline."""


@dataclass(frozen=True)
class LinkSettings:
    host: str
    port: int
    username: str
    secret: str
    connect_timeout: float = 5.0
    banner_timeout: float = 5.0
    login_timeout: float = 5.0
    action_timeout: float = 10.0
    ping_interval: float = 20.0
    ping_timeout: float = 5.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    login_retry: float = 30.0
    queue_size: int = 10_000
    read_size: int = 64 * 1024

    def __repr__(self) -> str:  # the secret never reaches a log
        return f"LinkSettings(host={self.host!r}, port={self.port}, username={self.username!r})"


OnLogin = Callable[["AmiLink"], Awaitable[None]]

# After every login: what rights do we have, and what does the PBX hold now?
# The list actions' items arrive as events, in order with the live ones.
RESYNC_ACTIONS = ("CoreShowChannels", "QueueStatus")


class AmiLink:
    """Connect, log in, keep alive, reconnect; deliver events in arrival order."""

    def __init__(
        self,
        settings: LinkSettings,
        *,
        on_login: OnLogin | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        keep_events: frozenset[str] | None = AmiNormaliser.HANDLED_EVENTS,
    ) -> None:
        self.settings = settings
        # Events nobody reads are dropped by their first line, before decoding.
        self._keep_events = keep_events
        self.events: asyncio.Queue[tuple[AmiMessage, float]] = asyncio.Queue(settings.queue_size)
        self._on_login = on_login
        self._clock = clock
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[str, asyncio.Future[AmiMessage]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()  # set after each connection attempt's login outcome
        self._login_error: AmiLoginError | None = None
        self._closing = False
        self._runner: asyncio.Task[None] | None = None
        self.connects = 0  # successful logins
        self.queue_full_count = 0
        self.last_error: str | None = None
        self.write_rights: frozenset[str] = frozenset()  # dangerous write classes our AMI user holds

    # -- public ----------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self.run(), name="ami-link")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for a logged-in link; raise ``AmiLoginError`` if the PBX rejected
        the login (the link goes on retrying slowly in the background)."""

        async def wait() -> None:
            while not self._connected.is_set():
                if self._login_error is not None:
                    raise self._login_error
                self._attempted.clear()
                await self._attempted.wait()

        await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        """Stop for good: no reconnect is left scheduled, waiting actions fail."""
        self._closing = True
        runner, self._runner = self._runner, None
        # Python 3.11's wait_for can swallow a cancel that lands as its future
        # completes: cancel until the task has really ended.
        while runner is not None and not runner.done():
            runner.cancel()
            await asyncio.wait({runner}, timeout=0.1)
        self._drop_connection("link closed")

    async def action(
        self,
        name: str,
        headers: Mapping[str, str | Sequence[str]] | None = None,
        *,
        timeout: float | None = None,
    ) -> AmiMessage:
        """Send one action and return its response. Never retried by the link."""
        writer = self._writer
        if writer is None or not self.is_connected:
            raise AmiLinkLost(f"{name}: not connected to the PBX")
        return await self._send(writer, name, headers, timeout)

    async def run(self) -> None:
        """Connect and keep connecting until closed."""
        delay = self.settings.backoff_initial
        while not self._closing:
            logins = self.connects
            try:
                await self._session()
            except AmiLoginError as exc:
                self.last_error = str(exc)
                self._login_error = exc
                self._attempted.set()
                log.error("AMI login to %s:%s rejected: %s; retrying in %.0f s",
                          self.settings.host, self.settings.port, exc, self.settings.login_retry)
                await asyncio.sleep(self.settings.login_retry)
                continue
            except (AmiError, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                self._attempted.set()
                log.warning("AMI link to %s:%s lost: %s", self.settings.host, self.settings.port, self.last_error)
            if self._closing:
                break
            if self.connects > logins:
                # That session logged in: its loss starts a new streak. (Sessions
                # only end by raising, so without this the backoff would stay
                # at its maximum after a few drops, months apart.)
                delay = self.settings.backoff_initial
            pause = delay * (0.5 + self._rng.random())  # full jitter around the backoff
            log.info("AMI reconnect in %.2f s", pause)
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.settings.backoff_max)

    # -- one connection --------------------------------------------------------

    async def _session(self) -> None:
        s = self.settings
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), s.connect_timeout)
        except asyncio.TimeoutError as exc:
            raise AmiConnectError(f"connect to {s.host}:{s.port} timed out after {s.connect_timeout} s") from exc
        codec = AmiCodec(keep_events=self._keep_events)
        tasks: list[asyncio.Task[None]] = []
        try:
            banner = await self._read_banner(reader, codec)
            log.info("AMI connected to %s:%s (%s)", s.host, s.port, banner)
            self._writer = writer
            # The reader, the pinger and the conversation (login, resync) race:
            # whichever ends first ends the session, so a socket closed during
            # the login or a link gone dead during the resync is noticed at once.
            reader_task = asyncio.create_task(self._read_loop(reader, codec), name="ami-reader")
            conversation = asyncio.create_task(self._converse(writer), name="ami-login")
            tasks = [reader_task, conversation]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if conversation.done():
                conversation.result()  # a rejected login, or a failed action: raises
            if reader_task.done():
                reader_task.result()
                raise AmiConnectError(f"{s.host}:{s.port} closed the connection")
            raise AmiConnectError("AMI session ended")  # not reached: the conversation never returns
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._drop_connection("connection to the PBX lost")
            writer.close()

    async def _converse(self, writer: asyncio.StreamWriter) -> None:
        """Log in, resync, then keep the link alive until it dies (raises)."""
        await self._login(writer)
        self.connects += 1
        self._login_error = None
        self._connected.set()
        self._attempted.set()
        pinger = asyncio.create_task(self._keepalive(writer), name="ami-ping")
        resync = asyncio.create_task(self._after_login(writer), name="ami-resync")
        try:
            await asyncio.wait([pinger, resync], return_when=asyncio.FIRST_COMPLETED)
            if not resync.done():
                resync.cancel()
                await asyncio.gather(resync, return_exceptions=True)
            else:
                resync.result()
            if self._on_login is not None and not pinger.done():
                await self._on_login(self)
            await pinger  # raises when two pings go unanswered
        finally:
            # Also when we are cancelled mid-resync (close()): nothing left running unawaited.
            pinger.cancel()
            resync.cancel()
            await asyncio.gather(pinger, resync, return_exceptions=True)

    async def _read_banner(self, reader: asyncio.StreamReader, codec: AmiCodec) -> str:
        s = self.settings
        deadline = asyncio.get_running_loop().time() + s.banner_timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AmiConnectError(f"no AMI banner from {s.host}:{s.port} within {s.banner_timeout} s")
            try:
                data = await asyncio.wait_for(reader.read(s.read_size), remaining)
            except asyncio.TimeoutError:
                continue
            if not data:
                raise AmiConnectError(f"{s.host}:{s.port} closed the connection before the AMI banner")
            codec.receive_data(data)
            message = codec.next_message()
            if message is None:
                continue
            banner = message.get("Banner")
            if not isinstance(banner, str) or not banner.startswith(_BANNER_PREFIX):
                raise AmiConnectError(f"{s.host}:{s.port} is not an AMI server (no banner)")
            # Anything after the banner stays in the codec for the read loop.
            return banner

    async def _login(self, writer: asyncio.StreamWriter) -> None:
        s = self.settings
        try:
            await self._send(
                writer, "Login", {"Username": s.username, "Secret": s.secret, "Events": "on"}, s.login_timeout
            )
        except AmiActionError as exc:
            raise AmiLoginError(f"user {s.username!r}: {exc.message}") from exc
        except AmiTimeout as exc:
            raise AmiConnectError(f"no answer to Login within {s.login_timeout} s") from exc
        except AmiLinkLost as exc:
            raise AmiConnectError(f"{s.host}:{s.port} closed the connection during the login") from exc

    async def _after_login(self, writer: asyncio.StreamWriter) -> None:
        """Check our rights, then ask for the PBX's live state (resync)."""
        try:
            commands = await self._send(writer, "ListCommands", None, None)
        except AmiActionError as exc:
            log.warning("AMI ListCommands refused (%s): cannot check the AMI user's rights", exc.message)
        else:
            self.write_rights = dangerous_rights(commands)
            if self.write_rights:
                log.warning("%s", excess_message(self.settings.username, self.write_rights))
        for name in RESYNC_ACTIONS:
            try:
                await self._send(writer, name, None, None)
            except AmiActionError as exc:
                log.warning("AMI %s refused during resync: %s", name, exc.message)

    async def _read_loop(self, reader: asyncio.StreamReader, codec: AmiCodec) -> None:
        while True:
            for message in codec.messages():
                await self._dispatch(message)
            data = await reader.read(self.settings.read_size)
            codec.receive_data(data)
            if not data:
                for message in codec.messages():
                    await self._dispatch(message)
                return

    async def _dispatch(self, message: AmiMessage) -> None:
        action_id = message.get("ActionID")
        if "Response" in message and isinstance(action_id, str):
            waiting = self._pending.pop(action_id, None)
            if waiting is not None and not waiting[1].done():
                waiting[1].set_result(message)
            return
        if "Event" not in message:
            return
        item = (message, self._clock())
        try:
            self.events.put_nowait(item)
        except asyncio.QueueFull:
            self.queue_full_count += 1
            if self.queue_full_count == 1 or self.queue_full_count % 1000 == 0:
                log.warning("AMI event queue full (%d times): reading slows down until the core catches up",
                            self.queue_full_count)
            await self.events.put(item)  # back-pressure: the socket waits, nothing is dropped

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        s = self.settings
        missed = 0
        while True:
            await asyncio.sleep(s.ping_interval)
            try:
                await self._send(writer, "Ping", None, s.ping_timeout)
                missed = 0
            except AmiTimeout:
                if self.events.full():
                    # The answer waits behind our own full event queue: we are
                    # slow, not the PBX. Do not kill a healthy link for it.
                    continue
                missed += 1
                log.warning("AMI ping unanswered (%d in a row)", missed)
                if missed >= 2:
                    raise AmiConnectError("two pings unanswered: the link is dead") from None

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        name: str,
        headers: Mapping[str, str | Sequence[str]] | None,
        timeout: float | None,
    ) -> AmiMessage:
        action_id = f"cti-{next(self._ids)}"
        future: asyncio.Future[AmiMessage] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = (name, future)
        try:
            writer.write(encode_action(name, action_id, headers))
            async with asyncio.timeout(timeout or self.settings.action_timeout):
                response = await future
        except TimeoutError as exc:
            raise AmiTimeout(f"{name}: no response within {timeout or self.settings.action_timeout} s") from exc
        finally:
            self._pending.pop(action_id, None)
        if response.get("Response") == "Error":
            message = response.get("Message", "")
            raise AmiActionError(name, message if isinstance(message, str) else "; ".join(message))
        return response

    def _drop_connection(self, reason: str) -> None:
        self._connected.clear()
        self._writer = None
        pending, self._pending = self._pending, {}
        for name, future in pending.values():
            if not future.done():
                future.set_exception(AmiLinkLost(f"{name}: {reason}; not re-sent"))

