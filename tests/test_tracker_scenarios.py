"""The core over calls built by the demo PBX's scenario factory, for the cases
no capture covers (ring group answered by its second member, AMI Redirect,
attended transfer through Local channels, queue timeout), and the effects that
drive pops: who rings, who stops ringing and why, who answers.

Events go through the live path: AMI bytes -> codec -> normaliser -> tracker.
"""

from __future__ import annotations

import pytest

from connectors.ami.codec import AmiCodec
from connectors.ami.normalise import AmiNormaliser
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import encode_message
from gateway.effects import AgentAnswered, AgentRingStarted, AgentRingStopped, CallFinished, Effect
from gateway.record import CallRecord
from gateway.tracker import CallTracker

CALLER, NAME = "+79161110020", "Иван Петров"
SHOP_A, SHOP_B, YANDEX = "+74950000001", "+74950000002", "+74950000003"


def run(scenario: Scenario, tracker: CallTracker | None = None) -> tuple[list[CallRecord], list[Effect]]:
    """Feed a scenario's bytes through codec, normaliser and tracker; times from the scenario's delays."""
    codec, normaliser = AmiCodec(), AmiNormaliser()
    tracker = tracker or CallTracker()
    effects: list[Effect] = []
    now = 1_800_000_000.0
    for delay, message in scenario:
        now += delay
        codec.receive_data(encode_message(message))
        for parsed in codec.messages():
            for event in normaliser.normalise(parsed, now):
                effects.extend(tracker.feed(event))
    records = [e.record for e in effects if isinstance(e, CallFinished)]
    return records, effects


def summary(record: CallRecord) -> tuple[object, ...]:
    return (record.direction, record.outcome, record.answered_by, list(record.rang), list(record.talked))


def ring_effects(effects: list[Effect]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for e in effects:
        if isinstance(e, AgentRingStarted):
            out.append(("ring", e.extension))
        elif isinstance(e, AgentRingStopped):
            out.append(("stop", e.extension, e.reason))
        elif isinstance(e, AgentAnswered):
            out.append(("answer", e.extension))
    return out


@pytest.fixture
def factory() -> CallFactory:
    return CallFactory(start_epoch=1_800_000_000.0)


def test_ring_group_second_member_answers(factory: CallFactory) -> None:
    (record,), effects = run(factory.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering="102"))
    assert summary(record) == ("inbound", "answered", "102", ["101", "102"], ["102"])
    assert record.caller == CALLER and record.dialled == SHOP_B and record.caller_name == NAME
    # One pop each; the first stops ringing because a colleague answered (cause 26),
    # even though its CANCEL arrives before the colleague's ANSWER.
    assert ring_effects(effects) == [
        ("ring", "101"), ("ring", "102"), ("answer", "102"), ("stop", "101", "answered_elsewhere"),
    ]


def test_ring_group_nobody_answers_is_one_missed_call(factory: CallFactory) -> None:
    (record,), effects = run(factory.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering=None))
    assert summary(record) == ("inbound", "missed", None, ["101", "102"], [])
    stops = [e for e in ring_effects(effects) if e[0] == "stop"]
    assert sorted(stops) == [("stop", "101", "stopped_ringing"), ("stop", "102", "stopped_ringing")]


def test_ami_redirect_of_an_answered_call_keeps_one_record(factory: CallFactory) -> None:
    (record,), effects = run(factory.redirect(CALLER, NAME, SHOP_A, "101", "102"))
    assert summary(record) == ("inbound", "answered", "101", ["101", "102"], ["101", "102"])
    assert ("ring", "102") in ring_effects(effects) and ("answer", "102") in ring_effects(effects)


def test_attended_transfer_through_local_channels_is_one_call(factory: CallFactory) -> None:
    records, effects = run(factory.attended_transfer(CALLER, NAME, SHOP_A, "101", "102"))
    assert len(records) == 1  # the consultation is not a separate call
    (record,) = records
    assert summary(record) == ("inbound", "answered", "101", ["101", "102"], ["101", "102"])
    assert record.caller == CALLER
    assert ("ring", "102") in ring_effects(effects)
    assert not [e for e in ring_effects(effects) if e[0] == "stop"]


def test_blind_transfer(factory: CallFactory) -> None:
    (record,), _ = run(factory.blind_transfer(CALLER, NAME, SHOP_A, "101", "102"))
    assert summary(record) == ("inbound", "answered", "101", ["101", "102"], ["101", "102"])


def test_queue_timeout_is_missed_with_one_record(factory: CallFactory) -> None:
    (record,), effects = run(factory.queue(CALLER, NAME, YANDEX, timeout=20.0))
    assert summary(record) == ("inbound", "missed", None, ["101", "102", "103"], [])
    assert record.reason == "noanswer"
    assert [e for e in ring_effects(effects) if e[0] == "stop"] == [
        ("stop", "101", "stopped_ringing"), ("stop", "102", "stopped_ringing"), ("stop", "103", "stopped_ringing"),
    ]


def test_queue_answered_by_second_member(factory: CallFactory) -> None:
    (record,), effects = run(factory.queue(CALLER, NAME, YANDEX, answering="102"))
    assert summary(record) == ("inbound", "answered", "102", ["101", "102"], ["102"])
    assert ring_effects(effects) == [("ring", "101"), ("stop", "101", "stopped_ringing"), ("ring", "102"),
                                     ("answer", "102")]


@pytest.mark.parametrize("after", [8.5, 12.0])
def test_queue_abandon_between_or_during_rings(factory: CallFactory, after: float) -> None:
    (record,), effects = run(factory.queue(CALLER, NAME, YANDEX, abandon_after=after))
    assert record.outcome == "abandoned" and record.answered_by is None
    assert record.ring_seconds == pytest.approx(after, abs=0.5)


def test_abandoned_ringing_withdraws_with_caller_hung_up(factory: CallFactory) -> None:
    (record,), effects = run(factory.abandoned_ringing(CALLER, NAME, SHOP_A, "101", ring=5.0))
    assert record.outcome == "abandoned"
    assert ring_effects(effects) == [("ring", "101"), ("stop", "101", "caller_hung_up")]


def test_busy_agent_never_rang_so_no_pop(factory: CallFactory) -> None:
    (record,), effects = run(factory.busy(CALLER, NAME, SHOP_A, "101"))
    assert summary(record) == ("inbound", "missed", None, ["101"], [])
    assert ring_effects(effects) == []


def test_click_to_call_unanswered_by_customer_fails_with_reason(factory: CallFactory) -> None:
    (record,), effects = run(factory.click_to_call("102", "+79161110007", SHOP_A, channel_id="c2c-x", answered=False))
    assert summary(record) == ("outbound", "failed", None, [], [])
    assert record.caller == "102" and record.dialled == "+79161110007"
    assert ring_effects(effects) == []  # the agent's own leg of a click-to-call is not an offer


def test_overlapping_calls_stay_apart(factory: CallFactory) -> None:
    """Two calls interleaved message by message give two independent records."""
    a = factory.direct_answered(CALLER, NAME, SHOP_A, "101", ring=2.0, talk=3.0)
    b = factory.ring_group("+79161110021", "Olga", SHOP_B, ("102", "103"), answering="103")
    merged: Scenario = []
    for i in range(max(len(a), len(b))):
        merged += a[i : i + 1] + b[i : i + 1]
    records, _ = run(merged)
    by_caller = {r.caller: summary(r) for r in records}
    assert by_caller == {
        CALLER: ("inbound", "answered", "101", ["101"], ["101"]),
        "+79161110021": ("inbound", "answered", "103", ["102", "103"], ["103"]),
    }


def test_late_dial_end_after_answer_changes_nothing(factory: CallFactory) -> None:
    scenario = factory.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering="101")
    # Move every DialEnd of the losing member to after the answer and the bridge.
    late = [m for m in scenario if m[1].get("Event") == "DialEnd" and m[1].get("DialStatus") != "ANSWER"]
    rest = [m for m in scenario if m not in late]
    hangup_at = next(i for i, m in enumerate(rest) if m[1].get("Event") == "HangupRequest")
    (record,), _ = run(rest[:hangup_at] + late + rest[hangup_at:])
    assert summary(record) == ("inbound", "answered", "101", ["101", "102"], ["101"])
