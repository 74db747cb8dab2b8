"""The CRM bridge inside the gateway: building it from the config, and the
administrator's view of its outbox (the dead-letter list, "retry now").

Routes (admin only):
- ``GET /api/admin/outbox?state=dead|pending&sink=``: per sink, entries
  waiting and dead, the age of the oldest waiting, and the entries listed
  (newest first, at most 200; no payloads: they hold customers' numbers).
- ``POST /api/admin/outbox/retry`` ``{"entry_ids": [..]}`` or
  ``{"all_dead": true, "sink": optional}``: dead entries due again now, with a
  fresh retry window; answers ``{"retried": n}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from crm_bridge.bridge import Bridge
from crm_bridge.bridge_config import CrmConfig, build_sinks
from crm_bridge.outbox import DEAD, PENDING, Outbox
from crm_bridge.sinks import RecordingFile, SinkContext
from crm_bridge.store import Store
from gateway.metrics import Metrics
from gateway.numberplan import PlanBook
from gateway.users import Role
from gateway.web import _json_body, _json_error, _require
from recordings.storage import Recordings

BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge", Bridge)


def build_bridge(crm: CrmConfig, *, store: Store, plans: PlanBook, recordings: Recordings, recordings_dir: Path,
                 region: str, metrics: Metrics | None = None, clock: Callable[[], float] = time.time) -> Bridge:
    """The bridge with the config's sinks (call ``start`` before the first call is stored)."""
    outbox = Outbox(store)

    def zone_of(shop_id: str | None) -> str:
        shops = plans.current.shops
        shop = shops.get(shop_id) if shop_id else None
        if shop is None and plans.current.default_shop:
            shop = shops.get(plans.current.default_shop)
        return shop.timezone if shop else "Europe/Moscow"

    async def recording_file(call_id: str) -> RecordingFile | None:
        kept = await recordings.get(call_id)
        if kept is None or kept.status != "ready" or not kept.file:
            return None
        return RecordingFile(recordings_dir / kept.file, kept.content_type or "audio/ogg", kept.duration or 0.0)

    ctx = SinkContext(outbox=outbox, clock=clock, region=region, public_base_url=crm.public_base_url,
                      zone_of=zone_of, recording_file=recording_file)
    if metrics is not None:
        metrics.crm_sinks = tuple(sink.name for sink in crm.sinks)
    return Bridge(store, build_sinks(crm, ctx), policy=crm.policy, clock=clock, metrics=metrics, outbox=outbox)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/admin/outbox", outbox_view)
    app.router.add_post("/api/admin/outbox/retry", retry)


async def outbox_view(request: web.Request) -> web.Response:
    _require(request, (Role.ADMIN,))
    bridge = request.app[BRIDGE]
    state = request.query.get("state", DEAD)
    if state not in (DEAD, PENDING):
        raise _json_error(web.HTTPBadRequest, "bad_state", "state: dead or pending")
    sink = request.query.get("sink") or None
    if sink is not None and sink not in bridge.sinks:
        raise _json_error(web.HTTPBadRequest, "bad_sink", f"no CRM sink named {sink[:40]!r}")
    counts = await bridge.outbox.counts(bridge.clock())
    entries = await bridge.outbox.listed(state, sink=sink)
    sinks = [{"name": name, "kind": s.kind, **counts.get(name, {})} for name, s in bridge.sinks.items()]
    return web.json_response({"sinks": sinks, "state": state, "entries": [e.to_json() for e in entries]})


async def retry(request: web.Request) -> web.Response:
    _require(request, (Role.ADMIN,))
    bridge = request.app[BRIDGE]
    body = await _json_body(request)
    if body.get("all_dead") is True:
        sink = body.get("sink")
        if sink is not None and sink not in bridge.sinks:
            raise _json_error(web.HTTPBadRequest, "bad_sink", "no CRM sink of that name")
        ids = await bridge.outbox.dead_ids(sink)
    else:
        given = body.get("entry_ids")
        if not isinstance(given, list) or not given or len(given) > 1000 or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in given):
            raise _json_error(web.HTTPBadRequest, "bad_entry_ids", "entry_ids: a list of 1 to 1000 entry ids")
        ids = given
    return web.json_response({"retried": await bridge.retry_now(ids)})
