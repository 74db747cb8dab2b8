"""An in-process Asterisk Manager Interface server that speaks the real protocol.

It serves the test suite and the product's ``demo`` command: clients connect
over TCP (127.0.0.1 by default), read the banner, log in, send actions and
receive events, exactly as they would from Asterisk 22. What it answers is
copied from real captures (``tests/captures/asterisk-22``): the wording, the
header order, the FullyBooted/SuccessfulAuth pair after a login, the socket
closed after a failed login or a Logoff, ``Permission denied`` before login and
for write actions of a read-only user.

The server owns no call logic. Tests and the demo push events with
``send_event`` / ``play`` (scenarios from ``connectors.ami.scenarios``) or
raw capture bytes with ``send_raw`` (``capture_stream``). Every action a client
sends is recorded in ``actions`` (Originates also in ``originates``) and
answered by ``action_handlers``, which a test may extend or replace.

Delivery rules: each client has its own bounded write queue and writer task.
``send_event`` waits while a client is more than ``high_water`` bytes behind,
so a reading client is never outrun, even by a scenario played with speed=0;
a client that stops reading holds the others up at most ``write_timeout``
seconds: it is dropped when a write stalls that long (Asterisk's
``writetimeout`` does the same to a stuck session) or when its queue outgrows
``max_queue_bytes``.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import hmac
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

from connectors.ami.codec import AmiCodec, AmiMessage

__all__ = ["ActionHandler", "AmiServer", "capture_stream", "encode_message"]

log = logging.getLogger(__name__)

ActionHandler = Callable[[AmiMessage], list[AmiMessage]]
"""Answers one action: the messages (responses, then any events) for its sender."""

_READ_SIZE: Final = 64 * 1024
_BANNER_PREFIX: Final = b"Asterisk Call Manager/"
_MESSAGE_END: Final = b"\r\n\r\n"

# Actions a session may send before it has logged in (manager.c process_message).
_PRE_AUTH_ACTIONS: Final = frozenset({"login", "logoff", "challenge"})
# Actions that need a write permission; a read-only user (``write =`` in
# manager.conf) gets "Permission denied" and a RequestNotAllowed security event.
_WRITE_ACTIONS: Final = frozenset(
    {
        "originate",
        "command",
        "redirect",
        "hangup",
        "atxfer",
        "blindtransfer",
        "bridge",
        "setvar",
        "absolutetimeout",
        "queueadd",
        "queueremove",
        "queuepause",
        "mixmonitor",
        "stopmixmonitor",
        "playdtmf",
        "sendtext",
        "userevent",
    }
)

# The client whose action is being handled, for the default handlers that
# describe the session (SuccessfulAuth, RequestNotAllowed).
_current_client: contextvars.ContextVar[_Client] = contextvars.ContextVar("ami_server_client")


def encode_message(headers: Mapping[str, str | list[str]]) -> bytes:
    """Encode one Response or Event: ``Key: Value`` lines (a list repeats its key),
    then a blank line. Raises ValueError for a line break in a key or value, or a
    colon in a key: either would let a value forge headers or whole messages."""
    parts: list[str] = []
    for key, value in headers.items():
        if not key or ":" in key or "\r" in key or "\n" in key:
            raise ValueError(f"invalid AMI header name: {key!r}")
        for item in (value,) if isinstance(value, str) else value:
            if "\r" in item or "\n" in item:
                raise ValueError(f"AMI header {key} has a line break in its value")
            parts.append(f"{key}: {item}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")


def capture_stream(path: Path) -> bytes:
    """The events of a raw ``.ami`` capture, byte for byte, ready for ``send_raw``.

    The banner and every ``Response:`` message are removed: they answered the
    recording client's actions, not those of whoever is connected now. Messages
    are split on the blank line (``\\r\\n\\r\\n``); a message the capture cut off
    (a server that died mid-write) is left out, as it would corrupt whatever is
    sent after it.
    """
    data = path.read_bytes()
    if data.startswith(_BANNER_PREFIX):
        eol = data.find(b"\n")
        data = data[eol + 1 :] if eol >= 0 else b""
    chunks = data.split(_MESSAGE_END)
    complete, _tail = chunks[:-1], chunks[-1]
    kept = [chunk for chunk in complete if chunk.strip(b"\r\n") and not chunk.startswith(b"Response:")]
    return b"".join(chunk + _MESSAGE_END for chunk in kept)


def _header(msg: AmiMessage, name: str) -> str:
    """A header's value looked up case-insensitively, as Asterisk's astman_get_header
    does; the first value of a repeated header, "" when absent."""
    value = msg.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in msg.items() if k.lower() == lowered), "")
    if isinstance(value, list):
        return value[0] if value else ""
    return value


def _event_tv(now: float) -> str:
    """Asterisk's security-event time stamp: 2026-11-26T23:39:08.110+0000."""
    stamp = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}+0000"


class _Client:
    """One TCP session: its parser, its login state and its bounded write queue.

    ``enqueue`` never blocks: bytes wait in the queue for the session's writer
    task. ``writable`` tells a producer when the queue is back under the
    high-water mark; a session whose writes stall for ``write_timeout`` seconds,
    or whose queue reaches ``max_queue_bytes``, is dropped.
    """

    def __init__(self, server: AmiServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.codec = AmiCodec(drop_events=frozenset())
        self.logged_in = False
        self.events_on = False
        self.username = ""
        self.closed = False
        self.closing = False  # Logoff or refused login: close once the answer is written
        self.session_tv = time.time()
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes in _queue, not yet handed to the transport
        self._wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        self.local_address = f"IPV4/TCP/{local[0]}/{local[1]}" if local else "IPV4/TCP/unknown"
        self.remote_address = f"IPV4/TCP/{peer[0]}/{peer[1]}" if peer else "IPV4/TCP/unknown"
        self.session_id = f"0x{id(self):x}"

    @property
    def wants_events(self) -> bool:
        return self.logged_in and self.events_on and not self.closed

    def enqueue(self, data: bytes) -> None:
        """Queue bytes for the writer task; drop the client if its queue overflows."""
        if self.closed or self.closing:
            return
        if self._queued + len(data) > self.server.max_queue_bytes:
            log.warning(
                "AMI client %s dropped: %d bytes waiting to be written, limit %d",
                self.remote_address,
                self._queued + len(data),
                self.server.max_queue_bytes,
            )
            self.abort()
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.server.high_water:
            self.writable.clear()
        self._wakeup.set()

    def close_when_flushed(self) -> None:
        """Close the socket once everything queued so far is written (Logoff, failed login)."""
        self.closing = True
        self._wakeup.set()

    def abort(self) -> None:
        """Drop the connection now, discarding anything not yet written."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._wakeup.set()
        self.writable.set()  # nobody may wait for a dead session
        self.writer.transport.abort()
        self.server._forget(self)

    async def write_loop(self) -> None:
        writer = self.writer
        try:
            while not self.closed:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._queue:
                    data = b"".join(self._queue)
                    self._queue.clear()
                    self._queued = 0
                    writer.write(data)
                    try:
                        await asyncio.wait_for(writer.drain(), self.server.write_timeout)
                    except TimeoutError:
                        log.warning(
                            "AMI client %s dropped: a write stalled for %.1f s",
                            self.remote_address,
                            self.server.write_timeout,
                        )
                        self.abort()
                        return
                if not self._queue:
                    self.writable.set()
                    if self.closing:
                        self.closed = True
                        self.writable.set()
                        self.server._forget(self)
                        writer.close()
                        return
                else:
                    self._wakeup.set()
        except (ConnectionError, OSError) as exc:
            log.info("AMI client %s went away while being written to: %s", self.remote_address, exc)
            self.abort()


class AmiServer:
    """A manager interface on ``host:port`` (port 0: any free port, see ``port``).

    ``username``/``secret`` are the one account it accepts; ``write_allowed=False``
    makes it a read-only account. ``failed_login_delay`` mirrors Asterisk's
    one-second pause before "Authentication failed".
    """

    def __init__(
        self,
        *,
        username: str = "gateway",
        secret: str = "gateway-secret",
        host: str = "127.0.0.1",
        port: int = 0,
        banner: str = "Asterisk Call Manager/11.0.0",
        write_allowed: bool = True,
        max_queue_bytes: int = 8 * 1024 * 1024,
        write_timeout: float = 5.0,
        failed_login_delay: float = 1.0,
    ) -> None:
        if "\r" in banner or "\n" in banner:
            raise ValueError("the banner must be one line")
        if max_queue_bytes < 1:
            raise ValueError("max_queue_bytes must be positive")
        self.username = username
        self.secret = secret
        self.host = host
        self.port = port
        self.banner = banner
        self.write_allowed = write_allowed
        self.max_queue_bytes = max_queue_bytes
        # Above this many queued bytes for a session, send_event waits for it to
        # catch up (bounded by write_timeout, after which the session is dropped).
        self.high_water = max(1, min(max_queue_bytes // 2, 1024 * 1024))
        self.write_timeout = write_timeout
        self.failed_login_delay = failed_login_delay
        self.actions: list[AmiMessage] = []
        """Every action received, from every client, in order."""
        self.originates: list[AmiMessage] = []
        """The Originate actions received (allowed or refused)."""
        self.action_handlers: dict[str, ActionHandler] = {
            "Login": self._handle_login,
            "Logoff": self._handle_logoff,
            "Ping": self._handle_ping,
            "CoreShowChannels": self._handle_core_show_channels,
            "Originate": self._handle_originate,
        }
        """Action name (matched case-insensitively) -> handler."""
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._event_clients = asyncio.Event()
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("AmiServer already started")
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._started = time.monotonic()
        log.info("AMI server listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop listening, drop every client, wait for their tasks to end."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client in list(self._clients):
            client.abort()
        # Aborted sockets end every session's read loop; the session tasks then
        # clean up by themselves. (Cancelling them would make asyncio's stream
        # protocol log the CancelledError as an unhandled exception.)
        handlers = list(self._handlers)
        if handlers:
            _done, stuck = await asyncio.wait(handlers, timeout=self.write_timeout + self.failed_login_delay + 1.0)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck)
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> AmiServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def clients(self) -> int:
        """Connected clients, logged in or not."""
        return len(self._clients)

    async def wait_for_login(self, timeout: float = 5.0) -> None:
        """Return once a connected client has logged in with events on.

        Raises TimeoutError after ``timeout`` seconds.
        """
        await asyncio.wait_for(self._event_clients.wait(), timeout)

    # -- pushing events ----------------------------------------------------

    async def send_event(self, message: Mapping[str, str | list[str]]) -> None:
        """Send one event to every logged-in client that asked for events.

        Returns once no session is above its high-water mark: a reading client
        is never outrun (a scenario played with speed=0 included), a stuck one
        delays the sender at most ``write_timeout`` seconds, then is dropped.
        """
        self._broadcast(encode_message(message), events_only=True)
        await self._backpressure()

    async def send_raw(self, data: bytes) -> None:
        """Send raw bytes (e.g. ``capture_stream``) to every logged-in client."""
        self._broadcast(bytes(data), events_only=False)
        await self._backpressure()

    async def _backpressure(self) -> None:
        # Let the writer tasks (and in-process clients) run between messages.
        await asyncio.sleep(0)
        behind = [client.writable.wait() for client in self._clients if not client.writable.is_set()]
        if behind:
            # The writer enforces write_timeout and sets ``writable`` when it
            # drops a session; the extra second only guards against a bug.
            await asyncio.wait_for(asyncio.gather(*behind), self.write_timeout + 1.0)

    async def play(self, scenario: Iterable[tuple[float, AmiMessage]], *, speed: float = 1.0) -> None:
        """Send a scenario's messages in order, sleeping each one's delay / ``speed``.

        ``speed=0`` sends everything without sleeping; 2.0 plays twice as fast.
        """
        if speed < 0:
            raise ValueError("speed must be >= 0")
        for delay, message in scenario:
            if speed and delay > 0:
                await asyncio.sleep(delay / speed)
            await self.send_event(message)

    def _broadcast(self, data: bytes, *, events_only: bool) -> None:
        for client in list(self._clients):
            if client.wants_events if events_only else client.logged_in and not client.closed:
                client.enqueue(data)

    # -- sessions ----------------------------------------------------------

    def _forget(self, client: _Client) -> None:
        self._clients.discard(client)
        self._update_event_clients()

    def _update_event_clients(self) -> None:
        if any(c.wants_events for c in self._clients):
            self._event_clients.set()
        else:
            self._event_clients.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Events are small and latency matters more than packet count.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(self, reader, writer)
        self._clients.add(client)
        writer_task = asyncio.create_task(client.write_loop(), name=f"ami-server-writer {client.remote_address}")
        log.info("AMI client connected from %s", client.remote_address)
        try:
            client.enqueue(self.banner.encode("utf-8") + b"\r\n")
            await self._read_loop(client)
        except (ConnectionError, OSError) as exc:
            log.info("AMI client %s connection error: %s", client.remote_address, exc)
        finally:
            # The read side is over: EOF, Logoff, refused login, error or close().
            if client.closing and not client.closed:
                # Let the writer deliver the last answer (Goodbye, Authentication
                # failed) and close the socket itself; write_timeout bounds it.
                await asyncio.wait({writer_task}, timeout=self.write_timeout + 1.0)
            client.abort()
            writer_task.cancel()
            await asyncio.gather(writer_task, return_exceptions=True)
            if task is not None:
                self._handlers.discard(task)
            log.info("AMI client %s disconnected", client.remote_address)

    async def _read_loop(self, client: _Client) -> None:
        while not client.closed and not client.closing:
            data = await client.reader.read(_READ_SIZE)
            client.codec.receive_data(data)
            for message in client.codec.messages():
                await self._handle(client, message)
                if client.closed or client.closing:
                    return
            if not data:
                return

    async def _handle(self, client: _Client, message: AmiMessage) -> None:
        action = _header(message, "Action")
        if not action:
            if "Banner" not in message:
                client.enqueue(self._error(message, "Missing action in request"))
            return
        self.actions.append(message)
        name = action.lower()
        if name == "originate":
            self.originates.append(message)
        if not client.logged_in and name not in _PRE_AUTH_ACTIONS:
            client.enqueue(self._error(message, "Permission denied"))
            return
        if name in _WRITE_ACTIONS and not self.write_allowed:
            # An action Asterisk knows but this account may not use (auth_readonly).
            client.enqueue(self._error(message, "Permission denied"))
            self._broadcast(encode_message(self._security_event(client, "RequestNotAllowed", action)), events_only=True)
            return
        handler = self._lookup(action)
        if handler is None:
            client.enqueue(self._error(message, "Invalid/unknown command"))
            return
        token = _current_client.set(client)
        try:
            replies = handler(message)
        except Exception:
            log.exception("AMI action handler for %s failed", action)
            replies = [{"Response": "Error", "Message": "Internal error"}]
        finally:
            _current_client.reset(token)
        if name == "login" and not client.logged_in and not self._accepted(replies) and self.failed_login_delay > 0:
            # Asterisk pauses before "Authentication failed" to slow password
            # guessing; only this session waits.
            await asyncio.sleep(self.failed_login_delay)
        action_id = _header(message, "ActionID")
        for reply in replies:
            client.enqueue(encode_message(self._with_action_id(reply, action_id)))
        if name == "login":
            await self._after_login(client, message, replies)
        elif name == "logoff":
            client.close_when_flushed()

    @staticmethod
    def _accepted(replies: Sequence[AmiMessage]) -> bool:
        return bool(replies) and _header(replies[0], "Response") == "Success"

    def _lookup(self, action: str) -> ActionHandler | None:
        handler = self.action_handlers.get(action)
        if handler is None:
            lowered = action.lower()
            handler = next((h for k, h in self.action_handlers.items() if k.lower() == lowered), None)
        return handler

    async def _after_login(self, client: _Client, message: AmiMessage, replies: Sequence[AmiMessage]) -> None:
        if client.logged_in:
            return  # "Already authenticated": nothing changes
        if not self._accepted(replies):
            log.info("AMI login refused for %r from %s", _header(message, "Username"), client.remote_address)
            client.close_when_flushed()
            return
        client.logged_in = True
        client.username = _header(message, "Username")
        # "Events: off" silences the session; anything else (on, a class list,
        # absent) lets events through.
        client.events_on = _header(message, "Events").lower() != "off"
        log.info("AMI client %s logged in as %s (events %s)", client.remote_address, client.username, client.events_on)
        if client.events_on:
            uptime = str(int(time.monotonic() - self._started))
            client.enqueue(
                encode_message(
                    {
                        "Event": "FullyBooted",
                        "Privilege": "system,all",
                        "Uptime": uptime,
                        "LastReload": uptime,
                        "Status": "Fully Booted",
                    }
                )
            )
        self._broadcast(encode_message(self._security_event(client, "SuccessfulAuth")), events_only=True)
        self._update_event_clients()

    # -- default handlers --------------------------------------------------

    def _handle_login(self, message: AmiMessage) -> list[AmiMessage]:
        client = _current_client.get(None)
        if client is not None and client.logged_in:
            return [{"Response": "Success", "Message": "Already authenticated"}]
        user_ok = hmac.compare_digest(_header(message, "Username").encode(), self.username.encode())
        secret_ok = hmac.compare_digest(_header(message, "Secret").encode(), self.secret.encode())
        if user_ok and secret_ok:
            return [{"Response": "Success", "Message": "Authentication accepted"}]
        return [{"Response": "Error", "Message": "Authentication failed"}]

    def _handle_logoff(self, message: AmiMessage) -> list[AmiMessage]:
        return [{"Response": "Goodbye", "Message": "Thanks for all the fish."}]

    def _handle_ping(self, message: AmiMessage) -> list[AmiMessage]:
        now = time.time()
        return [{"Response": "Success", "Ping": "Pong", "Timestamp": f"{now:.6f}"}]

    def _handle_core_show_channels(self, message: AmiMessage) -> list[AmiMessage]:
        action_id = _header(message, "ActionID")
        complete: AmiMessage = {"Event": "CoreShowChannelsComplete"}
        if action_id:
            complete["ActionID"] = action_id
        complete.update({"EventList": "Complete", "ListItems": "0"})
        return [{"Response": "Success", "EventList": "start", "Message": "Channels will follow"}, complete]

    def _handle_originate(self, message: AmiMessage) -> list[AmiMessage]:
        return [{"Response": "Success", "Message": "Originate successfully queued"}]

    # -- message helpers ---------------------------------------------------

    @staticmethod
    def _with_action_id(reply: AmiMessage, action_id: str) -> AmiMessage:
        """Put the action's ActionID second in a Response that lacks one, as Asterisk does."""
        if not action_id or next(iter(reply), None) != "Response" or "ActionID" in reply:
            return reply
        items = list(reply.items())
        return dict([items[0], ("ActionID", action_id), *items[1:]])

    def _error(self, message: AmiMessage, text: str) -> bytes:
        return encode_message(self._with_action_id({"Response": "Error", "Message": text}, _header(message, "ActionID")))

    def _security_event(self, client: _Client, event: str, action: str = "") -> AmiMessage:
        now = time.time()
        msg: AmiMessage = {
            "Event": event,
            "Privilege": "security,all",
            "EventTV": _event_tv(now),
            "Severity": "Informational" if event == "SuccessfulAuth" else "Error",
            "Service": "AMI",
            "EventVersion": "1",
            "AccountID": client.username or "<unknown>",
            "SessionID": client.session_id,
            "LocalAddress": client.local_address,
            "RemoteAddress": client.remote_address,
        }
        if event == "SuccessfulAuth":
            msg["UsingPassword"] = "0"
        else:
            msg["RequestType"] = f"Action: {action}"
        msg["SessionTV"] = _event_tv(client.session_tv)
        return msg
