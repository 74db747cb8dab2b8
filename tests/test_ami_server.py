"""AmiServer against a raw asyncio TCP client that parses with the project's codec.

The expected answers are those of the real Asterisk 22 in ``captures/asterisk-22``.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.ami.codec import AmiCodec, AmiMessage, encode_action
from connectors.ami.server import AmiServer, capture_stream, encode_message

CAPTURES = Path(__file__).parent / "captures" / "asterisk-22"
TIMEOUT = 5.0


class Client:
    """A bare AMI client: bytes over TCP, parsed with AmiCodec, no project logic."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, drop: frozenset[str]) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = AmiCodec(drop_events=drop)
        self._seq = 0

    @classmethod
    async def connect(
        cls, port: int, *, drop: frozenset[str] = frozenset(), rcvbuf: int | None = None
    ) -> Client:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer, drop)

    async def read(self, timeout: float = TIMEOUT) -> AmiMessage:
        async def next_message() -> AmiMessage:
            while (msg := self.codec.next_message()) is None:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.codec.receive_data(data)
            return msg

        return await asyncio.wait_for(next_message(), timeout)

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        """True once the server closes the socket (after any pending messages)."""

        async def wait_eof() -> bool:
            while await self.reader.read(65536):
                pass
            return True

        return await asyncio.wait_for(wait_eof(), timeout)

    def send(self, action: str, headers: dict[str, str | list[str]] | None = None) -> str:
        self._seq += 1
        action_id = f"t-{self._seq}"
        self.writer.write(encode_action(action, action_id, headers))
        return action_id

    async def login(self, username: str = "gateway", secret: str = "gateway-secret", events: str = "on") -> list[AmiMessage]:
        banner = await self.read()
        assert banner == {"Banner": "Asterisk Call Manager/11.0.0"}
        action_id = self.send("Login", {"Username": username, "Secret": secret, "Events": events})
        response = await self.read()
        assert response == {"Response": "Success", "ActionID": action_id, "Message": "Authentication accepted"}
        if events == "off":
            return [response]
        return [response, await self.read(), await self.read()]

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def capture_messages(name: str) -> list[AmiMessage]:
    """The messages of a capture's .jsonl that the server sent, without metadata."""
    out = []
    for line in (CAPTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["_dir"] != "in":
            continue
        msg = {k: v for k, v in record.items() if not k.startswith("_")}
        if msg:
            out.append(msg)
    return out


@pytest.fixture
async def server() -> AsyncIterator[AmiServer]:
    async with AmiServer(failed_login_delay=0) as srv:
        yield srv


async def test_banner_first(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    assert await client.read() == {"Banner": "Asterisk Call Manager/11.0.0"}
    assert server.clients == 1
    await client.close()


async def test_login_answers_like_asterisk_then_fully_booted(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    response, booted, auth = await client.login()
    captured = capture_messages("a_answered")
    assert list(booted) == list(captured[1])  # FullyBooted: same headers, same order
    assert booted["Status"] == "Fully Booted"
    assert list(auth) == list(captured[2])  # SuccessfulAuth
    assert auth["AccountID"] == "gateway"
    await server.wait_for_login(timeout=1.0)
    assert server.actions[0]["Action"] == "Login"
    await client.close()


async def test_bad_credentials_get_error_and_the_socket_closes(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.read()
    action_id = client.send("Login", {"Username": "gateway", "Secret": "wrong", "Events": "on"})
    assert await client.read() == {"Response": "Error", "ActionID": action_id, "Message": "Authentication failed"}
    assert await client.closed_by_server()
    with pytest.raises(TimeoutError):
        await server.wait_for_login(timeout=0.05)
    await client.close()


async def test_action_before_login_is_denied_and_the_session_stays(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.read()
    action_id = client.send("CoreShowChannels")
    reply = await client.read()
    # As in auth_nologin: same headers, same order.
    assert list(reply) == list(capture_messages("auth_nologin")[0])
    assert reply == {"Response": "Error", "ActionID": action_id, "Message": "Permission denied"}
    action_id = client.send("Login", {"Username": "gateway", "Secret": "gateway-secret", "Events": "on"})
    assert (await client.read())["Message"] == "Authentication accepted"
    await client.close()


async def test_ping_pong(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.login()
    action_id = client.send("Ping")
    reply = await client.read()
    assert list(reply) == ["Response", "ActionID", "Ping", "Timestamp"]
    assert reply["ActionID"] == action_id and reply["Ping"] == "Pong"
    assert isinstance(reply["Timestamp"], str)
    float(reply["Timestamp"])
    await client.close()


async def test_core_show_channels_is_an_empty_list(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.login()
    action_id = client.send("CoreShowChannels")
    assert await client.read() == {
        "Response": "Success",
        "ActionID": action_id,
        "EventList": "start",
        "Message": "Channels will follow",
    }
    assert await client.read() == {
        "Event": "CoreShowChannelsComplete",
        "ActionID": action_id,
        "EventList": "Complete",
        "ListItems": "0",
    }
    await client.close()


async def test_originate_is_queued_and_recorded(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.login()
    headers: dict[str, str | list[str]] = {
        "Channel": "PJSIP/101",
        "Context": "click-to-call",
        "Exten": "+79161110007",
        "Priority": "1",
        "Async": "true",
        "ChannelId": "c2c-1",
        "Variable": ["OUTCID=+74950000002", "__C2C_REQUEST=req-42"],
    }
    action_id = client.send("Originate", headers)
    assert await client.read() == {
        "Response": "Success",
        "ActionID": action_id,
        "Message": "Originate successfully queued",
    }
    assert len(server.originates) == 1
    assert server.originates[0]["Variable"] == ["OUTCID=+74950000002", "__C2C_REQUEST=req-42"]
    assert server.originates[0]["ChannelId"] == "c2c-1"
    await client.close()


async def test_read_only_user_cannot_originate() -> None:
    async with AmiServer(username="readonly", secret="readonly-secret", write_allowed=False) as srv:
        client = await Client.connect(srv.port)
        await client.login("readonly", "readonly-secret")
        action_id = client.send("Originate", {"Channel": "PJSIP/101", "Application": "Echo"})
        reply = await client.read()
        captured = capture_messages("auth_readonly")
        assert reply == {"Response": "Error", "ActionID": action_id, "Message": "Permission denied"}
        event = await client.read()
        assert list(event) == list(captured[4])  # RequestNotAllowed, as captured
        assert event["RequestType"] == "Action: Originate"
        client.send("Ping")
        assert (await client.read())["Ping"] == "Pong"
        action_id = client.send("Command", {"Command": "core show uptime"})
        assert await client.read() == {"Response": "Error", "ActionID": action_id, "Message": "Permission denied"}
        assert (await client.read())["RequestType"] == "Action: Command"
        assert len(srv.originates) == 1  # received, refused, never placed
        await client.close()


async def test_unknown_action(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.login()
    action_id = client.send("NoSuchThing")
    assert await client.read() == {"Response": "Error", "ActionID": action_id, "Message": "Invalid/unknown command"}
    await client.close()


async def test_logoff_says_goodbye_and_closes(server: AmiServer) -> None:
    client = await Client.connect(server.port)
    await client.login()
    action_id = client.send("Logoff")
    reply = await client.read()
    assert reply == {"Response": "Goodbye", "ActionID": action_id, "Message": "Thanks for all the fish."}
    assert await client.closed_by_server()
    await client.close()


async def test_action_handlers_are_case_insensitive_and_get_the_action_id(server: AmiServer) -> None:
    seen: list[AmiMessage] = []

    def redirect(action: AmiMessage) -> list[AmiMessage]:
        seen.append(action)
        return [{"Response": "Success", "Message": "Redirect successful"}]

    server.action_handlers["Redirect"] = redirect
    client = await Client.connect(server.port)
    await client.login()
    action_id = client.send("redirect", {"Channel": "PJSIP/trunk-00000001", "Exten": "102"})
    assert await client.read() == {"Response": "Success", "ActionID": action_id, "Message": "Redirect successful"}
    assert seen[0]["Channel"] == "PJSIP/trunk-00000001"
    await client.close()


async def test_events_off_gets_no_events(server: AmiServer) -> None:
    quiet = await Client.connect(server.port)
    await quiet.login(events="off")
    loud = await Client.connect(server.port)
    await loud.login()
    await server.send_event({"Event": "UserEvent", "UserEvent": "hello"})
    assert (await loud.read())["UserEvent"] == "hello"
    quiet.send("Ping")
    assert (await quiet.read())["Ping"] == "Pong"  # the event never came before the answer
    await quiet.close()
    await loud.close()


@pytest.mark.parametrize(
    "name",
    sorted(p.stem for p in CAPTURES.glob("*.ami") if not p.stem.startswith("auth_failed")),
)
async def test_capture_replay_reaches_the_client_unchanged(server: AmiServer, name: str) -> None:
    client = await Client.connect(server.port)
    await client.login()
    data = capture_stream(CAPTURES / f"{name}.ami")
    assert b"Response:" not in data.split(b"\r\n\r\n")[0][:9]
    await server.send_raw(data)
    expected = [m for m in capture_messages(name) if "Event" in m]
    received = [await client.read() for _ in expected]
    assert received == expected
    # Header order too: the replay is byte for byte.
    assert [list(m) for m in received] == [list(m) for m in expected]
    await client.close()


def test_capture_stream_drops_banner_and_responses() -> None:
    data = capture_stream(CAPTURES / "auth_readonly.ami")
    assert not data.startswith(b"Asterisk Call Manager")
    chunks = [c for c in data.split(b"\r\n\r\n") if c]
    assert [c.split(b"\r\n", 1)[0] for c in chunks] == [
        b"Event: FullyBooted",
        b"Event: SuccessfulAuth",
        b"Event: RequestNotAllowed",
        b"Event: RequestNotAllowed",
    ]
    assert data.endswith(b"\r\n\r\n")
    assert capture_stream(CAPTURES / "auth_failed_login.ami") == b""


async def test_two_clients_both_get_events(server: AmiServer) -> None:
    first = await Client.connect(server.port)
    second = await Client.connect(server.port)
    await first.login()
    await second.login()
    assert server.clients == 2
    # Like Asterisk, a session with events on sees the others' security events.
    other = await first.read()
    assert other["Event"] == "SuccessfulAuth" and other["RemoteAddress"] != ""
    messages: list[AmiMessage] = [
        {"Event": "UserEvent", "UserEvent": f"n{i}", "Name": "Иван Петров", "ChanVariable": ["DID=+74950000001", "X="]}
        for i in range(20)
    ]
    await server.play(((0.0, m) for m in messages), speed=0)
    assert [await first.read() for _ in messages] == messages
    assert [await second.read() for _ in messages] == messages
    await first.close()
    await second.close()


async def test_a_client_that_never_reads_is_dropped_without_blocking_others() -> None:
    # write_timeout shrunk through settings: the stuck client is dropped after 0.5 s.
    async with AmiServer(failed_login_delay=0, max_queue_bytes=256 * 1024, write_timeout=0.5) as srv:
        stuck = await Client.connect(srv.port, rcvbuf=4096)
        await stuck.login()
        reader = await Client.connect(srv.port)
        await reader.login()
        assert srv.clients == 2
        payload = "x" * 2000
        total = 4000  # ~8 MB: more than kernel buffers and the queue limit hold

        async def produce() -> None:
            for i in range(total):
                await srv.send_event({"Event": "UserEvent", "UserEvent": str(i), "Payload": payload})

        async def consume() -> int:
            got = 0
            while got < total:
                msg = await reader.read()
                assert msg["UserEvent"] == str(got)
                got += 1
            return got

        _, got = await asyncio.wait_for(asyncio.gather(produce(), consume()), 60)
        assert got == total
        assert srv.clients == 1  # the stuck client was dropped
        await stuck.close()
        await reader.close()


async def test_close_with_clients_connected() -> None:
    srv = AmiServer(failed_login_delay=0)
    await srv.start()
    client = await Client.connect(srv.port)
    await client.login()
    await asyncio.wait_for(srv.close(), TIMEOUT)
    assert await client.closed_by_server()
    await client.close()


def test_encode_message_refuses_line_breaks() -> None:
    assert encode_message({"Event": "X", "ChanVariable": ["A=1", "B="]}) == (
        b"Event: X\r\nChanVariable: A=1\r\nChanVariable: B=\r\n\r\n"
    )
    with pytest.raises(ValueError):
        encode_message({"Event": "X", "Value": "a\r\nEvent: Forged"})
    with pytest.raises(ValueError):
        encode_message({"Event": "X", "ChanVariable": ["ok", "bad\n"]})
    with pytest.raises(ValueError):
        encode_message({"Bad: key": "v"})
