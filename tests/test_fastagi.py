"""FastAgiServer against a real FastAGI client over TCP.

The client is Asterisk's side of the protocol in a few lines: it sends the AGI
environment the way res_agi does (``agi_network: yes``, the script, then
``agi_request`` .. ``agi_arg_N`` and a blank line), answers every command with
``200 result=1`` and reads the commands back with res_agi's own argument
splitting (``asterisk_argv``), so quoting is checked as Asterisk would read it.
The j_agi_route capture shows the real exchange (``SET VARIABLE ROUTE PJSIP/103``,
``ResultCode: 200``, then ``AGISTATUS=SUCCESS``).

Decisions are plain async functions handed to the server, as the router's will
be; a slow lookup is one that awaits an event nobody sets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pytest

from connectors.ami.fastagi import AGI_BUF_LEN, AgiRequest, Decide, FastAgiServer

TIMEOUT = 5.0  # no single exchange in this file may take longer
DID = "+74950000004"
CALLER = "+79161110013"
LOGGER = "connectors.ami.fastagi"

ANSWER: Mapping[str, str] = {
    "ROUTE": "PJSIP/103",
    "ROUTE_FALLBACK": "vip",
    "ROUTE_REASON": "assigned_manager",
    "CONTACT_NAME": 'Иван "Ваня" Петров \\ ООО Ромашка',
    "SHOP": "shop B",
    "CHANNEL": "avito",
}


# -- Asterisk's side of the protocol ---------------------------------------------


def asterisk_argv(line: str) -> list[str]:
    """Split an AGI command line as res_agi's parse_args does: double quotes
    group words, a backslash makes the next character literal."""
    words: list[list[str]] = []
    quoted = escaped = False
    whitespace = True
    for char in line:
        if char == '"' and not escaped:
            quoted = not quoted
            if quoted and whitespace:  # an opening quote after a space starts a word
                words.append([])
                whitespace = False
            continue
        if char in " \t" and not quoted and not escaped:
            whitespace = True
            continue
        if char == "\\" and not escaped:
            escaped = True
            continue
        if whitespace:
            words.append([])
            whitespace = False
        words[-1].append(char)
        escaped = False
    return ["".join(word) for word in words]


def environment(
    port: int,
    *,
    script: str = "route",
    args: Sequence[str] = (DID, CALLER),
    caller: str = CALLER,
    uniqueid: str = "1795736527.30",
) -> bytes:
    """The header block Asterisk 22 sends on a FastAGI connection (res_agi's order)."""
    lines = [
        "agi_network: yes",
        f"agi_network_script: {script}",
        f"agi_request: agi://127.0.0.1:{port}/{script}",
        "agi_channel: PJSIP/trunk-0000001c",
        "agi_language: en",
        "agi_type: PJSIP",
        f"agi_uniqueid: {uniqueid}",
        "agi_version: 22.1.0",
        f"agi_callerid: {caller}",
        "agi_calleridname: Avito AGI",
        "agi_callingpres: 0",
        "agi_callingani2: 0",
        "agi_callington: 0",
        "agi_callingtns: 0",
        "agi_dnid: unknown",
        "agi_rdnis: unknown",
        "agi_context: route-agi",
        "agi_extension: s",
        "agi_priority: 1",
        "agi_enhanced: 0.0",
        "agi_accountcode: ",
        "agi_threadid: 140243571853888",
        *(f"agi_arg_{number}: {arg}" for number, arg in enumerate(args, 1)),
    ]
    return ("\n".join(lines) + "\n\n").encode()


@dataclass
class AgiSession:
    commands: list[str]  # as received, without the line end
    variables: dict[str, str]  # what SET VARIABLE set, read as Asterisk reads it
    closed_after: float  # seconds from the end of our headers to the server's close


async def agi_call(port: int, *, reply: bytes | None = b"200 result=1\n", **env: Any) -> AgiSession:
    """One AGI() execution: send the environment, answer commands with ``reply``
    (None: never answer), return when the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(environment(port, **env))
        await writer.drain()
        sent = time.monotonic()
        commands: list[str] = []
        variables: dict[str, str] = {}
        async with asyncio.timeout(TIMEOUT):
            while line := await reader.readline():
                text = line.decode().removesuffix("\n")
                commands.append(text)
                argv = asterisk_argv(text)
                if [word.upper() for word in argv[:2]] == ["SET", "VARIABLE"] and len(argv) == 4:
                    variables[argv[2]] = argv[3]
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
        return AgiSession(commands, variables, time.monotonic() - sent)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closed (EOF or reset) without sending anything."""
    try:
        async with asyncio.timeout(TIMEOUT):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True


async def eventually(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"not within {TIMEOUT} s: {what}")


# -- decisions -----------------------------------------------------------------


class Recorder:
    """A decision that answers from a fixed mapping and keeps the requests it saw."""

    def __init__(self, answer: Mapping[str, str] = ANSWER) -> None:
        self.answer = answer
        self.requests: list[AgiRequest] = []

    async def __call__(self, request: AgiRequest) -> Mapping[str, str]:
        self.requests.append(request)
        return self.answer


class SlowLookup:
    """A lookup that never finishes (a store stuck on a lock): waits for an event nobody sets."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self._never = asyncio.Event()

    async def __call__(self, request: AgiRequest) -> Mapping[str, str]:
        self.started += 1
        try:
            await self._never.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return ANSWER


async def store_down(request: AgiRequest) -> Mapping[str, str]:
    raise RuntimeError("store is down")


class Start(Protocol):
    async def __call__(self, decide: Decide, **settings: Any) -> FastAgiServer: ...


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[FastAgiServer] = []

    async def _start(decide: Decide, **settings: Any) -> FastAgiServer:
        server = FastAgiServer(decide, port=0, **settings)
        await server.start()
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.close()


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# -- decisions delivered ---------------------------------------------------------------


async def test_sets_each_decided_variable_quoted_as_asterisk_reads_it(start: Start) -> None:
    decide = Recorder()
    server = await start(decide)

    session = await agi_call(server.port)

    assert session.variables == ANSWER
    assert list(session.variables) == list(ANSWER)  # in the decision's order
    assert session.commands[0] == 'SET VARIABLE ROUTE "PJSIP/103"'
    name_command = 'SET VARIABLE CONTACT_NAME "Иван \\"Ваня\\" Петров \\\\ ООО Ромашка"'
    assert name_command in session.commands
    [request] = decide.requests
    assert (request.script, request.args, request.caller) == ("route", (DID, CALLER), CALLER)
    assert (request.channel, request.uniqueid) == ("PJSIP/trunk-0000001c", "1795736527.30")
    assert request.headers["agi_network"] == "yes"
    assert request.headers["agi_accountcode"] == ""
    assert request.headers["agi_request"] == f"agi://127.0.0.1:{server.port}/route"
    stats = server.stats
    assert (stats.requests, stats.decided, stats.completed, stats.variables_set) == (1, 1, 1, len(ANSWER))


async def test_unknown_caller_gets_an_empty_decision_and_nothing_is_set(start: Start) -> None:
    decide = Recorder({})
    server = await start(decide)

    session = await agi_call(server.port, caller="unknown", args=(DID, ""))

    assert session.commands == []
    [request] = decide.requests
    assert request.caller is None
    assert request.args == (DID, "")
    assert (server.stats.decided, server.stats.completed) == (1, 1)


async def test_script_query_string_is_not_part_of_the_script_name(start: Start) -> None:
    decide = Recorder()
    server = await start(decide)

    session = await agi_call(server.port, script="route?shop=b")

    assert session.variables == ANSWER
    assert decide.requests[0].script == "route"
    assert decide.requests[0].headers["agi_network_script"] == "route?shop=b"


# -- nothing set: the dialplan falls back -----------------------------------------------


async def test_late_decision_sets_nothing_and_closes_soon_after_the_deadline(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    decide = SlowLookup()
    server = await start(decide, deadline=0.2)

    session = await agi_call(server.port)

    assert session.commands == []
    assert session.closed_after < 0.2 + 1.0
    assert (decide.started, decide.cancelled) == (1, 1)  # the lookup does not linger
    assert (server.stats.late, server.stats.decided, server.stats.completed) == (1, 0, 0)
    [warning] = warnings_in(caplog)
    assert "no decision within" in warning.getMessage() and "1795736527.30" in warning.getMessage()


async def test_failing_decision_sets_nothing_and_says_why(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    server = await start(store_down)

    first = await agi_call(server.port)
    second = await agi_call(server.port, uniqueid="1795736527.40")

    assert first.commands == [] and second.commands == []
    assert server.stats.failed == 2
    warnings = warnings_in(caplog)
    assert len(warnings) == 2
    assert all("store is down" in w.getMessage() for w in warnings)
    assert warnings[0].exc_info is not None and not warnings[1].exc_info  # one traceback per kind


async def test_own_timeout_inside_decide_is_a_failure_not_a_late_decision(start: Start) -> None:
    async def store_timeout(request: AgiRequest) -> Mapping[str, str]:
        raise TimeoutError("store query timed out")

    server = await start(store_timeout)

    assert (await agi_call(server.port)).commands == []
    assert (server.stats.failed, server.stats.late) == (1, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"CONTACT_NAME": "Ivan\nSET VARIABLE ROUTE PJSIP/666"},
        {"CONTACT_NAME": "Ivan\r"},
        {"SHOP": "shop\0B"},
        {"ROUTE NAME": "x"},
        {'ROUTE"': "x"},
        {"CONTACT_NAME": "x" * AGI_BUF_LEN},
        {"SHOP": 7},
    ],
    ids=["LF", "CR", "NUL", "space-in-name", "quote-in-name", "too-long", "not-str"],
)
async def test_unsafe_variable_is_left_out_and_the_others_are_set(
    start: Start, caplog: pytest.LogCaptureFixture, bad: Mapping[str, str]
) -> None:
    server = await start(Recorder({"ROUTE": "PJSIP/103", **bad, "ROUTE_REASON": "assigned_manager"}))

    session = await agi_call(server.port)

    assert session.variables == {"ROUTE": "PJSIP/103", "ROUTE_REASON": "assigned_manager"}
    assert len(session.commands) == 2  # no injected command, no half line
    assert (server.stats.refused_variables, server.stats.failed, server.stats.completed) == (1, 0, 1)
    [warning] = warnings_in(caplog)
    assert "not set, the others are" in warning.getMessage()


async def test_blacklist_holds_even_when_the_contact_name_is_unsafe(start: Start) -> None:
    """Refusing the whole decision over a CRM name would put a blacklisted caller through."""
    server = await start(Recorder({"ROUTE_REASON": "blacklist", "CONTACT_NAME": "Spam\r\nLtd", "SHOP": "shop B"}))

    session = await agi_call(server.port)

    assert session.variables == {"ROUTE_REASON": "blacklist", "SHOP": "shop B"}


async def test_decision_that_is_not_a_mapping_sets_nothing(start: Start) -> None:
    async def confused(request: AgiRequest) -> Mapping[str, str]:
        return [("ROUTE", "PJSIP/103")]  # type: ignore[return-value]

    server = await start(confused)

    assert (await agi_call(server.port)).commands == []
    assert (server.stats.failed, server.stats.decided) == (1, 0)


async def test_unknown_script_sets_nothing_and_is_not_decided(start: Start) -> None:
    decide = Recorder()
    server = await start(decide)

    session = await agi_call(server.port, script="billing")

    assert session.commands == []
    assert decide.requests == []
    assert server.stats.unknown_script == 1


@pytest.mark.parametrize(
    "reply",
    [b"510 Invalid or unknown command\n", b"520-Invalid command syntax.  Proper usage follows:\n", b"HANGUP\n"],
    ids=["510", "520", "HANGUP"],
)
async def test_refused_command_or_hangup_ends_quietly(
    start: Start, caplog: pytest.LogCaptureFixture, reply: bytes
) -> None:
    server = await start(Recorder())

    session = await agi_call(server.port, reply=reply)

    assert session.commands == ['SET VARIABLE ROUTE "PJSIP/103"']  # nothing sent after the refusal
    assert (server.stats.command_errors, server.stats.completed) == (1, 0)
    assert warnings_in(caplog) == []


async def test_silent_asterisk_after_a_command_is_left_after_command_timeout(start: Start) -> None:
    server = await start(Recorder(), command_timeout=0.2)

    session = await agi_call(server.port, reply=None)

    assert session.commands == ['SET VARIABLE ROUTE "PJSIP/103"']
    assert session.closed_after < 0.2 + 1.0
    assert server.stats.command_errors == 1


# -- hostile or broken clients ---------------------------------------------------------


# panoramisk 1.4's handler, given these clients, never yields again (read() at
# EOF returns b"" without suspending) and freezes the whole loop: no asyncio
# timeout can fire and a signal only kills one of the spinning tasks, so the
# thread method of pytest-timeout ends the run with every stack dumped instead
# of hanging. A spin that does yield is caught by the CPU measurement.
@pytest.mark.timeout(20, method="thread")
async def test_clients_closing_mid_headers_do_not_make_the_server_spin(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that leaves before the blank line ends its connection, and nothing keeps running."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = await start(Recorder())
    partial = environment(server.port)[:200]  # well before the blank line

    async def leave_mid_headers(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(partial)
        await writer.drain()
        if number % 2:
            writer.transport.abort()  # gone without a FIN
        else:
            writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    await asyncio.gather(*(leave_mid_headers(n) for n in range(50)))
    await eventually(
        lambda: server.stats.incomplete_headers == 50 and server.active_connections == 0, "all 50 noticed and closed"
    )

    cpu_before = time.process_time()
    await asyncio.sleep(1.0)
    cpu_used = time.process_time() - cpu_before

    assert cpu_used < 0.5, f"{cpu_used:.2f} s of CPU in 1 s of idling: the server spins"
    assert len(warnings_in(caplog)) == 1  # logged once, then quietly
    assert (await agi_call(server.port)).variables == ANSWER


async def test_one_megabyte_header_line_is_refused_with_bounded_memory(start: Start) -> None:
    server = await start(Recorder(), max_header_bytes=16 * 1024)
    payload = b"agi_network: yes\nagi_network_script: route\nagi_request: " + b"x" * (1024 * 1024)  # no LF
    loop = asyncio.get_running_loop()

    tracemalloc.start()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(TIMEOUT):
                await loop.sock_connect(sock, ("127.0.0.1", server.port))
                # The server hangs up after max_header_bytes; whether we notice
                # while sending or only when reading depends on kernel buffers.
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    await loop.sock_sendall(sock, payload)
                    while await loop.sock_recv(sock, 4096):
                        pass
        finally:
            sock.close()
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert server.stats.refused_headers == 1
    # What the server held is one socket read (asyncio reads up to 256 KiB at
    # a time), not the line: the same peak for 8 MB.
    assert peak < 512 * 1024, f"{peak} bytes allocated while refusing a 1 MB header"
    assert (await agi_call(server.port)).variables == ANSWER


@pytest.mark.parametrize(
    "junk",
    [b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64)],
    ids=["http", "tls-hello"],
)
async def test_garbage_is_refused_at_once_and_the_next_client_is_served(start: Start, junk: bytes) -> None:
    decide = Recorder()
    # header_timeout beyond the client's patience: only an immediate refusal passes.
    server = await start(decide, header_timeout=60.0)

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(junk)
        await writer.drain()
        assert await closed_by_server(reader)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    assert server.stats.refused_headers == 1
    assert decide.requests == []
    assert (await agi_call(server.port)).variables == ANSWER


async def test_client_silent_mid_headers_is_dropped_after_header_timeout(start: Start) -> None:
    server = await start(Recorder(), header_timeout=0.2)

    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(environment(server.port)[:100])
        await writer.drain()
        began = time.monotonic()
        assert await closed_by_server(reader)
        assert time.monotonic() - began < 0.2 + 1.0
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    assert server.stats.incomplete_headers == 1


# -- load ---------------------------------------------------------------------------


async def test_connections_beyond_the_limit_are_closed_at_once(start: Start) -> None:
    server = await start(Recorder(), max_connections=2)
    holders = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(2)]
    try:
        for _reader, writer in holders:
            writer.write(b"agi_network: yes\n")  # and then nothing: both stay open
            await writer.drain()
        await eventually(lambda: server.active_connections == 2, "two connections held")

        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            assert await closed_by_server(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert server.stats.refused_busy == 1
    finally:
        for _reader, writer in holders:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await eventually(lambda: server.active_connections == 0, "holders gone")
    assert (await agi_call(server.port)).variables == ANSWER


async def test_hundred_concurrent_requests_are_all_answered(start: Start) -> None:
    in_flight = 0
    most_in_flight = 0

    async def by_caller(request: AgiRequest) -> Mapping[str, str]:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        try:
            await asyncio.sleep(0.05)  # a lookup that takes a while
        finally:
            in_flight -= 1
        return {"ROUTE": f"PJSIP/{request.args[1][-3:]}", "ROUTE_REASON": "assigned_manager"}

    server = await start(by_caller)
    callers = [f"+79161110{n:03d}" for n in range(100)]

    sessions = await asyncio.gather(
        *(
            agi_call(server.port, caller=caller, args=(DID, caller), uniqueid=f"1795736527.{n}")
            for n, caller in enumerate(callers)
        )
    )

    for caller, session in zip(callers, sessions, strict=True):
        assert session.variables == {"ROUTE": f"PJSIP/{caller[-3:]}", "ROUTE_REASON": "assigned_manager"}
    assert most_in_flight > 1  # served side by side, not one after another
    assert (server.stats.completed, server.stats.variables_set) == (100, 200)


# -- lifecycle ------------------------------------------------------------------------


async def test_close_drops_open_connections_and_cancels_pending_decisions() -> None:
    decide = SlowLookup()
    server = FastAgiServer(decide, port=0, deadline=30.0)
    async with server:
        waiting = asyncio.create_task(agi_call(server.port))
        await eventually(lambda: decide.started == 1, "decision pending")
        began = time.monotonic()
    assert time.monotonic() - began < 1.0
    session = await waiting
    assert session.commands == []
    assert decide.cancelled == 1
    assert server.active_connections == 0


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("deadline", 0.0),
        ("header_timeout", -1.0),
        ("command_timeout", 0.0),
        ("max_header_bytes", 10),
        ("max_connections", 0),
    ],
)
def test_bad_settings_name_the_setting(setting: str, value: float) -> None:
    settings: dict[str, Any] = {setting: value}
    with pytest.raises(ValueError, match=setting):
        FastAgiServer(Recorder(), **settings)


def test_asterisk_argv_matches_res_agi_parse_args() -> None:
    """The test client's own parser, checked on cases res_agi documents by its code."""
    assert asterisk_argv('SET VARIABLE ROUTE "PJSIP/103"') == ["SET", "VARIABLE", "ROUTE", "PJSIP/103"]
    assert asterisk_argv('SET VARIABLE X ""') == ["SET", "VARIABLE", "X", ""]
    assert asterisk_argv('SET VARIABLE X "a \\"b\\" \\\\ c"') == ["SET", "VARIABLE", "X", 'a "b" \\ c']
    assert asterisk_argv("SET VARIABLE ROUTE PJSIP/103") == ["SET", "VARIABLE", "ROUTE", "PJSIP/103"]
