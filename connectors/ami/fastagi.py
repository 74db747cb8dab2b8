"""FastAGI server: Asterisk asks over TCP where a call should go; we answer with channel variables.

The dialplan runs ``AGI(agi://GATEWAY:4573/route,${DID},${CALLERID(num)})``.
Asterisk connects, sends its AGI environment as ``agi_key: value`` lines ended
by a blank line, then waits for commands. For each request this server calls
``decide(request)`` under a deadline and sends one ``SET VARIABLE`` per name in
the answer, reading each ``200 result=1`` reply, then closes. Closing is the
end of the script for Asterisk: ``AGISTATUS`` becomes ``SUCCESS`` and the
dialplan goes on with whatever variables were set (``config/routing-dialplan.conf``).

Failure rule: when anything goes wrong (``decide`` late or raising, a script
name we do not serve) the server sets nothing and closes. The dialplan then
sees no ``ROUTE`` and takes its ordinary path, so a slow or broken gateway
costs a call its personal routing, never the call. A single variable that
cannot be sent safely (a line break in a CRM name, say) is left out and the
others are set: the dialplan tests each one by itself, and dropping a whole
``ROUTE_REASON=blacklist`` decision over a bad ``CONTACT_NAME`` would put a
blacklisted caller through.

Why not panoramisk's FastAGI ``Application``: its handler loops on
``reader.read()`` until it sees a blank line, so a client that closes before
that line makes it spin at 100% CPU for ever (EOF returns ``b""`` at once), and
it buffers headers without a limit. Here the header block is bounded in bytes
(``max_header_bytes``) and in time (``header_timeout``), EOF ends the
connection, open connections are bounded (``max_connections``), and a port scan
is logged once, then quietly at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger(__name__)

# Asterisk reads one AGI command into a buffer of this size (res_agi.c,
# AGI_BUF_LEN); a longer line would be cut and misread, so it is never sent.
AGI_BUF_LEN = 2048
# Replies to SET VARIABLE are one short line; anything longer is not Asterisk.
_MAX_REPLY_BYTES = 1024
_READ_SIZE = 4096
# Channel variable names we send: letters, digits, underscores (a leading "_"
# or "__" asks Asterisk to inherit the variable). No spaces or quotes: the name
# is an unquoted AGI argument.
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FORBIDDEN_IN_VALUES = ("\r", "\n", "\0")
# Asterisk writes agi_callerid as "unknown" when the caller's number is not valid.
_NO_CALLER = frozenset({"", "unknown"})


@dataclass(frozen=True)
class AgiRequest:
    """One FastAGI request, as Asterisk announced it in its environment."""

    script: str  # agi_network_script without query string: "route"
    args: tuple[str, ...]  # agi_arg_1 .. agi_arg_N, in order
    caller: str | None  # agi_callerid; None when Asterisk says "unknown"
    channel: str  # agi_channel, e.g. PJSIP/trunk-0000001c
    uniqueid: str  # agi_uniqueid, e.g. 1795736527.30
    headers: dict[str, str] = field(repr=False)  # every agi_* line, as sent

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> AgiRequest:
        # AGI(agi://host/route?x=1) arrives as agi_network_script "route?x=1";
        # the script is the path, the query stays in headers for whoever wants it.
        script = headers.get("agi_network_script", "").split("?", 1)[0].strip("/")
        args: list[str] = []
        while (arg := headers.get(f"agi_arg_{len(args) + 1}")) is not None:
            args.append(arg)
        caller = headers.get("agi_callerid", "")
        return cls(
            script=script,
            args=tuple(args),
            caller=None if caller in _NO_CALLER else caller,
            channel=headers.get("agi_channel", ""),
            uniqueid=headers.get("agi_uniqueid", ""),
            headers=headers,
        )


Decide = Callable[[AgiRequest], Awaitable[Mapping[str, str]]]
"""Variables to set on the channel for a request; an empty mapping sets nothing."""


@dataclass
class FastAgiStats:
    """Counters since start. Every accepted connection ends in one of
    refused_busy, refused_headers, incomplete_headers, unknown_script, late,
    failed, command_errors, completed or errors; ``decided`` counts the
    decisions that then went on to command_errors or completed."""

    connections: int = 0  # TCP connections accepted
    refused_busy: int = 0  # closed at once: max_connections were open
    refused_headers: int = 0  # header block too large, or not AGI at all
    incomplete_headers: int = 0  # peer closed or fell silent before the blank line
    requests: int = 0  # complete AGI requests read
    unknown_script: int = 0  # a script name we do not serve: nothing set
    decided: int = 0  # decide answered within the deadline (empty answers too)
    late: int = 0  # decide missed the deadline: nothing set
    failed: int = 0  # decide raised or answered something that is not a mapping: nothing set
    refused_variables: int = 0  # variables left out of a decision: unsafe name or value
    variables_set: int = 0  # SET VARIABLE commands Asterisk acknowledged with 200
    command_errors: int = 0  # non-200 reply, HANGUP, or the peer silent/gone while we sent
    completed: int = 0  # decisions delivered whole (every variable acknowledged)
    errors: int = 0  # unexpected errors caught at the connection boundary (bugs)


class AgiProtocolError(Exception):
    """The peer broke the FastAGI protocol; ``kind`` says how (a stats/log category)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_header_line(line: bytes) -> tuple[str, str]:
    """``b"agi_channel: PJSIP/trunk-0000001c\\n"`` -> ``("agi_channel", "PJSIP/trunk-0000001c")``.

    Only ``agi_*`` keys are AGI; anything else (an HTTP request, a banner
    probe, binary noise) raises ``AgiProtocolError``. Values are UTF-8 as
    Asterisk passes them through; undecodable bytes become U+FFFD rather than
    losing the call.
    """
    text = line.rstrip(b"\r\n").decode("utf-8", errors="replace")
    key, sep, value = text.partition(":")
    if not sep or not key.startswith("agi_") or not key.isidentifier():
        raise AgiProtocolError("not_agi", f"not an AGI header line: {text[:60]!r}")
    # Asterisk writes "key: value"; only that one space is syntax, the rest is the value.
    return key, value.removeprefix(" ")


def encode_set_variable(name: str, value: str) -> bytes:
    """``SET VARIABLE NAME "value"\\n``, quoted the way res_agi's parse_args reads it.

    Inside double quotes parse_args takes ``\\`` as an escape for the next
    character, so ``"`` and ``\\`` are escaped and everything else is literal.
    A line break would end the command early (and the rest would be read as a
    second command), NUL would cut it: these raise ``ValueError``, as do names
    that are not plain variable names and lines too long for Asterisk's buffer.
    """
    if not isinstance(name, str) or not _VARIABLE_NAME.fullmatch(name):
        raise ValueError(f"not a channel variable name: {name!r}")
    if not isinstance(value, str):
        raise ValueError(f"{name}: value is {type(value).__name__}, not str")
    if any(bad in value for bad in _FORBIDDEN_IN_VALUES):
        raise ValueError(f"{name}: value contains CR, LF or NUL: {value[:60]!r}")
    quoted = value.replace("\\", "\\\\").replace('"', '\\"')
    line = f'SET VARIABLE {name} "{quoted}"\n'.encode()  # UnicodeEncodeError is a ValueError
    if len(line) >= AGI_BUF_LEN:
        raise ValueError(f"{name}: command is {len(line)} bytes, Asterisk reads at most {AGI_BUF_LEN - 1}")
    return line


def _could_be_header(start: bytes) -> bool:
    """Can a line beginning with these bytes still be ``agi_...`` or the blank line?
    Lets a TLS hello or other binary noise without line ends be refused at once,
    instead of holding a connection until ``header_timeout``."""
    return b"agi_".startswith(start[:4]) or start == b"\r"


class _QuietLog:
    """The first event of each kind at WARNING, later ones at DEBUG (as in
    python-zeroconf's _logger): a port scan or a flood of junk gives one line.
    Kinds are fixed strings from this module, never peer data, so the set is bounded."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warning(self, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        if kind in self._seen:
            log.debug(message, *args, exc_info=exc_info)
            return
        self._seen.add(kind)
        log.warning(message + " (further ones are logged at debug level)", *args, exc_info=exc_info)


class _PeerGone(Exception):
    """The peer closed (or reset) the connection."""


class _Lines:
    """Reads LF-terminated lines from a stream with a byte limit per call.

    Reads go through ``reader.read`` in small chunks, and the pending partial
    line never exceeds the limit plus one chunk: a 1 MB "header" costs a
    refused connection, not a megabyte. EOF raises ``_PeerGone`` at once
    (panoramisk's loop kept reading ``b""`` instead).
    """

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = bytearray()

    async def readline(self, limit: int, *, plausible: Callable[[bytes], bool] | None = None) -> bytes:
        """The next line, LF included. ``plausible`` is asked about the start of
        a line still incomplete: False refuses it without waiting for the rest."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                if end + 1 > limit:
                    raise AgiProtocolError("too_large", f"line of {end + 1} bytes, limit {limit}")
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= limit:
                raise AgiProtocolError("too_large", f"more than {limit} bytes without a line end")
            if plausible is not None and self._buffer and not plausible(bytes(self._buffer[:8])):
                raise AgiProtocolError("not_agi", f"not an AGI header line: {bytes(self._buffer[:40])!r}")
            try:
                chunk = await self._reader.read(_READ_SIZE)
            except OSError as exc:  # ConnectionResetError and friends
                raise _PeerGone(str(exc)) from exc
            if not chunk:
                raise _PeerGone("connection closed")
            self._buffer += chunk


class FastAgiServer:
    """Serves FastAGI requests for ``scripts`` on ``host:port`` (port 0: any free port).

    ``deadline``: seconds ``decide`` may take; ``header_timeout``: seconds for
    the whole header block; ``max_header_bytes``: its size; ``command_timeout``:
    seconds per SET VARIABLE round trip; ``max_connections``: open connections,
    beyond which new ones are closed as soon as they are accepted.
    """

    def __init__(
        self,
        decide: Decide,
        *,
        host: str = "127.0.0.1",
        port: int = 4573,
        scripts: frozenset[str] = frozenset({"route"}),
        deadline: float = 0.3,
        header_timeout: float = 5.0,
        max_header_bytes: int = 16 * 1024,
        max_connections: int = 200,
        command_timeout: float = 2.0,
    ) -> None:
        for name, number in (
            ("deadline", deadline),
            ("header_timeout", header_timeout),
            ("command_timeout", command_timeout),
        ):
            if not number > 0:
                raise ValueError(f"FastAgiServer {name} must be > 0 seconds, got {number!r}")
        if max_header_bytes < 256:
            raise ValueError(f"FastAgiServer max_header_bytes must be >= 256, got {max_header_bytes!r}")
        if max_connections < 1:
            raise ValueError(f"FastAgiServer max_connections must be >= 1, got {max_connections!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"FastAgiServer port must be 0..65535, got {port!r}")
        self._decide = decide
        self.host = host
        self._port = port
        self.scripts = frozenset(scripts)
        self.deadline = deadline
        self.header_timeout = header_timeout
        self.max_header_bytes = max_header_bytes
        self.max_connections = max_connections
        self.command_timeout = command_timeout
        self.stats = FastAgiStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._quiet = _QuietLog()
        self._traced: set[str] = set()  # exception types already logged with a traceback

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FastAgiServer already started")
        # A plain callback, not a coroutine: we create and own each connection's
        # task, so close() can cancel and await them (asyncio.start_server's own
        # task wrapper reports a cancelled handler as an error on Python 3.11).
        # The stream buffer limit also caps what asyncio buffers before pausing
        # the socket (twice the limit).
        self._server = await asyncio.start_server(
            self._accept,
            self.host,
            self._port,
            limit=max(self.max_header_bytes, _READ_SIZE),
            backlog=max(100, self.max_connections),
        )
        log.info("FastAGI server listening on %s:%d for %s", self.host, self.port, sorted(self.scripts))

    async def close(self) -> None:
        """Stop listening and drop every open connection (nothing more is set on them)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        await server.wait_closed()

    async def __aenter__(self) -> FastAgiServer:
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
    def port(self) -> int:
        """The port listened on (the one the OS chose for port 0, once started)."""
        if self._server is not None and self._server.sockets:
            port: int = self._server.sockets[0].getsockname()[1]
            return port
        return self._port

    @property
    def active_connections(self) -> int:
        return len(self._tasks)

    # -- one connection --------------------------------------------------------

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if len(self._tasks) >= self.max_connections:
            self.stats.refused_busy += 1
            self._quiet.warning(
                "busy", "FastAGI: %d connections open (max_connections), closing a new one at once", len(self._tasks)
            )
            writer.transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._handle(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection; nothing raised here reaches the server."""
        peer = _peer(writer)
        try:
            await self._serve(_Lines(reader), writer, peer)
        except asyncio.CancelledError:
            raise  # close(): the finally below drops the socket
        except Exception:  # a bug of ours must cost one call its routing, not the server
            self.stats.errors += 1
            self._quiet.warning("internal", "FastAGI connection from %s failed", peer, exc_info=True)
        finally:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()

    async def _serve(self, lines: _Lines, writer: asyncio.StreamWriter, peer: str) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                request = await self._read_request(lines)
        except TimeoutError:
            self.stats.incomplete_headers += 1
            self._quiet.warning(
                "header_timeout", "FastAGI client %s sent no complete request in %.1f s", peer, self.header_timeout
            )
            return
        except _PeerGone as exc:
            self.stats.incomplete_headers += 1
            self._quiet.warning(
                "headers_incomplete", "FastAGI client %s left before the end of its request: %s", peer, exc
            )
            return
        except AgiProtocolError as exc:
            self.stats.refused_headers += 1
            self._quiet.warning(f"headers_{exc.kind}", "FastAGI client %s refused: %s", peer, exc)
            return
        self.stats.requests += 1

        if request.script not in self.scripts:
            self.stats.unknown_script += 1
            self._quiet.warning(
                "unknown_script",
                "FastAGI request for script %r from %s: not served (serving %s), nothing set",
                request.script[:60],
                peer,
                sorted(self.scripts),
            )
            await _close_gracefully(writer)
            return

        commands = await self._decision(request)
        if commands is None:
            await _close_gracefully(writer)
            return
        if await self._send(commands, lines, writer, request):
            self.stats.completed += 1
        await _close_gracefully(writer)

    async def _read_request(self, lines: _Lines) -> AgiRequest:
        headers: dict[str, str] = {}
        budget = self.max_header_bytes  # the whole block, blank line included
        while True:
            try:
                line = await lines.readline(budget, plausible=_could_be_header)
            except AgiProtocolError as exc:
                if exc.kind != "too_large":
                    raise
                message = f"header block over max_header_bytes ({self.max_header_bytes})"
                raise AgiProtocolError(exc.kind, message) from exc
            budget -= len(line)
            if line in (b"\n", b"\r\n"):
                return AgiRequest.from_headers(headers)
            key, value = parse_header_line(line)
            headers[key] = value

    async def _decision(self, request: AgiRequest) -> list[bytes] | None:
        """The commands to send, or None (logged and counted) when nothing is to be set."""
        started = time.monotonic()
        deadline = asyncio.timeout(self.deadline)
        try:
            async with deadline:
                variables = await self._decide(request)
            if not isinstance(variables, Mapping):
                raise TypeError(f"decide returned {type(variables).__name__}, not a mapping")
            commands = self._encode(request, variables)
        except TimeoutError as exc:
            if not deadline.expired():  # decide's own TimeoutError (say, a store timeout)
                self._decision_failed(request, exc)
                return None
            self.stats.late += 1
            log.warning(
                "FastAGI %s for %s (%s, caller %s): no decision within %.0f ms, nothing set; the dialplan falls back",
                request.script,
                request.channel,
                request.uniqueid,
                request.caller,
                (time.monotonic() - started) * 1000,
            )
            return None
        except Exception as exc:
            self._decision_failed(request, exc)
            return None
        self.stats.decided += 1
        return commands

    def _encode(self, request: AgiRequest, variables: Mapping[str, str]) -> list[bytes]:
        """One command per variable, all encoded before any is sent; unsafe ones left out."""
        commands: list[bytes] = []
        for name, value in variables.items():
            try:
                commands.append(encode_set_variable(name, value))
            except ValueError as exc:
                self.stats.refused_variables += 1
                log.warning(
                    "FastAGI %s for %s (%s): %s; that variable is not set, the others are",
                    request.script,
                    request.channel,
                    request.uniqueid,
                    exc,
                )
        return commands

    def _decision_failed(self, request: AgiRequest, exc: Exception) -> None:
        self.stats.failed += 1
        # The traceback once per exception type; a store that is down fails every call the same way.
        kind = type(exc).__qualname__
        first = kind not in self._traced
        self._traced.add(kind)
        log.warning(
            "FastAGI %s for %s (%s, caller %s) failed: %r; nothing set, the dialplan falls back",
            request.script,
            request.channel,
            request.uniqueid,
            request.caller,
            exc,
            exc_info=first,
        )

    async def _send(
        self, commands: list[bytes], lines: _Lines, writer: asyncio.StreamWriter, request: AgiRequest
    ) -> bool:
        """Send each command and read its reply; True when all were acknowledged."""
        for command in commands:
            try:
                async with asyncio.timeout(self.command_timeout):
                    writer.write(command)
                    await writer.drain()
                    reply = await lines.readline(_MAX_REPLY_BYTES)
            except (TimeoutError, _PeerGone, OSError, AgiProtocolError) as exc:
                self.stats.command_errors += 1
                log.debug("FastAGI %s (%s): no reply to %r: %r", request.channel, request.uniqueid, command, exc)
                return False
            if not reply.startswith(b"200 "):
                # 510/511/520, or "HANGUP": the channel is gone or refused the
                # command. Nothing to retry; the dialplan carries on without us.
                self.stats.command_errors += 1
                log.debug("FastAGI %s (%s): %r answered %r", request.channel, request.uniqueid, command, reply)
                return False
            self.stats.variables_set += 1
        return True


async def _close_gracefully(writer: asyncio.StreamWriter) -> None:
    """Close once anything written is flushed (Asterisk then sets AGISTATUS=SUCCESS);
    a peer that will not take the bytes within a second is dropped."""
    writer.close()
    try:
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass  # reset by the peer while closing: closed all the same


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address) if address else "unknown"


__all__ = [
    "AGI_BUF_LEN",
    "AgiProtocolError",
    "AgiRequest",
    "Decide",
    "FastAgiServer",
    "FastAgiStats",
    "encode_set_variable",
    "parse_header_line",
]
