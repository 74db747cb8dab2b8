"""Reading AMI captures for ``replay``: raw bytes (``*.ami``), JSON lines
(``*.jsonl``: objects of AMI headers plus optional ``_``-prefixed metadata) or a
JSON array of such objects.

JSON messages are turned back into AMI bytes, so a replay goes through exactly
the codec and normaliser the live service uses. A message's ``_t`` (epoch
seconds) becomes its ``Timestamp`` header, the way Asterisk stamps events when
``timestampevents`` is on; lines with ``"_dir": "out"`` (what a client sent) are
skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 64 * 1024
_AMI_STARTS = (b"Asterisk Call Manager/", b"Event:", b"Response:", b"Action:")


class CaptureError(Exception):
    """Unreadable capture; the message names the file and the line or byte offset."""


def encode_message(headers: dict[str, Any], *, where: str) -> bytes:
    """One AMI message from a JSON object; ``where`` names it in errors. An
    object of metadata only gives nothing, or the banner line it records."""
    lines: list[str] = []
    for key, value in headers.items():
        if key.startswith("_"):
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise CaptureError(f"{where}: header {key!r} must be a string, got {type(item).__name__}")
            text = str(item).rstrip("\r\n")  # Asterisk ends some messages with a stray LF
            if "\r" in text or "\n" in text or "\r" in key or "\n" in key or ":" in key:
                raise CaptureError(f"{where}: header {key!r} contains a line break or colon")
            lines.append(f"{key}: {text}\r\n")
    if not lines:
        banner = headers.get("_banner")
        return f"{banner}\r\n".encode() if isinstance(banner, str) else b""  # metadata only
    t = headers.get("_t")
    if isinstance(t, (int, float)) and not isinstance(t, bool) and "Timestamp" not in headers:
        lines.append(f"Timestamp: {t:.6f}\r\n")
    return "".join(lines).encode("utf-8") + b"\r\n"


def read_capture(path: Path) -> Iterator[bytes]:
    """Yield AMI bytes from a capture file of any of the three formats."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror}") from exc
    head = data.lstrip()[:1]
    if head == b"[":
        yield from _json_array(path, data)
    elif head == b"{":
        yield from _json_lines(path, data)
    else:
        if data and not data.lstrip(b"\r\n").startswith(_AMI_STARTS):
            raise CaptureError(f"{path}: byte 0: not an AMI stream, JSON lines or a JSON array")
        for offset in range(0, len(data), CHUNK):
            yield data[offset : offset + CHUNK]


def _json_lines(path: Path, data: bytes) -> Iterator[bytes]:
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}: line {number}"
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CaptureError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(obj, dict):
            raise CaptureError(f"{where}: expected a JSON object")
        if obj.get("_dir") == "out":
            continue
        yield encode_message(obj, where=where)


def _json_array(path: Path, data: bytes) -> Iterator[bytes]:
    try:
        items = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CaptureError(f"{path}: not a JSON array ({exc})") from exc
    if not isinstance(items, list):
        raise CaptureError(f"{path}: expected a JSON array")
    for index, obj in enumerate(items):
        where = f"{path}: item {index}"
        if not isinstance(obj, dict):
            raise CaptureError(f"{where}: expected a JSON object")
        if obj.get("_dir") == "out":
            continue
        yield encode_message(obj, where=where)
