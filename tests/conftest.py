"""Suite-wide fixtures and guard rails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

CAPTURES = Path(__file__).parent / "captures" / "asterisk-22"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """A test must not leave threads behind (aiosqlite's are joined on close)."""
    before = set(threading.enumerate())
    yield
    for _ in range(100):
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
        if not leaked:
            return
        threading.Event().wait(0.02)
    pytest.fail(f"threads leaked: {leaked}")
