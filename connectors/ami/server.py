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

The server keeps a live channel table (``live``) from the events it sends
(``send_event``, ``play``, and ``send_raw``, whose bytes it parses): Newchannel
adds a channel, Newstate/NewCallerid/NewConnectedLine/Newexten (any event
carrying the channel's snapshot) update it, BridgeEnter/BridgeLeave set and
clear its bridge, Hangup removes it; QueueCallerJoin/Leave track the callers
waiting in each queue. ``CoreShowChannels`` and ``QueueStatus`` answer from it
as Asterisk 22 does (resync_snapshot capture), so a client that reconnects in
the middle of a call can rebuild it. ``ListCommands`` lists the actions the
account may use, from ``write_perms`` (Asterisk's ``write =`` classes).

Fault knobs, for the link's tests: ``answer_pings=False`` (Ping is never
answered, as on a half-open link), ``banner_delay`` (None: the socket is
accepted and nothing is ever said, as during an Asterisk start-up),
``close_after_banner``, ``uptime`` (FullyBooted's Uptime; set it lower to
simulate a restart), ``drop_clients()`` (abort every connection, keep
listening), ``shutdown_event()`` (Asterisk's Shutdown event, then the sockets
close), ``freeze()`` (existing sessions stop reading and writing without
closing: a half-open connection), ``cut_after(action, replies)`` (the next
such action is answered in part, then the connection closes: a cut during
the login or the resync) and ``cut_mid_message(message, at)`` (the PBX emits
an event, the connection breaks inside it). ``connection_times`` and
``logins`` count what clients did.

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
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from connectors.ami.codec import AmiCodec, AmiMessage

__all__ = [
    "DEFAULT_WRITE_PERMS",
    "ActionHandler",
    "AmiServer",
    "ChannelTable",
    "LiveChannel",
    "capture_stream",
    "encode_message",
]

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

# The channel snapshot headers Asterisk 22 puts in every channel event and in
# CoreShowChannel, in that order (resync_snapshot).
_SNAPSHOT: Final = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)
# Events that name a second channel with these header prefixes; its snapshot
# is as current as the first one's.
_SNAPSHOT_PREFIXES: Final = ("", "Dest")

DEFAULT_WRITE_PERMS: Final[frozenset[str]] = frozenset({"originate", "call"})
"""``write = originate,call``: what a gateway placing click-to-call needs."""

# Event classes in the order authority_to_str (main/manager.c) prints them.
_PERM_ORDER: Final = (
    "system", "call", "log", "verbose", "command", "agent", "user", "config", "dtmf",
    "reporting", "cdr", "dialplan", "originate", "agi", "cc", "aoc", "test", "security", "message",
)
# (action, synopsis, authority) of Asterisk 22's manager actions, as ListCommands
# prints them. An action is listed when its authority is empty or shares a class
# with the account's write classes (action_listcommands in main/manager.c).
_MANAGER_ACTIONS: Final[tuple[tuple[str, str, frozenset[str]], ...]] = tuple(
    (name, synopsis, frozenset(authority.split(",")) if authority else frozenset())
    for name, synopsis, authority in (
        ("Ping", "Keepalive command.", ""),
        ("Events", "Control Event Flow.", ""),
        ("Logoff", "Logoff Manager.", ""),
        ("Login", "Login Manager.", ""),
        ("Challenge", "Generate Challenge for MD5 Auth.", ""),
        ("ListCommands", "List available manager commands.", ""),
        ("WaitEvent", "Wait for an event to occur.", ""),
        ("Hangup", "Hangup channel.", "system,call"),
        ("Status", "List channel status.", "system,call,reporting"),
        ("Setvar", "Sets a channel variable or function value.", "call"),
        ("Getvar", "Gets a channel variable or function value.", "call,reporting"),
        ("GetConfig", "Retrieve configuration.", "system,config"),
        ("GetConfigJSON", "Retrieve configuration (JSON format).", "system,config"),
        ("UpdateConfig", "Update basic configuration.", "config"),
        ("CreateConfig", "Creates an empty file in the configuration directory.", "config"),
        ("ListCategories", "List categories in configuration file.", "config"),
        ("Redirect", "Redirect (transfer) a call.", "call"),
        ("Atxfer", "Attended transfer.", "call"),
        ("BlindTransfer", "Blind transfer channel(s) to the given destination", "call"),
        ("Originate", "Originate a call.", "originate"),
        ("Command", "Execute Asterisk CLI Command.", "command"),
        ("ExtensionState", "Check Extension Status.", "call,reporting"),
        ("AbsoluteTimeout", "Set absolute timeout.", "system,call"),
        ("MailboxStatus", "Check mailbox.", "call,reporting"),
        ("MailboxCount", "Check Mailbox Message Count.", "call,reporting"),
        ("SendText", "Sends a text message to channel.", "call"),
        ("UserEvent", "Send an arbitrary event.", "user"),
        ("CoreSettings", "Show PBX core settings (version etc).", "system,reporting"),
        ("CoreStatus", "Show PBX core status variables.", "system,reporting"),
        ("Reload", "Send a reload event.", "system,config"),
        ("LoggerRotate", "Reload and rotate the Asterisk logger.", "system,reporting"),
        ("CoreShowChannels", "List currently active channels.", "system,reporting"),
        ("ModuleLoad", "Module management.", "system"),
        ("ModuleCheck", "Check if module is loaded.", "system"),
        ("Filter", "Dynamically add filters for the current manager session.", "system"),
        ("DeviceStateList", "List the current known device states.", "call,reporting"),
        ("BridgeList", "Get a list of bridges in the system.", "reporting"),
        ("QueueStatus", "Show queue status.", ""),
        ("QueueSummary", "Show queue summary.", ""),
        ("QueueAdd", "Add interface to queue.", "agent"),
        ("QueueRemove", "Remove interface from queue.", "agent"),
        ("QueuePause", "Makes a queue member temporarily unavailable.", "agent"),
        ("MixMonitor", "Record a call and mix the audio during the recording.", "system"),
        ("StopMixMonitor", "Stop recording a call through MixMonitor, and free the recording's file handle.",
         "system,call"),
        ("PlayDTMF", "Play DTMF signal on a specific channel.", "call"),
        ("Bridge", "Bridge two channels already in the PBX.", "call"),
        ("PJSIPShowEndpoints", "Lists PJSIP endpoints.", "system"),
        ("DBGet", "Get DB Entry.", "system,reporting"),
        ("DBPut", "Put DB entry.", "system"),
    )
)


def _priv(authority: frozenset[str]) -> str:
    """authority_to_str: the classes in Asterisk's order, then "all"; "<none>" for none."""
    if not authority:
        return "<none>"
    return ",".join([p for p in _PERM_ORDER if p in authority] + ["all"])


def _text(msg: Mapping[str, str | list[str]], key: str) -> str:
    value = msg.get(key, "")
    if isinstance(value, str):
        return value
    return value[0] if value else ""


def _or_unknown(value: str) -> str:
    """app_queue's S_COR(..., "unknown") where a snapshot says <unknown>."""
    return "unknown" if value in ("", "<unknown>") else value


def _duration(seconds: float) -> str:
    """CoreShowChannel's Duration: HH:MM:SS."""
    total = max(0, int(seconds))
    return f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


@dataclass
class LiveChannel:
    """One channel of the PBX, as the events sent so far describe it."""

    headers: dict[str, str]
    """The snapshot headers (``_SNAPSHOT``), latest values."""
    variables: list[str]
    """``ChanVariable`` values (manager.conf ``channelvars``)."""
    created: float
    """``time.monotonic()`` when its Newchannel was sent (CoreShowChannel's Duration)."""
    application: str = ""
    application_data: str = ""
    bridge: str = ""
    """BridgeUniqueid of the bridge it is in, "" when in none."""

    @property
    def uniqueid(self) -> str:
        return self.headers["Uniqueid"]

    @property
    def linkedid(self) -> str:
        return self.headers["Linkedid"]


@dataclass
class ChannelTable:
    """The channels and queue callers a PBX has, kept from the events it sends.

    ``observe`` every event, in order; ``channels`` (Uniqueid -> channel, in
    creation order) and ``queues`` (queue -> Uniqueid -> time it joined, in
    queue order) are what CoreShowChannels and QueueStatus list.
    """

    clock: Callable[[], float] = time.monotonic
    channels: dict[str, LiveChannel] = field(default_factory=dict)
    queues: dict[str, dict[str, float]] = field(default_factory=dict)

    def observe(self, msg: Mapping[str, str | list[str]]) -> None:
        event = _text(msg, "Event")
        uniqueid = _text(msg, "Uniqueid")
        if not event or not uniqueid:
            return
        if event == "Newchannel":
            chanvars = msg.get("ChanVariable", [])
            self.channels[uniqueid] = LiveChannel(
                headers={key: _text(msg, key) for key in _SNAPSHOT},
                variables=[chanvars] if isinstance(chanvars, str) else list(chanvars),
                created=self.clock(),
            )
            return
        if event == "Hangup":
            self._remove(uniqueid)
            return
        for prefix in _SNAPSHOT_PREFIXES:
            self._update(msg, prefix)
        channel = self.channels.get(uniqueid)
        if channel is None:
            return
        if event == "Rename":
            channel.headers["Channel"] = _text(msg, "Newname") or channel.headers["Channel"]
        elif event == "Newexten":
            channel.application = _text(msg, "Application")
            channel.application_data = _text(msg, "AppData")
        elif event == "DialBegin":
            dest = self.channels.get(_text(msg, "DestUniqueid"))
            if dest is not None and not dest.application:
                # A dialled channel runs no dialplan: Asterisk shows the dialler's stub.
                dest.application = "AppQueue" if channel.application == "Queue" else "AppDial"
                dest.application_data = "(Outgoing Line)"
        elif event == "BridgeEnter":
            channel.bridge = _text(msg, "BridgeUniqueid")
        elif event == "BridgeLeave":
            if channel.bridge == _text(msg, "BridgeUniqueid"):
                channel.bridge = ""
        elif event == "QueueCallerJoin":
            self.queues.setdefault(_text(msg, "Queue"), {})[uniqueid] = self.clock()
        elif event in ("QueueCallerLeave", "QueueCallerAbandon"):
            self.queues.get(_text(msg, "Queue"), {}).pop(uniqueid, None)

    def _update(self, msg: Mapping[str, str | list[str]], prefix: str) -> None:
        channel = self.channels.get(_text(msg, prefix + "Uniqueid"))
        if channel is None or prefix + "Channel" not in msg:
            return
        for key in _SNAPSHOT:
            value = msg.get(prefix + key)
            if isinstance(value, str) and key != "Uniqueid":
                channel.headers[key] = value
        chanvars = msg.get(prefix + "ChanVariable")
        if chanvars is not None:
            channel.variables = [chanvars] if isinstance(chanvars, str) else list(chanvars)

    def _remove(self, uniqueid: str) -> None:
        self.channels.pop(uniqueid, None)
        for callers in self.queues.values():
            callers.pop(uniqueid, None)

    def forget(self, linkedid: str | None = None) -> None:
        """Drop the channels of one call (``linkedid``), or all: they ended
        without anybody being told."""
        gone = [uid for uid, ch in self.channels.items() if linkedid is None or ch.linkedid == linkedid]
        for uniqueid in gone:
            self._remove(uniqueid)


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
    or whose queue reaches ``max_queue_bytes``, is dropped. A ``frozen``
    session neither reads nor writes, and stays open: a half-open connection.
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
        self.frozen = False  # freeze(): nothing read, nothing written, socket left open
        self.gone = asyncio.Event()  # set once the server has forgotten the session
        self.task: asyncio.Task[None] | None = None  # the session's _serve task
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
        return self.logged_in and self.events_on and not self.closed and not self.frozen

    def enqueue(self, data: bytes) -> None:
        """Queue bytes for the writer task; drop the client if its queue overflows."""
        if self.closed or self.closing or self.frozen:
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

    def freeze(self) -> None:
        """Stop reading and writing without closing the socket: the client's
        bytes sit unread in the kernel and nothing it sends is answered."""
        if self.closed or self.frozen:
            return
        self.frozen = True
        self._queue.clear()
        self._queued = 0
        self.writable.set()
        transport = self.writer.transport
        if isinstance(transport, asyncio.ReadTransport):  # a socket transport is both
            transport.pause_reading()

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

    ``write_perms`` are the account's write classes (manager.conf ``write =``):
    they decide which actions ``ListCommands`` lists (``write_allowed=False``
    empties them). Only ``write_allowed`` makes the server refuse actions.

    Fault knobs (constructor parameters, and attributes a test may change while
    the server runs):

    - ``answer_pings``: False leaves every Ping unanswered, the session open.
    - ``banner_delay``: seconds before a new connection gets the banner; None
      never sends it (nor answers anything) until the client hangs up.
    - ``close_after_banner``: close every new connection right after the banner.
    - ``uptime``: FullyBooted's Uptime/LastReload after each login, growing
      with time; set it lower to look like a PBX that restarted.
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
        write_perms: Iterable[str] = DEFAULT_WRITE_PERMS,
        answer_pings: bool = True,
        banner_delay: float | None = 0.0,
        close_after_banner: bool = False,
        uptime: int = 0,
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
        self.write_perms: frozenset[str] = frozenset(write_perms) if write_allowed else frozenset()
        self.answer_pings = answer_pings
        self.banner_delay = banner_delay
        self.close_after_banner = close_after_banner
        self.live = ChannelTable()
        """The PBX's channels and queue callers, kept from the events sent."""
        self.connection_times: list[float] = []
        """``time.monotonic()`` of every TCP connection accepted."""
        self.logins = 0
        """Successful logins."""
        self._raw_codec = AmiCodec(drop_events=frozenset())  # send_raw's bytes, for the table
        self.actions: list[AmiMessage] = []
        """Every action received, from every client, in order."""
        self.originates: list[AmiMessage] = []
        """The Originate actions received (allowed or refused)."""
        self.action_handlers: dict[str, ActionHandler] = {
            "Login": self._handle_login,
            "Logoff": self._handle_logoff,
            "Ping": self._handle_ping,
            "CoreShowChannels": self._handle_core_show_channels,
            "QueueStatus": self._handle_queue_status,
            "ListCommands": self._handle_list_commands,
            "Originate": self._handle_originate,
        }
        """Action name (matched case-insensitively) -> handler."""
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._event_clients = asyncio.Event()
        self._booted = time.monotonic() - uptime
        self._cuts: dict[str, int] = {}  # lower-case action -> replies sent before the cut

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("AmiServer already started")
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
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
        """Connected clients, logged in or not (frozen ones included)."""
        return len(self._clients)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return len(self.connection_times)

    @property
    def uptime(self) -> int:
        """Seconds since the PBX "booted", as FullyBooted reports them."""
        return int(time.monotonic() - self._booted)

    @uptime.setter
    def uptime(self, seconds: int) -> None:
        self._booted = time.monotonic() - seconds

    def forget_call(self, linkedid: str | None = None) -> None:
        """Remove a call's channels (all channels when None) from the live
        table without telling anyone, as if it ended while nobody listened."""
        self.live.forget(linkedid)

    # -- faults ------------------------------------------------------------

    async def drop_clients(self) -> None:
        """Abort every client connection now, unsent bytes lost (a network
        failure, a crashed PBX); keep listening. Returns once their sessions ended."""
        clients = list(self._clients)
        for client in clients:
            client.abort()
        await self._wait_sessions(clients)

    async def shutdown_event(self, restart: bool = True) -> None:
        """What Asterisk does on ``core restart``: the Shutdown event (restart
        capture), every channel gone, every session closed once its event is
        written. The server keeps listening (as the restarted PBX will)."""
        await self.send_event(
            {"Event": "Shutdown", "Privilege": "system,all", "Shutdown": "Cleanly", "Restart": str(restart)}
        )
        self.live.forget()
        clients = list(self._clients)
        for client in clients:
            client.close_when_flushed()
        await self._wait_sessions(clients)

    def freeze(self) -> None:
        """Existing sessions stop reading and writing but stay open (no FIN):
        what a client sends is never answered, as over a half-open connection.
        New connections are served normally."""
        for client in list(self._clients):
            client.freeze()
        self._update_event_clients()

    def cut_after(self, action: str, replies: int = 0) -> None:
        """The next time a client sends ``action``, write only the first
        ``replies`` messages of its answer, then close that connection (FIN):
        a link cut during its login (``Login``, 0) or its resync
        (``CoreShowChannels``, some of the channels). One-shot."""
        self._cuts[action.lower()] = max(0, replies)

    async def cut_mid_message(self, message: Mapping[str, str | list[str]], at: int) -> None:
        """The PBX emits ``message`` (the live table follows it) but every
        connection breaks after its first ``at`` bytes: clients see half an
        event, then the connection is aborted."""
        data = encode_message(message)
        self.live.observe(message)
        self._broadcast(data[: max(0, min(at, len(data) - 1))], events_only=True)
        await self._backpressure()
        for client in list(self._clients):
            client.close_when_flushed()  # the half message is written, then FIN
        await self._wait_sessions(list(self._clients))

    async def _wait_sessions(self, clients: Sequence[_Client]) -> None:
        tasks = [c.task for c in clients if c.task is not None and not c.task.done()]
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=self.write_timeout + 1.0)
            for task in stuck:
                for client in clients:
                    if client.task is task:
                        client.abort()

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
        The live channel table follows the event even when nobody listens.
        """
        data = encode_message(message)
        self.live.observe(message)
        self._broadcast(data, events_only=True)
        await self._backpressure()

    async def send_raw(self, data: bytes) -> None:
        """Send raw bytes (e.g. ``capture_stream``) to every logged-in client.

        The bytes need not end on a message boundary: the live table parses
        them as a client would and picks up a cut message with the next call.
        Complete a cut message before a client's next action is answered, or
        the answer lands inside it (Asterisk never splits its own messages).
        """
        self._raw_codec.receive_data(bytes(data))
        for message in self._raw_codec.messages():
            self.live.observe(message)
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
        client.gone.set()
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
        self.connection_times.append(time.monotonic())
        client = _Client(self, reader, writer)
        client.task = task
        self._clients.add(client)
        writer_task = asyncio.create_task(client.write_loop(), name=f"ami-server-writer {client.remote_address}")
        log.info("AMI client connected from %s", client.remote_address)
        try:
            if await self._greet(client):
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

    async def _greet(self, client: _Client) -> bool:
        """Send the banner (after ``banner_delay``); False when the session must
        not go on to read actions."""
        delay = self.banner_delay
        if delay is None:
            # A PBX still starting: the socket is accepted, nothing is ever said
            # and nothing read is answered, until the client gives up.
            while not client.closed and await client.reader.read(_READ_SIZE):
                pass
            return False
        if delay > 0:
            try:
                await asyncio.wait_for(client.gone.wait(), delay)
                return False  # dropped while waiting
            except TimeoutError:
                pass
        client.enqueue(self.banner.encode("utf-8") + b"\r\n")
        if self.close_after_banner:
            client.close_when_flushed()
            return False
        return True

    async def _read_loop(self, client: _Client) -> None:
        while True:
            if client.frozen:
                # Half-open: hold the socket, read nothing, until the server drops it.
                await client.gone.wait()
                return
            if client.closed or client.closing:
                return
            data = await client.reader.read(_READ_SIZE)
            if client.frozen:
                continue  # frozen while this read waited: what it got is never answered
            client.codec.receive_data(data)
            for message in client.codec.messages():
                if client.closed or client.closing or client.frozen:
                    break
                await self._handle(client, message)
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
        cut = self._cuts.pop(name, None)
        if cut is not None:
            replies = replies[:cut]
        action_id = _header(message, "ActionID")
        for reply in replies:
            client.enqueue(encode_message(self._with_action_id(reply, action_id)))
        if cut is not None:
            log.info("AMI client %s cut after %d message(s) of its %s", client.remote_address, len(replies), action)
            client.close_when_flushed()
            return
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
        self.logins += 1
        client.username = _header(message, "Username")
        # "Events: off" silences the session; anything else (on, a class list,
        # absent) lets events through.
        client.events_on = _header(message, "Events").lower() != "off"
        log.info("AMI client %s logged in as %s (events %s)", client.remote_address, client.username, client.events_on)
        if client.events_on:
            uptime = str(self.uptime)
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
        if not self.answer_pings:
            return []  # no reply at all: the client's ping deadline must notice
        now = time.time()
        return [{"Response": "Success", "Ping": "Pong", "Timestamp": f"{now:.6f}"}]

    def _handle_core_show_channels(self, message: AmiMessage) -> list[AmiMessage]:
        """One CoreShowChannel per live channel, headers as in resync_snapshot."""
        action_id = _header(message, "ActionID")
        now = self.live.clock()
        items: list[AmiMessage] = []
        for channel in self.live.channels.values():
            item: AmiMessage = {"Event": "CoreShowChannel"}
            if action_id:
                item["ActionID"] = action_id
            item.update(channel.headers)
            if channel.variables:
                item["ChanVariable"] = list(channel.variables)
            item["Application"] = channel.application
            item["ApplicationData"] = channel.application_data
            item["Duration"] = _duration(now - channel.created)
            item["BridgeId"] = channel.bridge
            items.append(item)
        return [
            {"Response": "Success", "EventList": "start", "Message": "Channels will follow"},
            *items,
            self._list_complete("CoreShowChannelsComplete", action_id, len(items)),
        ]

    def _handle_queue_status(self, message: AmiMessage) -> list[AmiMessage]:
        """QueueParams per queue seen, then a QueueEntry per waiting caller, with
        app_queue.c's headers (ActionID last, "unknown" for a missing caller id).
        Queue members are not modelled."""
        action_id = _header(message, "ActionID")
        wanted = _header(message, "Queue")
        now = self.live.clock()
        tail: AmiMessage = {"ActionID": action_id} if action_id else {}
        items: list[AmiMessage] = []
        for queue, callers in self.live.queues.items():
            if wanted and queue != wanted:
                continue
            waiting = [(self.live.channels[uid], joined) for uid, joined in callers.items() if uid in self.live.channels]
            items.append(
                {
                    "Event": "QueueParams",
                    "Queue": queue,
                    "Max": "0",
                    "Strategy": "linear",
                    "Calls": str(len(waiting)),
                    "Holdtime": "0",
                    "TalkTime": "0",
                    "Completed": "0",
                    "Abandoned": "0",
                    "ServiceLevel": "0",
                    "ServicelevelPerf": "0.0",
                    "ServicelevelPerf2": "0.0",
                    "Weight": "0",
                    **tail,
                }
            )
            for position, (channel, joined) in enumerate(waiting, 1):
                h = channel.headers
                items.append(
                    {
                        "Event": "QueueEntry",
                        "Queue": queue,
                        "Position": str(position),
                        "Channel": h["Channel"],
                        "Uniqueid": h["Uniqueid"],
                        "CallerIDNum": _or_unknown(h["CallerIDNum"]),
                        "CallerIDName": _or_unknown(h["CallerIDName"]),
                        "ConnectedLineNum": _or_unknown(h["ConnectedLineNum"]),
                        "ConnectedLineName": _or_unknown(h["ConnectedLineName"]),
                        "Wait": str(max(0, int(now - joined))),
                        "Priority": "0",
                        **tail,
                    }
                )
        return [
            {"Response": "Success", "EventList": "start", "Message": "Queue status will follow"},
            *items,
            self._list_complete("QueueStatusComplete", action_id, len(items)),
        ]

    def _handle_list_commands(self, message: AmiMessage) -> list[AmiMessage]:
        """Every action the account may use: those needing no class, and those
        sharing a class with ``write_perms`` (action_listcommands)."""
        reply: AmiMessage = {"Response": "Success"}
        for name, synopsis, authority in _MANAGER_ACTIONS:
            if not authority or authority & self.write_perms:
                reply[name] = f"{synopsis}  (Priv: {_priv(authority)})"
        return [reply]

    def _handle_originate(self, message: AmiMessage) -> list[AmiMessage]:
        return [{"Response": "Success", "Message": "Originate successfully queued"}]

    # -- message helpers ---------------------------------------------------

    @staticmethod
    def _list_complete(event: str, action_id: str, count: int) -> AmiMessage:
        """astman_send_list_complete_start: Event, ActionID, EventList, ListItems."""
        complete: AmiMessage = {"Event": event}
        if action_id:
            complete["ActionID"] = action_id
        complete.update({"EventList": "Complete", "ListItems": str(count)})
        return complete

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
