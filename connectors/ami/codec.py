"""Sans-IO codec for the Asterisk Manager Interface (AMI), in the manner of h11.

The link owning the socket feeds whatever bytes it reads to
``AmiCodec.receive_data`` (``b""`` at EOF) and pulls parsed messages with
``next_message`` until it returns None. The codec does no I/O, keeps no clock
and never raises because of what the server sent: a malformed, oversized or
truncated message is logged, counted in ``skipped`` and passed over, because
one bad frame must not cost the Hangup behind it.

Framing works on bytes, and only a complete message is decoded, so a
multi-byte UTF-8 character split across two reads arrives whole. Asterisk ends
every line with CRLF, so a message ends at the first ``\r\n\r\n`` and a bare LF
belongs to a value (Asterisk 22 really sends ``Message: No Contacts found\n\r\n\r\n``),
an LF blank line too. A peer that uses bare LFs itself gets mixed framing, for
the rest of the connection: a message ends at the first ``\r\n\r\n`` or
``\n\n``. The first message after the banner is framed that way and says which
kind of peer it is (by the terminator that ended it); later, a message whose
first line ends in a bare LF switches to mixed framing. Lines end in CRLF or LF,
as the message's first line does.
Events the gateway never uses are discarded from their first line before any
decoding (``dropped``); on a busy PBX that is most of the traffic. Every buffer
is bounded by ``max_message_bytes``. ``encode_action`` is the other direction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, TypeAlias

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
# The two message terminators. b"\r\n\r\n" ends every real Asterisk message;
# b"\n\n" (LF-only streams; a CRLF line then an LF blank line) is looked for as
# well, and the earliest wins, once the peer has shown that it uses bare LFs.
_CRLF_END: Final = b"\r\n\r\n"
_LF_END: Final = b"\n\n"
_SKIP_TAIL: Final = len(_CRLF_END) - 1  # enough to see a terminator straddling two reads
_KINDS: Final = frozenset({"Event", "Response", "Action"})
# The headers that say what a message is and what it answers: a second copy must
# not turn them into lists that every consumer would have to handle.
_SINGLE_VALUED: Final = frozenset({"Event", "Response", "ActionID"})
_LOG_LINE_CHARS: Final = 200
_LOG_EVERY: Final = 1000
_LEARN_MAX: Final = 1000  # first lines remembered per verdict, per connection
# Returned by a framing step whose state changed (skipping began, mixed framing).
_AGAIN: Final[AmiMessage] = {"": "framing state changed: look again"}


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

    Events are filtered on their first line, before decoding: with
    ``keep_events`` only the events it names are kept (what the live service
    does, with the normaliser's handled events); without it the events named in
    ``drop_events`` are dropped. ``keep_events`` never drops a Response or an
    Action.
    """

    __slots__ = (
        "_max",
        "_drop_names",
        "_drop_events",
        "_keep_names",
        "_keep_events",
        "_lines_dropped",
        "_lines_kept",
        "_buf",
        "_pos",
        "_crlf_from",
        "_lf_from",
        "_lf_lines",
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
        keep_events: frozenset[str] | None = None,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self._max = max_message_bytes
        self._drop_events = frozenset(drop_events)
        self._keep_events = None if keep_events is None else frozenset(keep_events)
        # The filter compares raw bytes of the first line: no decoding for a drop.
        self._drop_names = frozenset(name.encode("utf-8") for name in self._drop_events)
        self._keep_names = (
            None if keep_events is None else frozenset(name.encode("utf-8") for name in keep_events)
        )
        # First lines (b"Event: VarSet") whose verdict is known, so that the hot
        # path does one set lookup; the side not given is learnt, up to _LEARN_MAX.
        self._lines_dropped: set[bytes] = set()
        self._lines_kept: set[bytes] = set()
        if self._keep_names is None:
            self._lines_dropped.update(_EVENT_PREFIX + name for name in self._drop_names)
        else:
            self._lines_kept.update(_EVENT_PREFIX + name for name in self._keep_names)
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        # Search hints: no terminator of that kind starts in [_pos, hint). They keep
        # framing linear when one kind never occurs (an LF-only stream has no
        # b"\r\n\r\n") and a large buffer would otherwise be rescanned per message.
        self._crlf_from = 0
        self._lf_from = 0
        # Mixed framing (b"\n\n" ends messages too): the peer uses bare LFs. None
        # until the end of the first message, framed the mixed way, has shown
        # whether it does; later, a first line ending in a bare LF switches too.
        self._lf_lines: bool | None = None
        self._at_start = True  # the banner is recognised only here
        self._skipping = False  # inside an oversized message: discard until its end
        self._eof = False
        self._quiet = _QuietLog()
        self.dropped = 0
        """Messages discarded by the event filter (keep_events or drop_events)."""
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
        lf = -1 if self._lf_lines is False else buf.find(_LF_END)  # as the framing does
        if lf >= 0 and (crlf < 0 or lf < crlf):
            end = lf + 2
        elif crlf >= 0:
            end = crlf + 4
        else:
            del buf[:-_SKIP_TAIL]
            return
        if self._lf_lines is None:
            # The first message's end says whether the peer uses bare LFs.
            self._lf_lines = end == lf + 2
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
            if self._at_start:
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
                banner = self._take_banner(pos, size)
                if banner is not None or self._at_start:
                    # The banner, or not yet enough bytes to tell.
                    return banner
                continue
            msg = self._next_crlf() if self._lf_lines is False else self._next_mixed()
            if msg is not _AGAIN:
                return msg

    def _next_crlf(self) -> AmiMessage | None:
        """Frame on ``\\r\\n\\r\\n`` alone, until the peer shows that it uses bare LFs.

        The hot path: an event costs a search for the end of its first line, a
        set lookup of that line's raw bytes and a search for the end of the
        message; a dropped one nothing more, and runs of them stay in this loop.
        Returns a message, None (more bytes needed) or ``_AGAIN`` (state changed).
        """
        buf = self._buf
        find = buf.find
        lines_dropped = self._lines_dropped
        lines_kept = self._lines_kept
        limit = self._max
        hint = self._crlf_from  # no b"\r\n\r\n" starts in [self._pos, hint)
        pos = self._pos
        dropped = 0
        try:
            while True:
                eol = find(b"\n", pos)
                start = eol - 1  # the \r ending the first line
                if eol > pos and buf[start] == 13:
                    line = bytes(buf[pos:start])
                    drop = line in lines_dropped
                    if drop or line in lines_kept:
                        crlf = find(_CRLF_END, start if start > hint else hint)
                        after = crlf + 4
                        if crlf >= 0 and after - pos <= limit:
                            if drop:
                                dropped += 1
                                pos = after
                                continue
                            self._pos = after
                            msg = self._parse(pos, crlf, True)
                            if msg is not None:
                                return msg
                            pos = after
                            continue
                # Not a complete event of a known name and usual size: the general case.
                size = len(buf)
                if pos == size:
                    self._pos = pos
                    return None
                c = buf[pos]
                if c == 10 or c == 13:
                    # Blank lines between messages are not messages.
                    after = _skip_blank_lines(buf, pos)
                    if after != pos:
                        pos = after
                        continue
                if eol < 0:
                    return self._incomplete(pos, size)
                if buf[start] != 13:
                    # A bare LF ends this first line: from now on the peer may
                    # also end a message with an LF blank line.
                    self._lf_lines = True
                    self._pos = pos
                    return _AGAIN
                crlf = find(_CRLF_END, start if start > hint else hint)
                if crlf < 0:
                    self._crlf_from = size - 3
                    return self._incomplete(pos, size)
                after = crlf + 4
                if after - pos > limit:
                    self._oversized(pos, crlf)
                    pos = after
                    continue
                self._pos = after
                if buf.startswith(_EVENT_PREFIX, pos):
                    # An event name not seen before: decide on its raw bytes, and remember.
                    line = bytes(buf[pos:start])
                    if self._drops(line[7:]):
                        if len(lines_dropped) < _LEARN_MAX:
                            lines_dropped.add(line)
                        dropped += 1
                        pos = after
                        continue
                    if len(lines_kept) < _LEARN_MAX:
                        lines_kept.add(line)
                    msg = self._parse(pos, crlf, True)
                else:
                    # A Response, an Action, or not a message at all.
                    msg = self._parse(pos, crlf, True)
                    if msg is not None and self._filtered_late(msg):
                        dropped += 1
                        msg = None
                pos = after
                if msg is not None:
                    return msg
        finally:
            self.dropped += dropped

    def _next_mixed(self) -> AmiMessage | None:
        """Frame on the first ``\\r\\n\\r\\n`` or ``\\n\\n``: the first message,
        and every one once the peer has shown that it uses bare LFs.

        Returns a message, None (more bytes needed) or ``_AGAIN`` (state changed).
        """
        buf = self._buf
        while True:
            if self._lf_lines is False:
                return _AGAIN  # the first message said: CRLF framing from here on
            pos = self._pos
            size = len(buf)
            if pos == size:
                return None
            c = buf[pos]
            if c == 10 or c == 13:
                pos = self._pos = _skip_blank_lines(buf, pos)
                if pos == size:
                    return None
            # Find the earliest terminator. Each kind's search resumes where the
            # last one left off, and b"\n\n" is not searched for again when it is
            # known not to occur before the b"\r\n\r\n" found.
            start = self._crlf_from
            crlf = buf.find(_CRLF_END, start if start > pos else pos)
            self._crlf_from = crlf if crlf >= 0 else size - 3
            by_lf = False  # ended by b"\n\n"
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
                    by_lf = True
                elif crlf >= 0:
                    end = crlf
                    after = crlf + 4
                else:
                    return self._incomplete(pos, size)

            self._pos = after
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
            if self._lf_lines is None:
                # The first message's end says whether the peer uses bare LFs.
                self._lf_lines = by_lf
            if after - pos > self._max:
                self._oversized(pos, end)
                continue
            if buf.startswith(_EVENT_PREFIX, pos):
                # Filter on the first line's raw bytes: nothing decoded or split.
                if self._drops(bytes(buf[pos + 7 : eol])):
                    self.dropped += 1
                    continue
                msg = self._parse(pos, end, crlf_lines)
            else:
                msg = self._parse(pos, end, crlf_lines)
                if msg is not None and self._filtered_late(msg):
                    self.dropped += 1
                    continue
            if msg is not None:
                return msg

    def _incomplete(self, pos: int, size: int) -> AmiMessage | None:
        """No complete message starts at ``pos``: wait, skip an oversized one, or end at EOF."""
        self._pos = pos
        if size - pos > self._max:
            self._start_skipping(pos)
            return _AGAIN
        if self._eof:
            self._discard_tail(pos)
        return None

    def _oversized(self, pos: int, end: int) -> None:
        self.skipped += 1
        self._quiet(
            "oversized",
            logging.WARNING,
            "AMI message longer than %d bytes skipped: %r",
            self._max,
            self._first_line(pos, end),
        )

    def _drops(self, name: bytes) -> bool:
        """Whether the filter drops the event of this name (raw bytes)."""
        if self._keep_names is None:
            return name in self._drop_names
        return name not in self._keep_names

    def _filtered_late(self, msg: AmiMessage) -> bool:
        """Whether the filter drops a message the byte filter could not judge
        (an odd spelling: ``Event:VarSet``). keep_events never drops a Response
        or an Action; drop_events drops any message whose Event header it names."""
        event = msg.get("Event")
        if event is None:
            return False
        if self._keep_events is None:
            return event in self._drop_events
        return event not in self._keep_events and next(iter(msg)) == "Event"

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
        # The usual shape, every line "Key: value", in one pass. Anything else
        # goes through _parse_lines, which gives the same result for this shape.
        msg: AmiMessage = {}
        try:
            for line in lines:
                key, value = line.split(": ", 1)  # ValueError: no ": " in the line
                if key not in msg:
                    msg[key] = value
                    continue
                # A repeated header (ChanVariable): its values in order.
                old = msg[key]
                if isinstance(old, list):
                    old.append(value)
                elif key in _SINGLE_VALUED:
                    return self._parse_lines(lines, pos)  # first-wins, and logged there
                else:
                    msg[key] = [old, value]
        except ValueError:
            return self._parse_lines(lines, pos)
        if (
            next(iter(msg)) not in _KINDS
            or "" in msg
            # split(": ") cut at the wrong colon if a key holds one ("A:b: c").
            or ":" in "".join(msg)
        ):
            return self._parse_lines(lines, pos)
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
