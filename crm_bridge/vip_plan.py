"""What the VIP call plan needs from the call store: every VIP contact with the
times of his answered outbound calls since a moment, and his last call.

One query over the contacts flagged VIP (few: a premium shop has hundreds, not
millions); calls are found by ``calls.customer`` (E.164), so however the PBX
wrote the number, every phone of the contact counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .store import Store

_QUERY = """
SELECT c.contact_id, c.name, c.manager, c.first_shop,
    (SELECT json_group_array(phone) FROM (SELECT phone FROM contact_phones WHERE contact_id = c.contact_id ORDER BY rowid)),
    (SELECT json_group_array(k.started_at) FROM contact_phones AS p JOIN calls AS k ON k.customer = p.phone
        WHERE p.contact_id = c.contact_id AND k.direction = 'outbound' AND k.outcome = 'answered'
        AND k.started_at >= ?1),
    (SELECT json_array(k.call_id, k.started_at, k.direction, k.outcome, k.caller, k.answered_by)
        FROM contact_phones AS p JOIN calls AS k ON k.customer = p.phone
        WHERE p.contact_id = c.contact_id ORDER BY k.started_at DESC LIMIT 1)
FROM contacts AS c WHERE c.vip = 1 ORDER BY c.contact_id
"""


@dataclass(frozen=True, slots=True)
class LastCall:
    call_id: str
    started_at: float
    direction: str
    outcome: str
    caller: str | None
    answered_by: str | None


@dataclass(frozen=True, slots=True)
class VipContact:
    contact_id: int
    name: str | None
    manager: str | None
    shop: str | None  # his first call's shop
    phones: tuple[str, ...]
    answered_outbound: tuple[float, ...]  # start times since the moment asked for
    last_call: LastCall | None


async def vip_contacts(store: Store, since: float) -> list[VipContact]:
    return [_vip(row) for row in await store.read(_QUERY, (since,))]


def _vip(row: Any) -> VipContact:
    last = json.loads(row[6]) if row[6] else None
    return VipContact(
        contact_id=row[0], name=row[1], manager=row[2], shop=row[3],
        phones=tuple(json.loads(row[4])), answered_outbound=tuple(sorted(json.loads(row[5]))),
        last_call=LastCall(*last) if last else None,
    )
