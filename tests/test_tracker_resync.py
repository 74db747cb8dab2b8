"""After a gap the PBX is the source of truth: the resync listing (the real
CoreShowChannels answer of the resync_snapshot capture) rebuilds calls the
gateway did not see start, and calls it held that are gone end as interrupted."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.events import LiveLegsListed, PbxRestarted
from gateway.replay import replay_capture
from gateway.tracker import CallTracker
from tests.conftest import CAPTURES
from tests.test_tracker_scenarios import run
from connectors.ami.scenarios import CallFactory


def _lines(name: str) -> list[str]:
    return (CAPTURES / f"{name}.jsonl").read_text().splitlines()


def test_gateway_started_mid_call_rebuilds_it_from_the_listing(tmp_path: Path) -> None:
    lines = _lines("resync_snapshot")
    first_listed = next(i for i, line in enumerate(lines) if '"Event": "CoreShowChannel"' in line)
    capture = tmp_path / "late.jsonl"
    capture.write_text("\n".join(lines[:3] + lines[first_listed:]) + "\n")  # banner, login, then from the listing
    (record,) = [r.to_json() for r in replay_capture(capture)]
    assert record["call_id"] == "1795736548.35"
    assert (record["direction"], record["caller"], record["outcome"], record["answered_by"], record["talked"]) == (
        "inbound", "+79161110014", "answered", "101", ["101"])
    assert record["interrupted"] is False and record["ended"] is True


def test_listing_that_still_has_the_call_changes_nothing() -> None:
    (record,) = [r.to_json() for r in replay_capture(CAPTURES / "resync_snapshot.jsonl")]
    assert record["interrupted"] is False and record["rang"] == ["101"]


def test_call_gone_while_away_is_finished_interrupted_with_best_known_outcome() -> None:
    scenario = CallFactory(start_epoch=1_800_000_000.0).direct_answered("+79161110001", "Иван", "+74950000001", "101")
    cut = next(i for i, (_, m) in enumerate(scenario) if m.get("Event") == "BridgeEnter")
    tracker = CallTracker()
    records, _ = run(scenario[: cut + 2], tracker)
    assert records == [] and tracker.live_call_count == 1
    effects = tracker.feed(LiveLegsListed(1_800_000_100.0, frozenset()))
    (finished,) = [e.record for e in effects if hasattr(e, "record")]
    assert (finished.outcome, finished.answered_by, finished.interrupted) == ("answered", "101", True)
    assert tracker.live_call_count == 0


def test_restart_finishes_every_open_call_interrupted() -> None:
    factory = CallFactory(start_epoch=1_800_000_000.0)
    ringing = factory.direct_missed("+79161110001", "Иван", "+74950000001", "101")
    tracker = CallTracker()
    cut = next(i for i, (_, m) in enumerate(ringing) if m.get("ChannelStateDesc") == "Ringing")
    run(ringing[: cut + 1], tracker)
    effects = tracker.feed(PbxRestarted(1_800_000_010.0))
    kinds = [type(e).__name__ for e in effects]
    assert kinds == ["AgentRingStopped", "CallFinished"]  # no ghost pop left on the agent's page
    record = effects[-1].record  # type: ignore[union-attr]
    assert record.interrupted and record.outcome == "missed" and record.ended_at == 1_800_000_010.0


def test_shutdown_event_of_the_restart_capture_is_a_restart(tmp_path: Path) -> None:
    # A call open when the real capture's Shutdown arrives is finished interrupted.
    call = [json.loads(line) for line in _lines("a_answered")]
    bridge = next(i for i, m in enumerate(call) if m.get("Event") == "BridgeEnter")
    shutdown = [json.loads(line) for line in _lines("restart") if '"Shutdown"' in line]
    capture = tmp_path / "restart.json"
    capture.write_text(json.dumps(call[: bridge + 2] + shutdown))
    (record,) = [r.to_json() for r in replay_capture(capture)]
    assert record["interrupted"] is True and record["ended"] is True and record["answered_by"] == "101"
