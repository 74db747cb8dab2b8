"""AMI codec: framing and parsing checked against real Asterisk 22 captures.

The ``.ami`` files are the raw bytes the server sent; the ``.jsonl`` files hold the
same messages as the capture tool read them (``_dir: in``) and the actions the
client sent (``_dir: out``, also raw in ``.sent``). Framing is tested whole, split
at every byte offset, byte by byte and in random chunks (h11's tests/test_io.py).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

from connectors.ami.codec import DEFAULT_DROPPED_EVENTS, AmiCodec, AmiMessage, encode_action

CAPTURES = Path(__file__).parent / "captures" / "asterisk-22"
AMI_FILES = sorted(CAPTURES.glob("*.ami"))
NOTHING_DROPPED: frozenset[str] = frozenset()
LOGGER = "connectors.ami.codec"


def feed(codec: AmiCodec, pieces: Iterable[bytes], *, eof: bool = True) -> list[AmiMessage]:
    """Feed pieces the way the link does (drain after every read), then EOF."""
    out: list[AmiMessage] = []
    for piece in pieces:
        if not piece:
            continue  # b"" would mean EOF
        codec.receive_data(piece)
        out.extend(codec.messages())
    if eof:
        codec.receive_data(b"")
        out.extend(codec.messages())
    return out


def parse(data: bytes, drop_events: frozenset[str] = DEFAULT_DROPPED_EVENTS) -> list[AmiMessage]:
    return feed(AmiCodec(drop_events=drop_events), [data])


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@cache
def capture(name: str) -> bytes:
    return (CAPTURES / f"{name}.ami").read_bytes()


@cache
def expected_in(name: str) -> list[AmiMessage]:
    """The server's messages as the capture tool recorded them.

    The tool recorded the banner as a metadata-only line ``{"_banner": ...}``; the
    codec yields it as ``{"Banner": ...}``. Every other ``in`` line is a message
    once the ``_`` metadata keys are removed.
    """
    out: list[AmiMessage] = []
    for line in (CAPTURES / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["_dir"] != "in":
            continue
        if "_banner" in record:
            out.append({"Banner": record["_banner"]})
        else:
            out.append({k: v for k, v in record.items() if not k.startswith("_")})
    return out


def full(name: str) -> list[AmiMessage]:
    return parse(capture(name), drop_events=NOTHING_DROPPED)


def message_ends(data: bytes) -> list[int]:
    """Offsets where each frame of a CRLF capture ends: 0, the banner, every message."""
    ends = [0, data.index(b"\r\n") + 2]
    while (i := data.find(b"\r\n\r\n", ends[-1])) >= 0:
        ends.append(i + 4)
    assert ends[-1] == len(data)
    return ends


# --- whole captures -------------------------------------------------------------


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.stem)
def test_capture_parses_to_what_the_capture_tool_recorded(path: Path) -> None:
    codec = AmiCodec(drop_events=NOTHING_DROPPED)
    got = feed(codec, [capture(path.stem)])
    assert got == expected_in(path.stem)
    assert got[0] == {"Banner": "Asterisk Call Manager/11.0.0"}
    assert (codec.skipped, codec.dropped, codec.pending_bytes) == (0, 0, 0)


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.stem)
def test_default_drop_filter_removes_exactly_the_unused_events(path: Path) -> None:
    everything = expected_in(path.stem)
    codec = AmiCodec()
    got = feed(codec, chunks(capture(path.stem), 4096))
    assert got == [m for m in everything if m.get("Event") not in DEFAULT_DROPPED_EVENTS]
    assert codec.dropped == len(everything) - len(got)
    assert codec.skipped == 0


def test_drop_filter_counts_and_keeps_device_state() -> None:
    codec = AmiCodec()
    got = feed(codec, [capture("a_answered")])
    events = [m.get("Event") for m in got]
    # COUNTS.md: VarSet 65, Newexten 18, CEL 13, Cdr 1.
    assert codec.dropped == 65 + 18 + 13 + 1
    assert not {"VarSet", "Newexten", "CEL", "Cdr"} & set(events)
    assert events.count("DeviceStateChange") == 6
    assert "DeviceStateChange" not in DEFAULT_DROPPED_EVENTS


def test_custom_drop_set() -> None:
    codec = AmiCodec(drop_events=frozenset({"Newchannel", "Hangup"}))
    got = feed(codec, [capture("a_answered")])
    assert codec.dropped == 4
    assert [m for m in got if m.get("Event") in ("Newchannel", "Hangup")] == []
    assert sum(1 for m in got if m.get("Event") == "VarSet") == 65


def test_drop_filter_also_catches_an_unusual_spelling() -> None:
    # The byte filter looks for "Event: "; a message it misses is dropped after parsing.
    codec = AmiCodec()
    got = feed(codec, [b"Event:VarSet\r\nValue: x\r\n\r\nEvent: Hangup\r\n\r\n"])
    assert got == [{"Event": "Hangup"}]
    assert codec.dropped == 1


# --- keep_events ------------------------------------------------------------------

KEEP = frozenset({"Newchannel", "Newstate", "Hangup", "QueueCallerJoin"})


def kept(messages: list[AmiMessage], keep: frozenset[str]) -> list[AmiMessage]:
    """What keep_events lets through: the banner, Responses, Actions, the events named."""
    return [m for m in messages if next(iter(m)) != "Event" or m["Event"] in keep]


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.stem)
def test_keep_events_keeps_exactly_the_named_events(path: Path) -> None:
    everything = expected_in(path.stem)
    codec = AmiCodec(keep_events=KEEP)
    got = feed(codec, chunks(capture(path.stem), 4096))
    assert got == kept(everything, KEEP)
    assert codec.dropped == len(everything) - len(got)
    assert codec.skipped == 0


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.stem)
def test_keep_events_in_random_chunks(path: Path) -> None:
    data = capture(path.stem)
    want = kept(expected_in(path.stem), KEEP)
    rng = random.Random(path.stem)
    for _ in range(10):
        pieces: list[bytes] = []
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 3, 5, rng.randint(1, 600), rng.randint(1, 9000)))
            pieces.append(data[i : i + n])
            i += n
        assert feed(AmiCodec(keep_events=KEEP), pieces) == want


def test_keep_events_drops_an_event_outside_it_and_counts_it() -> None:
    codec = AmiCodec(keep_events=frozenset({"Hangup"}))
    got = feed(
        codec,
        [
            b"Event: VarSet\r\nVariable: X\r\nValue: 1\r\n\r\n"
            b"Event: DeviceStateChange\r\nDevice: PJSIP/101\r\nState: INUSE\r\n\r\n"
            b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
        ],
    )
    assert got == [{"Event": "Hangup", "Uniqueid": "1.1"}]
    assert (codec.dropped, codec.skipped) == (2, 0)


def test_keep_events_always_keeps_responses_and_actions() -> None:
    codec = AmiCodec(keep_events=frozenset({"Hangup"}))
    data = (
        b"Response: Success\r\nActionID: p-1\r\nPing: Pong\r\n\r\n"
        # A Response that names an event is still the answer to an action.
        b"Response: Success\r\nActionID: s-1\r\nEvent: VarSet\r\n\r\n"
        b"Action: Ping\r\nActionID: p-2\r\n\r\n"
        b"Event: Newexten\r\nActionID: p-3\r\n\r\n"
    )
    assert feed(codec, chunks(data, 7)) == [
        {"Response": "Success", "ActionID": "p-1", "Ping": "Pong"},
        {"Response": "Success", "ActionID": "s-1", "Event": "VarSet"},
        {"Action": "Ping", "ActionID": "p-2"},
    ]
    assert codec.dropped == 1


def test_keep_events_kept_event_parses_whole() -> None:
    hangup = next(m for m in expected_in("a_answered") if m.get("Event") == "Hangup")
    assert isinstance(hangup["ChanVariable"], list)  # the repeated header, in order
    got = feed(AmiCodec(keep_events=frozenset({"Hangup"})), [capture("a_answered")])
    events = [m for m in got if "Event" in m]
    assert [m["Event"] for m in events] == ["Hangup"] * 2
    assert events[0] == hangup


def test_keep_events_catches_an_unusual_spelling() -> None:
    codec = AmiCodec(keep_events=frozenset({"Hangup"}))
    got = feed(codec, [b"Event:VarSet\r\nValue: x\r\n\r\nEvent:Hangup\r\nCause: 16\r\n\r\n"])
    assert got == [{"Event": "Hangup", "Cause": "16"}]
    assert (codec.dropped, codec.skipped) == (1, 0)


def test_keep_events_on_an_lf_only_stream() -> None:
    crlf = capture("a_answered")
    lf = crlf.replace(b"\r\n", b"\n")
    want = feed(AmiCodec(keep_events=KEEP), [crlf])
    assert feed(AmiCodec(keep_events=KEEP), chunks(lf, 5)) == want


def test_keep_events_empty_keeps_no_event() -> None:
    codec = AmiCodec(keep_events=frozenset())
    got = feed(codec, [capture("register")])
    assert got == [m for m in expected_in("register") if "Event" not in m]
    assert codec.dropped == sum(1 for m in expected_in("register") if "Event" in m)


def test_many_event_names_are_all_judged_right() -> None:
    # The codec remembers the verdict for at most 1000 first lines per side; the
    # filter stays exact for names seen after that.
    names = [f"E{i}" for i in range(2500)]
    keep = frozenset(names[::3])
    data = b"".join(b"Event: %s\r\nN: %d\r\n\r\n" % (n.encode(), i) for i, n in enumerate(names * 2))
    codec = AmiCodec(keep_events=keep)
    got = feed(codec, chunks(data, 65536))
    assert [m["Event"] for m in got] == [n for n in names * 2 if n in keep]
    assert codec.dropped == 2 * (len(names) - len(keep))
    codec = AmiCodec(drop_events=frozenset(names[1::2]))
    got = feed(codec, chunks(data, 65536))
    assert [m["Event"] for m in got] == names[::2] * 2


def test_keep_events_loses_nothing_the_normaliser_reads() -> None:
    # What the live service does: keep only the events the normaliser handles.
    from connectors.ami.normalise import AmiNormaliser

    handled = AmiNormaliser.HANDLED_EVENTS
    for path in AMI_FILES:
        events = []
        for codec in (AmiCodec(drop_events=NOTHING_DROPPED), AmiCodec(keep_events=handled)):
            normaliser = AmiNormaliser()
            events.append(
                [e for m in feed(codec, chunks(capture(path.stem), 4096)) for e in normaliser.normalise(m, 0.0)]
            )
        assert events[0] == events[1], path.stem


def test_repeated_headers_are_lists_in_order() -> None:
    hangup = next(m for m in parse(capture("a_answered")) if m.get("Event") == "Hangup")
    variables = hangup["ChanVariable"]
    assert isinstance(variables, list) and len(variables) > 1
    assert hangup == next(m for m in expected_in("a_answered") if m.get("Event") == "Hangup")
    got = parse(b"Action: Originate\r\nVariable: A=1\r\nChannel: x\r\nVariable: B=2\r\n\r\n")
    assert got == [{"Action": "Originate", "Variable": ["A=1", "B=2"], "Channel": "x"}]


def test_bare_lf_inside_a_crlf_value_is_kept() -> None:
    # Asterisk 22 sends this for PJSIPShowContacts with no contacts (register.ami):
    # the value ends in LF and the message in CRLF CRLF; it is one message, not two.
    response = b"Response: Error\r\nActionID: register-2\r\nMessage: No Contacts found\n\r\n\r\n"
    assert response in capture("register")
    codec = AmiCodec()
    assert feed(codec, [response, b"Event: ContactStatus\r\n\r\n"]) == [
        {"Response": "Error", "ActionID": "register-2", "Message": "No Contacts found\n"},
        {"Event": "ContactStatus"},
    ]
    assert codec.skipped == 0


# --- split reads ------------------------------------------------------------------


def test_a_answered_split_in_two_at_every_offset() -> None:
    # Each offset is tested with the message it falls in and one message on either
    # side (the stream start, banner included, for the first ones), so the codec has
    # consumed bytes before the split and has bytes after it, as in the whole
    # stream; re-parsing 68 kB for each of 68,000 offsets would take minutes.
    data = capture("a_answered")
    expected = full("a_answered")
    ends = message_ends(data)
    assert len(ends) - 1 == len(expected)
    for i in range(len(expected)):
        lo = ends[max(i - 1, 0)]
        hi = ends[min(i + 2, len(expected))]
        window = data[lo:hi]
        want = expected[max(i - 1, 0) : i + 2]
        for k in range(ends[i] - lo, ends[i + 1] - lo):
            got = feed(AmiCodec(drop_events=NOTHING_DROPPED), [window[:k], window[k:]])
            assert got == want, (i, lo + k)


@pytest.mark.parametrize("name", ["register", "auth_readonly", "restart"])
def test_small_captures_split_in_two_at_every_offset(name: str) -> None:
    data = capture(name)
    expected = full(name)
    for k in range(len(data) + 1):
        codec = AmiCodec(drop_events=NOTHING_DROPPED)
        assert feed(codec, [data[:k], data[k:]]) == expected, k
        assert codec.skipped == 0


def test_a_answered_byte_by_byte() -> None:
    data = capture("a_answered")
    codec = AmiCodec(drop_events=NOTHING_DROPPED)
    largest = 0
    got: list[AmiMessage] = []
    for i in range(len(data)):
        codec.receive_data(data[i : i + 1])
        got.extend(codec.messages())
        largest = max(largest, codec.pending_bytes)
    codec.receive_data(b"")
    got.extend(codec.messages())
    assert got == expected_in("a_answered")
    assert codec.skipped == 0
    assert largest < 4096  # never more than the message being received


@pytest.mark.parametrize("path", AMI_FILES, ids=lambda p: p.stem)
def test_random_chunks(path: Path) -> None:
    data = capture(path.stem)
    rng = random.Random(path.stem)
    for _ in range(20):
        pieces: list[bytes] = []
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 3, 5, rng.randint(1, 600), rng.randint(1, 9000)))
            pieces.append(data[i : i + n])
            i += n
        assert feed(AmiCodec(drop_events=NOTHING_DROPPED), pieces) == expected_in(path.stem)


def test_cyrillic_name_split_inside_a_character_arrives_whole() -> None:
    message = (
        "Event: Newchannel\r\nChannel: PJSIP/trunk-00000001\r\n"
        "CallerIDName: Иван Петров\r\nLinkedid: 1.1\r\n\r\n"
    ).encode()
    inside = [i for i in range(len(message)) if message[i] & 0xC0 == 0x80]
    assert len(inside) == 10  # one split point inside each 2-byte letter
    for k in range(len(message) + 1):
        codec = AmiCodec()
        got = feed(codec, [message[:k], message[k:]])
        assert got == [
            {
                "Event": "Newchannel",
                "Channel": "PJSIP/trunk-00000001",
                "CallerIDName": "Иван Петров",
                "Linkedid": "1.1",
            }
        ], k
        assert codec.skipped == 0


def test_trailing_partial_message_stays_pending_until_completed() -> None:
    first = b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
    second = b"Event: Newchannel\r\nUniqueid: 1.2\r\n\r\n"
    codec = AmiCodec()
    codec.receive_data(first + second[:20])
    assert codec.next_message() == {"Event": "Hangup", "Uniqueid": "1.1"}
    assert codec.next_message() is None
    assert codec.pending_bytes == 20
    codec.receive_data(second[20:-1])
    assert codec.next_message() is None
    codec.receive_data(second[-1:])
    assert codec.next_message() == {"Event": "Newchannel", "Uniqueid": "1.2"}
    assert codec.next_message() is None
    assert codec.pending_bytes == 0


# --- line endings -----------------------------------------------------------------


def test_lf_only_stream_parses_like_the_crlf_one() -> None:
    # a_answered has no bare LF inside a value, so its LF-only form means the same.
    crlf = capture("a_answered")
    lf = crlf.replace(b"\r\n", b"\n")
    assert parse(lf, drop_events=NOTHING_DROPPED) == expected_in("a_answered")
    assert feed(AmiCodec(), chunks(lf, 1)) == feed(AmiCodec(), [crlf])


def test_mixed_line_endings() -> None:
    data = (
        b"Event: A\r\nX: 1\r\n\r\n"  # CRLF
        b"Event: B\nX: 2\n\n"  # LF
        b"Event: C\r\nX: 3\r\n\n"  # CRLF lines ended by an LF blank line
        b"Event: D\nX: 4\r\n\r\n"  # LF lines ended by CRLF CRLF
        b"\r\n\n"  # stray blank lines between messages are not messages
        b"Event: E\r\nX: 5\r\n\r\n"
    )
    expected = [{"Event": e, "X": x} for e, x in zip("ABCDE", "12345")]
    assert parse(data) == expected
    for k in range(len(data) + 1):
        codec = AmiCodec()
        assert feed(codec, [data[:k], data[k:]]) == expected, k
        assert codec.skipped == 0


def test_crlf_lines_ended_by_lf_blank_lines_only() -> None:
    # A peer that ends CRLF lines with an LF blank line: its first message says so.
    data = capture("a_answered").replace(b"\r\n\r\n", b"\r\n\n")
    assert parse(data, drop_events=NOTHING_DROPPED) == expected_in("a_answered")
    assert feed(AmiCodec(), chunks(data, 1000)) == feed(AmiCodec(), [capture("a_answered")])
    small = capture("register").replace(b"\r\n\r\n", b"\r\n\n")
    for k in range(len(small) + 1):
        codec = AmiCodec(drop_events=NOTHING_DROPPED)
        assert feed(codec, [small[:k], small[k:]]) == expected_in("register"), k
        assert codec.skipped == 0


def test_double_lf_inside_a_crlf_value_stays_in_the_value() -> None:
    # Asterisk ends every line with CRLF, so once the first message (the login
    # Response) has ended with \r\n\r\n an LF blank line inside a value (a
    # dialplan variable can hold anything) is content, not the end of the
    # message, until a first line ends in a bare LF: a VarSet's value cannot
    # inject a Hangup.
    login = b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
    data = (
        login + b"Event: VarSet\r\nVariable: X\r\nValue: a\n\nEvent: Hangup\r\nUniqueid: 6.6\r\n\r\n"
        b"Event: Newstate\r\nUniqueid: 1.1\r\n\r\n"
    )
    for k in range(len(data) + 1):
        codec = AmiCodec()
        assert feed(codec, [data[:k], data[k:]])[1:] == [{"Event": "Newstate", "Uniqueid": "1.1"}], k
        assert (codec.dropped, codec.skipped) == (1, 0)
    assert parse(data, drop_events=NOTHING_DROPPED)[1] == {
        "Event": "VarSet",
        "Variable": "X",
        "Value": "a\n\nEvent: Hangup",
        "Uniqueid": "6.6",
    }


def test_value_forms() -> None:
    data = b"Event: X\r\nEmpty: \r\nBare:\r\nTight:value\r\nColons: a: b\r\nKey:b: c\r\n\r\n"
    assert parse(data) == [
        {"Event": "X", "Empty": "", "Bare": "", "Tight": "value", "Colons": "a: b", "Key": "b: c"}
    ]


# --- banner ---------------------------------------------------------------------


def test_banner_only_at_the_start_of_a_stream() -> None:
    assert parse(b"Asterisk Call Manager/11.0.0\nEvent: X\n\n") == [
        {"Banner": "Asterisk Call Manager/11.0.0"},
        {"Event": "X"},
    ]
    # No banner: a test server or a proxy may start with a message.
    assert parse(b"Event: X\r\n\r\n") == [{"Event": "X"}]
    # Later in the stream the same line is just a line without a colon.
    codec = AmiCodec()
    got = feed(codec, [b"Event: X\r\n\r\nAsterisk Call Manager/11.0.0\r\n\r\nEvent: Y\r\n\r\n"])
    assert got == [{"Event": "X"}, {"Event": "Y"}]
    assert codec.skipped == 1


def test_eof_inside_the_banner() -> None:
    codec = AmiCodec()
    assert feed(codec, [b"Asterisk Call Man"]) == []
    assert codec.skipped == 1


# --- bad input --------------------------------------------------------------------


def test_garbage_between_messages_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    codec = AmiCodec()
    data = (
        b"Event: Newchannel\r\nUniqueid: 1.1\r\n\r\n"
        b"\x00\xffgarbage no colon\r\n\r\n"
        b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
    )
    got = feed(codec, [data])
    assert got == [
        {"Event": "Newchannel", "Uniqueid": "1.1"},
        {"Event": "Hangup", "Uniqueid": "1.1"},
    ]
    assert codec.skipped == 1
    assert len(caplog.records) == 1
    assert "garbage no colon" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "bad",
    [
        b"Event: X\r\nno colon here\r\n\r\n",
        b"Event: X\r\n: empty key\r\n\r\n",
        b"Uniqueid: 1.1\r\nEvent: X\r\n\r\n",  # does not say what it is first
        b"Event: X\r\n\r\r\n\r\n",  # a line holding only \r is not blank
    ],
)
def test_malformed_message_is_skipped_whole(bad: bytes) -> None:
    codec = AmiCodec()
    got = feed(codec, [b"Event: A\r\n\r\n" + bad + b"Event: B\r\n\r\n"])
    assert got == [{"Event": "A"}, {"Event": "B"}]
    assert codec.skipped == 1


def test_invalid_utf8_is_replaced_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    codec = AmiCodec()
    got = feed(codec, [b"Event: Hangup\r\nCallerIDName: \xd0\x98\xff\xd0\r\nCause: 16\r\n\r\n"])
    assert got == [{"Event": "Hangup", "CallerIDName": "И\ufffd\ufffd", "Cause": "16"}]
    assert codec.skipped == 0
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_duplicated_event_response_and_actionid_keep_their_first_value() -> None:
    codec = AmiCodec()
    got = feed(
        codec,
        [
            b"Event: Hangup\r\nEvent: Newchannel\r\nUniqueid: 1.1\r\n\r\n"
            b"Response: Success\r\nActionID: a-1\r\nResponse: Error\r\nActionID: a-2\r\n\r\n"
        ],
    )
    assert got == [
        {"Event": "Hangup", "Uniqueid": "1.1"},
        {"Response": "Success", "ActionID": "a-1"},
    ]
    assert codec.skipped == 0


def test_megabyte_header_line_is_skipped_with_bounded_memory() -> None:
    limit = 64 * 1024
    codec = AmiCodec(max_message_bytes=limit)
    huge = b"Event: UserEvent\r\nData: " + b"x" * 1024 * 1024 + b"\r\n\r\n"
    after = b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
    got: list[AmiMessage] = []
    pending: list[int] = []
    for piece in chunks(b"Event: A\r\n\r\n" + huge + after, 4096):
        codec.receive_data(piece)
        got.extend(codec.messages())
        pending.append(codec.pending_bytes)
    assert got == [{"Event": "A"}, {"Event": "Hangup", "Uniqueid": "1.1"}]
    assert codec.skipped == 1
    assert max(pending) <= limit
    # Once the message is known to be too long, its bytes are no longer kept.
    assert max(pending[len(pending) // 2 : -1]) < 16
    assert codec.pending_bytes == 0


def test_oversized_message_in_one_read_is_skipped() -> None:
    codec = AmiCodec(max_message_bytes=100)
    got = feed(codec, [b"Event: Big\r\nData: " + b"y" * 200 + b"\r\n\r\nEvent: Small\r\n\r\n"])
    assert got == [{"Event": "Small"}]
    assert codec.skipped == 1


def test_oversized_message_ended_by_lf_and_split_terminator() -> None:
    codec = AmiCodec(max_message_bytes=100)
    data = b"Event: Big\nData: " + b"z" * 500 + b"\n\nEvent: Small\n\n"
    assert feed(codec, chunks(data, 1)) == [{"Event": "Small"}]
    assert codec.skipped == 1


def test_eof_with_a_partial_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    codec = AmiCodec()
    data = b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\nEvent: Shutdown\r\nRestart: True\r\n"
    got = feed(codec, [data])
    assert got == [{"Event": "Hangup", "Uniqueid": "1.1"}]
    assert codec.skipped == 1
    assert codec.pending_bytes == 0
    assert "Shutdown" in caplog.records[0].getMessage()
    # Blank lines before EOF are not a lost message.
    codec = AmiCodec()
    assert feed(codec, [b"Event: X\r\n\r\n\r\n\r"]) == [{"Event": "X"}]
    assert codec.skipped == 0


def test_eof_while_skipping_an_oversized_message() -> None:
    codec = AmiCodec(max_message_bytes=100)
    assert feed(codec, [b"Event: Big\r\nData: " + b"y" * 300]) == []
    assert (codec.skipped, codec.pending_bytes) == (1, 0)


def test_data_after_eof_is_a_caller_bug() -> None:
    codec = AmiCodec()
    codec.receive_data(b"")
    codec.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(RuntimeError):
        codec.receive_data(b"Event: X\r\n\r\n")


def test_repeated_errors_are_logged_once_then_every_thousandth(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    codec = AmiCodec()
    feed(codec, chunks(b"nonsense\r\n\r\n" * 2500, 4096))
    assert codec.skipped == 2500
    assert len(caplog.records) == 3
    assert "2000 so far" in caplog.records[-1].getMessage()


def test_random_bytes_never_raise_and_stay_bounded() -> None:
    rng = random.Random(7)
    alphabet = b"Event: Response:Action:\r\n\r\n\n\n:abc \xd0\x98\xff"
    for _ in range(200):
        noise = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 3000)))
        codec = AmiCodec(max_message_bytes=256)
        data = noise + b"\r\n\r\nEvent: Sentinel\r\n\r\n"
        got: list[AmiMessage] = []
        for piece in chunks(data, rng.randint(1, 700)):
            codec.receive_data(piece)
            got.extend(codec.messages())
            assert codec.pending_bytes <= 256
        assert got[-1] == {"Event": "Sentinel"}
        assert all(m.get("Event") != "Sentinel" for m in got[:-1])


# --- encode_action ----------------------------------------------------------------


def test_encode_action_bytes() -> None:
    assert encode_action("Ping", "p-1") == b"Action: Ping\r\nActionID: p-1\r\n\r\n"
    assert encode_action(
        "Setvar", "s-1", {"Channel": "PJSIP/101-00000001", "Variable": "X", "Value": ""}
    ) == (
        b"Action: Setvar\r\nActionID: s-1\r\nChannel: PJSIP/101-00000001\r\n"
        b"Variable: X\r\nValue: \r\n\r\n"
    )


@pytest.mark.parametrize("path", sorted(CAPTURES.glob("*.sent")), ids=lambda p: p.stem)
def test_encode_action_reproduces_what_the_client_sent(path: Path) -> None:
    sent = b""
    for line in path.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["_dir"] == "out":
            headers = {
                k: v
                for k, v in record.items()
                if not k.startswith("_") and k not in ("Action", "ActionID")
            }
            sent += encode_action(record["Action"], record["ActionID"], headers)
    assert sent == path.read_bytes()


def test_encode_action_round_trips_through_the_codec() -> None:
    # The codec parses actions too: the fake AMI server in the link's tests uses it.
    data = encode_action(
        "Originate",
        "c2c-7",
        {
            "Channel": "PJSIP/101",
            "CallerID": '"Иван Петров" <+79161110001>',
            "Variable": ["OUTCID=+74950000002", "__C2C_REQUEST=req-42"],
            "Async": "true",
        },
    ) + encode_action("Ping", "p-2", {"Variable": ["ONLY=1"]})
    assert feed(AmiCodec(), chunks(data, 7)) == [
        {
            "Action": "Originate",
            "ActionID": "c2c-7",
            "Channel": "PJSIP/101",
            "CallerID": '"Иван Петров" <+79161110001>',
            "Variable": ["OUTCID=+74950000002", "__C2C_REQUEST=req-42"],
            "Async": "true",
        },
        # A sequence of one is one header, parsed back as a plain value.
        {"Action": "Ping", "ActionID": "p-2", "Variable": "ONLY=1"},
    ]


@pytest.mark.parametrize(
    ("action", "action_id", "headers"),
    [
        ("Ping\r\nAction: Originate", "p-1", None),
        ("Ping", "p-1\r\nAction: Originate", None),
        ("Ping", "p-1", {"Channel": "PJSIP/101\r\nAction: Originate"}),
        ("Ping", "p-1", {"Channel": "PJSIP/101\nAction: Originate"}),
        ("Ping", "p-1", {"Channel": "PJSIP/101\r"}),
        ("Ping", "p-1", {"Variable": ["A=1", "B=2\r\nAction: Originate"]}),
        ("Ping", "p-1", {"Bad\r\nName": "x"}),
        ("Ping", "p-1", {"Bad: Name": "x"}),
        ("Ping", "p-1", {"": "x"}),
        ("Ping", "p-1", {"actionid": "other"}),
        ("", "p-1", None),
        ("Ping", "", None),
    ],
)
def test_encode_action_refuses_injection(
    action: str, action_id: str, headers: dict[str, str | list[str]] | None
) -> None:
    with pytest.raises(ValueError):
        encode_action(action, action_id, headers)
