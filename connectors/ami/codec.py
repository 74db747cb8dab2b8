"""Sans-IO codec for the Asterisk Manager Interface (AMI), in the manner of h11.

The link owning the socket feeds whatever bytes it reads to
``AmiCodec.receive_data`` (``b""`` at EOF) and pulls parsed messages with
``next_message`` until it returns None. The codec does no I/O, keeps no clock
and never raises because of what the server sent: a malformed, oversized or
truncated message is logged, counted in ``skipped`` and passed over, because
one bad frame must not cost the Hangup behind it.

Framing works on bytes: a message ends at the first ``\r\n\r\n`` or ``\n\n``,
and only a complete message is decoded, so a multi-byte UTF-8 character split
across two reads arrives whole. Lines end in CRLF or LF, as the message's first
line does: Asterisk ends every line with CRLF, so there a bare LF belongs to a
value (Asterisk 22 really sends ``Message: No Contacts found\n\r\n\r\n``).
Events the gateway never uses are discarded from their first line before any
decoding (``dropped``); on a busy PBX that is most of the traffic. Every buffer
is bounded by ``max_message_bytes``. ``encode_action`` is the other direction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, TypeAlias, cast

__all__ = ["DEFAULT_DROPPED_EVENTS", "AmiCodec", "AmiMessage", "encode_action"]

log = logging.getLogger(__name__)

AmiMessage: TypeAlias = dict[str, str | list[str]]
"""Header name -> value; a header repeated in one message -> its values in order."""

DEFAULT_DROPPED_EVENTS: Final[frozenset[str]] = frozenset(
    {
        # Dialplan chatter: one per Set()/priority; the bulk of a busy PBX's stream.
        "VarSet",
        "Newexten",
        # Billing records: the gateway keeps its own call record from channel events.
        "CEL",
        "Cdr",
        "NewAccountCode",
        # Media statistics, periodic per RTP stream.
        "RTCPSent",
        "RTCPReceived",
        # Digits pressed: not used for call outcomes.
        "DTMFBegin",
        "DTMFEnd",
        # AGI and hangup-handler bookkeeping: routing answers FastAGI itself.
        "AGIExecStart",
        "AGIExecEnd",
        "HangupHandlerPush",
        "HangupHandlerRun",
        "HangupHandlerPop",
        # Supervisor listening: not a party of the call.
        "ChanSpyStart",
        "ChanSpyStop",
        # DeviceStateChange is deliberately kept: agent presence will use it.
    }
)
"""Events discarded before full parsing unless the codec is given another set."""

_BANNER: Final = b"Asterisk Call Manager/"
_EVENT_PREFIX: Final = b"Event: "
# The two message terminators. b"\r\n\r\n" (every real Asterisk message) never
# contains b"\n\n" (LF-only streams; a CRLF line then an LF blank line), so both
# are searched and the earliest wins.
_CRLF_END: Final = b"\r\n\r\n"
_LF_END: Final = b"\n\n"
_SKIP_TAIL: Final = len(_CRLF_END) - 1  # enough to see a terminator straddling two reads
_KINDS: Final = frozenset({"Event", "Response", "Action"})
# The headers that say what a message is and what it answers: a second copy must
# not turn them into lists that every consumer would have to handle.
_SINGLE_VALUED: Final = frozenset({"Event", "Response", "ActionID"})
_LOG_LINE_CHARS: Final = 200
_LOG_EVERY: Final = 1000


def _skip_blank_lines(buf: bytearray, pos: int) -> int:
    """The position after any blank lines (CRLF or LF) starting at ``pos``."""
    size = len(buf)
    while pos < size:
        c = buf[pos]
        if c == 10:
            pos += 1
        elif c == 13 and pos + 1 < size and buf[pos + 1] == 10:
            pos += 2
        else:
            break
    return pos


class _QuietLog:
    """Log a repeated problem the first time, then every 1000th time with the count,
    so that a misbehaving server cannot flood the log (zeroconf's QuietLogger)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def __call__(self, kind: str, level: int, msg: str, *args: object) -> None:
        count = self._counts.get(kind, 0) + 1
        self._counts[kind] = count
        if count == 1 or count % _LOG_EVERY == 0:
            log.log(level, msg + " (%d so far on this connection)", *args, count)


class AmiCodec:
    """Turn the bytes of one AMI connection into messages; one instance per connection.

    Call ``next_message`` (or iterate ``messages``) until it returns None after
    each ``receive_data``: bytes are only framed, and the buffer only bounded,
    when messages are pulled.
    """

    __slots__ = (
        "_max",
        "_drop_names",
        "_drop_events",
        "_buf",
        "_pos",
        "_crlf_from",
        "_lf_from",
        "_at_start",
        "_skipping",
        "_eof",
        "_quiet",
        "dropped",
        "skipped",
    )

    def __init__(
        self,
        *,
        max_message_bytes: int = 64 * 1024,
        drop_events: frozenset[str] = DEFAULT_DROPPED_EVENTS,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._max = max_message_bytes
        self._drop_events = frozenset(drop_events)
        # The hot path compares raw bytes of the first line: no decoding for a drop.
        self._drop_names = frozenset(name.encode("utf-8") for name in drop_events)
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        # Search hints: no terminator of that kind starts in [_pos, hint). They keep
        # framing linear when one kind never occurs (an LF-only stream has no
        # b"\r\n\r\n") and a large buffer would otherwise be rescanned per message.
        self._crlf_from = 0
        self._lf_from = 0
        self._at_start = True  # the banner is recognised only here
        self._skipping = False  # inside an oversized message: discard until its end
        self._eof = False
        self._quiet = _QuietLog()
        self.dropped = 0
        """Messages discarded by the drop filter."""
        self.skipped = 0
        """Messages discarded as malformed, oversized or truncated by EOF."""

    @property
    def pending_bytes(self) -> int:
        """Bytes buffered and not yet consumed: bounded by max_message_bytes plus one read."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the socket; ``b""`` means the server closed it."""
        if self._eof:
            if data:
                # A caller bug, not bad input: nothing can follow EOF on a socket.
                raise RuntimeError("receive_data() called with data after EOF")
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos:
            # bytearray deletes from the front in O(1) amortised; hints move with it.
            del buf[:pos]
            self._pos = 0
            self._crlf_from = max(0, self._crlf_from - pos)
            self._lf_from = max(0, self._lf_from - pos)
        buf += data
        if self._skipping:
            self._skip_until_end()

    def _skip_until_end(self) -> None:
        # Only a few trailing bytes of an oversized message are ever kept, so a
        # megabyte-long header line costs no memory.
        buf = self._buf
        crlf = buf.find(_CRLF_END)
        lf = buf.find(_LF_END)
        if lf >= 0 and (crlf < 0 or lf < crlf):
            end = lf + 2
        elif crlf >= 0:
            end = crlf + 4
        else:
            del buf[:-_SKIP_TAIL]
            return
        del buf[:end]
        self._skipping = False
        self._crlf_from = self._lf_from = 0

    def _start_skipping(self, pos: int) -> None:
        self.skipped += 1
        self._quiet(
            "oversized",
            logging.WARNING,
            "AMI message longer than %d bytes skipped: %r",
            self._max,
            self._first_line(pos),
        )
        buf = self._buf
        del buf[: max(pos, len(buf) - _SKIP_TAIL)]
        self._pos = 0
        self._crlf_from = self._lf_from = 0
        self._skipping = True
        self._at_start = False

    def _discard_tail(self, pos: int) -> None:
        # EOF inside a message: it can never complete. Blank lines are not a message.
        if self._buf[pos:].strip(b"\r\n"):
            self.skipped += 1
            self._quiet(
                "truncated",
                logging.WARNING,
                "AMI stream ended inside a message (%d bytes discarded): %r",
                len(self._buf) - pos,
                self._first_line(pos),
            )
        self._buf.clear()
        self._pos = 0
        self._crlf_from = self._lf_from = 0

    def _first_line(self, start: int, stop: int | None = None) -> str:
        """The start of a message for a log line: one line, at most 200 characters."""
        if stop is None:
            stop = len(self._buf)
        raw = bytes(self._buf[start : min(stop, start + 4 * _LOG_LINE_CHARS)])
        line = raw.split(b"\n", 1)[0].rstrip(b"\r")
        return line.decode("utf-8", "replace")[:_LOG_LINE_CHARS]

    def next_message(self) -> AmiMessage | None:
        """The next complete, parsed, non-dropped message, or None if more bytes are needed."""
        buf = self._buf
        while True:
            if self._skipping:
                if self._eof:
                    # Already counted when skipping began.
                    buf.clear()
                    self._pos = 0
                return None
            pos = self._pos
            size = len(buf)
            if pos == size:
                return None
            c = buf[pos]
            if c == 10 or c == 13:
                # Blank lines between messages are not messages.
                pos = self._pos = _skip_blank_lines(buf, pos)
                if pos == size:
                    return None
            if self._at_start:
                banner = self._take_banner(pos, size)
                if banner is not None or self._at_start:
                    # The banner, or not yet enough bytes to tell.
                    return banner
                continue

            # Find the earliest terminator. Each kind's search resumes where the
            # last one left off, and b"\n\n" is not searched for at all when it is
            # known not to occur before the b"\r\n\r\n" found (CRLF streams).
            start = self._crlf_from
            crlf = buf.find(_CRLF_END, start if start > pos else pos)
            self._crlf_from = crlf if crlf >= 0 else size - 3
            if 0 <= crlf < self._lf_from:
                end = crlf
                after = crlf + 4
            else:
                start = self._lf_from
                lf = buf.find(_LF_END, start if start > pos else pos)
                self._lf_from = lf if lf >= 0 else size - 1
                if lf >= 0 and (crlf < 0 or lf < crlf):
                    # The \r of a CRLF line before an LF blank line is not content.
                    end = lf - 1 if buf[lf - 1] == 13 else lf
                    after = lf + 2
                elif crlf >= 0:
                    end = crlf
                    after = crlf + 4
                else:
                    if size - pos > self._max:
                        self._start_skipping(pos)
                        continue
                    if self._eof:
                        self._discard_tail(pos)
                    return None

            self._pos = after
            if after - pos > self._max:
                self.skipped += 1
                self._quiet(
                    "oversized",
                    logging.WARNING,
                    "AMI message longer than %d bytes skipped: %r",
                    self._max,
                    self._first_line(pos, end),
                )
                continue
            # The first line says how lines end, and what the message is.
            eol = buf.find(b"\n", pos, end)
            if eol < 0:
                crlf_lines = False
                eol = end
            elif buf[eol - 1] == 13:
                crlf_lines = True
                eol -= 1
            else:
                crlf_lines = False
            # Drop filter on raw bytes: a set lookup, nothing decoded or split.
            if buf.startswith(_EVENT_PREFIX, pos) and bytes(buf[pos + 7 : eol]) in self._drop_names:
                self.dropped += 1
                continue
            msg = self._parse(pos, end, crlf_lines)
            if msg is None:
                continue
            event = msg.get("Event")
            if event is not None and event in self._drop_events:
                # An odd spelling the byte filter missed ("Event:VarSet"): still dropped.
                self.dropped += 1
                continue
            return msg

    def _take_banner(self, pos: int, size: int) -> AmiMessage | None:
        """Recognise ``Asterisk Call Manager/x.y.z`` as the stream's first line.

        Returns the banner message; or None, leaving ``_at_start`` set while the
        bytes so far could still be a banner, cleared when they cannot.
        """
        buf = self._buf
        head = bytes(buf[pos : pos + len(_BANNER)])
        if head != _BANNER:
            if len(head) < len(_BANNER) and _BANNER.startswith(head) and not self._eof:
                return None
            self._at_start = False
            return None
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if size - pos > self._max:
                self._start_skipping(pos)
            elif self._eof:
                self._at_start = False
                self._discard_tail(pos)
            return None
        self._at_start = False
        self._pos = eol + 1
        line = bytes(buf[pos:eol]).rstrip(b"\r")
        return {"Banner": line.decode("utf-8", "replace")}

    def _parse(self, pos: int, end: int, crlf_lines: bool) -> AmiMessage | None:
        """Parse the complete message in ``_buf[pos:end]`` (its last line's end excluded)."""
        raw = self._buf[pos:end]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Keep the message: a mangled name is better than a lost Hangup.
            msg = self._parse_text(raw.decode("utf-8", "replace"), pos, crlf_lines)
            if msg is not None:  # garbage is reported as malformed, not twice
                self._quiet(
                    "utf8",
                    logging.WARNING,
                    "AMI message is not valid UTF-8, decoded with replacement: %r",
                    self._first_line(pos),
                )
            return msg
        return self._parse_text(text, pos, crlf_lines)

    def _parse_text(self, text: str, pos: int, crlf_lines: bool) -> AmiMessage | None:
        if crlf_lines:
            lines = text.split("\r\n")
        else:
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            lines = text.split("\n")
        pairs = cast("list[tuple[str, str]]", [line.split(": ", 1) for line in lines])
        # Fast path for the usual shape, every line "Key: value": dict() does the
        # work in C. Anything else goes through _parse_lines.
        try:
            msg: AmiMessage = dict(pairs)
        except ValueError:  # a line without ": "
            return self._parse_lines(lines, pos)
        if (
            pairs[0][0] not in _KINDS
            or "" in msg
            # split(": ") cut at the wrong colon if a key holds one ("A:b: c").
            or ":" in "".join(msg)
        ):
            return self._parse_lines(lines, pos)
        if len(msg) != len(pairs):
            # Repeated headers (ChanVariable): dict() kept only the last value.
            return self._gather(pairs, pos)
        return msg

    def _gather(self, pairs: list[tuple[str, str]], pos: int) -> AmiMessage:
        """Build a message whose headers repeat: values in order, single-valued ones first-wins."""
        msg: AmiMessage = {}
        for key, value in pairs:
            old = msg.get(key)
            if old is None:
                msg[key] = value
            elif isinstance(old, list):
                old.append(value)
            elif key in _SINGLE_VALUED:
                # A second Event or ActionID must not make the message unreadable.
                self._quiet(
                    "duplicate",
                    logging.DEBUG,
                    "AMI message repeats %s, first value kept: %r",
                    key,
                    self._first_line(pos),
                )
            else:
                msg[key] = [old, value]
        return msg

    def _parse_lines(self, lines: list[str], pos: int) -> AmiMessage | None:
        """Line by line: repeated headers, ``Key:`` without a space, malformed input."""
        pairs: list[tuple[str, str]] = []
        for line in lines:
            key, colon, value = line.partition(":")
            if not colon or not key:
                self._malformed(pos)
                return None
            pairs.append((key, value[1:] if value.startswith(" ") else value))
        if pairs[0][0] not in _KINDS:
            self._malformed(pos)
            return None
        return self._gather(pairs, pos)

    def _malformed(self, pos: int) -> None:
        self.skipped += 1
        self._quiet(
            "malformed",
            logging.WARNING,
            "malformed AMI message skipped: %r",
            self._first_line(pos),
        )

    def messages(self) -> Iterator[AmiMessage]:
        """Drain every complete message buffered so far."""
        while (msg := self.next_message()) is not None:
            yield msg


def _check_header(name: str, value: str) -> None:
    if not name or ":" in name or "\r" in name or "\n" in name:
        raise ValueError(f"invalid AMI header name: {name!r}")
    if "\r" in value or "\n" in value:
        # A line break would let a value inject headers or a whole action.
        raise ValueError(f"AMI header {name} has a line break in its value")


def encode_action(
    action: str,
    action_id: str,
    headers: Mapping[str, str | Sequence[str]] | None = None,
) -> bytes:
    """Encode one action; a sequence value repeats its header (``Variable``).

    Raises ValueError for a line break in any name or value (header injection), a
    colon in a header name, or a header that would repeat Action or ActionID.
    """
    if not action or not action_id:
        raise ValueError("an AMI action needs a name and an ActionID")
    _check_header("Action", action)
    _check_header("ActionID", action_id)
    parts = [f"Action: {action}\r\nActionID: {action_id}\r\n"]
    if headers:
        for name, value in headers.items():
            if name.lower() in ("action", "actionid"):
                # Asterisk matches header names case-insensitively.
                raise ValueError(f"{name} is set by encode_action's own arguments")
            values = (value,) if isinstance(value, str) else value
            for item in values:
                _check_header(name, item)
                parts.append(f"{name}: {item}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("utf-8")
