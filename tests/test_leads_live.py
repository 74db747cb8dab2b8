"""Leads through the live service: a call over the real AMI path makes its
unknown caller a lead with the channel and shop of the number he dialled, and
the first agent who talked becomes his manager."""

from __future__ import annotations

import asyncio
from pathlib import Path

from connectors.ami.server import capture_stream
from gateway.numberplan import PlanBook
from tests.conftest import CAPTURES
from tests.harness import Harness
from tests.test_numberplan import example_plan


async def test_a_captured_call_makes_a_lead_with_channel_shop_and_manager(tmp_path: Path) -> None:
    async with Harness(tmp_path, plans=PlanBook(example_plan())) as h:
        for name in ("h1_blind_transfer", "e_queue_answered"):
            await h.ami.send_raw(capture_stream(CAPTURES / f"{name}.ami"))
        await h.wait_records(2)
        await h.gateway.drain()
        transfer = await h.contacts.get("+79161110008")
        queue = await h.contacts.get("89161110005")  # however the number is written
        again = await asyncio.gather(h.contacts.get("+79161110008"))
    assert transfer is not None and queue is not None
    assert (transfer.status, transfer.source_channel, transfer.first_shop, transfer.manager) == (
        "lead", "direct", "A", "anna")  # 101 talked first, then 102
    assert (queue.source_channel, queue.first_shop, queue.manager) == ("yandex", "A", "boris")
    assert again[0] == transfer
