"""Child process for the store's kill test: save calls, then SIGKILL itself.

Run from the repository root::

    python -m tests.store_writer_child DB_PATH TOTAL KILL_AFTER

Starts TOTAL concurrent saves of ``record_for(i)``; writes ``saved <call_id>``
to stdout (unbuffered, straight to the fd) as each save returns; after the
KILL_AFTER-th line it sends itself SIGKILL while the other saves are still
queued or half-written. ``record_for`` is shared with the parent test, which
checks what survived.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from crm_bridge.store import Store
from gateway.record import CallRecord, LegRecord


def record_for(i: int) -> CallRecord:
    """A deterministic call with three legs, so a torn write would show."""
    start = 1_700_000_000.0 + i
    return CallRecord(
        call_id=f"kill-{i:05d}",
        direction="inbound",
        caller=f"+7999{i:07d}",
        caller_name="Иван Петров",
        dialled="+74950000000",
        outcome="answered",
        answered_by="102",
        rang=("101", "102"),
        talked=("102",),
        started_at=start,
        answered_at=start + 4.5,
        ended_at=start + 60.25,
        ring_seconds=4.5,
        talk_seconds=55.75,
        hangup_cause=16,
        reason=None,
        interrupted=False,
        ended=True,
        legs=tuple(
            LegRecord(
                leg_id=f"kill-{i:05d}.{n}",
                kind="agent" if n else "caller",
                extension=None if n == 0 else f"10{n}",
                number=f"+7999{i:07d}" if n == 0 else None,
                started_at=start + n * 0.1,
                answered_at=start + 4.5 if n != 1 else None,
                ended_at=start + 60.25,
                hangup_cause=16,
            )
            for n in range(3)
        ),
    )


async def main(path: str, total: int, kill_after: int) -> None:
    # Small batches and no batching delay: the writer is busy with the next
    # transaction at the moment the process dies.
    store = await Store.open(path, batch_max=16, batch_delay=0)
    saved = 0

    async def save(i: int) -> None:
        nonlocal saved
        record = record_for(i)
        await store.save_call(record)
        os.write(1, f"saved {record.call_id}\n".encode())
        saved += 1
        if saved == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    await asyncio.gather(*(save(i) for i in range(total)))
    os.write(1, b"finished without being killed\n")
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
