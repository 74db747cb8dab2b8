"""Call scenarios: real AMI on the wire, one Linkedid per call, fresh ids, the
header sets of the Asterisk 22 captures, a consistent life of every channel and
bridge; and the demo PBX playing them to a connected client."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from connectors.ami.codec import AmiCodec, AmiMessage
from connectors.ami.demo_pbx import DemoPbx
from connectors.ami.scenarios import CallFactory, Scenario
from connectors.ami.server import AmiServer, encode_message
from tests.test_ami_server import Client

CAPTURES = Path(__file__).parent / "captures" / "asterisk-22"
START = 1795736348.0
CALLER, NAME, SHOP_A, SHOP_B, YANDEX, AVITO = (
    "+79161110001",
    "Иван Петров",
    "+74950000001",
    "+74950000002",
    "+74950000003",
    "+74950000004",
)

Builder = Callable[[CallFactory], Scenario]
BUILDERS: dict[str, Builder] = {
    "direct_answered": lambda f: f.direct_answered(CALLER, NAME, SHOP_A, "101", ring=2.0, talk=3.0),
    "direct_missed": lambda f: f.direct_missed(CALLER, NAME, SHOP_A, "101"),
    "abandoned_ringing": lambda f: f.abandoned_ringing(CALLER, "Olga Smirnova", SHOP_A, "101", ring=5.0),
    "busy": lambda f: f.busy(CALLER, NAME, SHOP_A, "101"),
    "ring_group_first": lambda f: f.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering="101"),
    "ring_group_second": lambda f: f.ring_group(CALLER, NAME, AVITO, ("101", "102"), answering="102"),
    "ring_group_missed": lambda f: f.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering=None),
    "queue_answered": lambda f: f.queue(CALLER, NAME, YANDEX, answering="102"),
    "queue_abandoned_ringing": lambda f: f.queue(CALLER, NAME, YANDEX, abandon_after=12.0),
    "queue_abandoned_between": lambda f: f.queue(CALLER, NAME, YANDEX, abandon_after=8.5),
    "queue_timeout": lambda f: f.queue(CALLER, NAME, YANDEX, timeout=20.0),
    "queue_timeout_default": lambda f: f.queue(CALLER, "", YANDEX),
    "blind_transfer": lambda f: f.blind_transfer(CALLER, NAME, SHOP_A, "101", "102"),
    "redirect": lambda f: f.redirect(CALLER, NAME, SHOP_A, "101", "102"),
    "attended_transfer": lambda f: f.attended_transfer(CALLER, NAME, SHOP_A, "101", "102"),
    "click_to_call": lambda f: f.click_to_call(
        "101", "+79161110007", "+74950000002", channel_id="c2c-1795736444-agent",
        action_id="g_click_to_call-2", account="click2call",
    ),
    "click_to_call_unanswered": lambda f: f.click_to_call(
        "102", "+79161110007", SHOP_A, channel_id="c2c-x", answered=False, action_id="a-1"
    ),
}

# Snapshot and bridge headers in Asterisk's order (manager.c, stasis_bridges.c).
SNAPSHOT = [
    "Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName", "ConnectedLineNum",
    "ConnectedLineName", "Language", "AccountCode", "Context", "Exten", "Priority", "Uniqueid", "Linkedid",
]
BRIDGE = [
    "BridgeUniqueid", "BridgeType", "BridgeTechnology", "BridgeCreator", "BridgeName", "BridgeNumChannels",
    "BridgeVideoSourceMode",
]


def build(name: str) -> Scenario:
    return BUILDERS[name](CallFactory(start_epoch=START, rng=random.Random(1)))


def messages(scenario: Scenario) -> list[AmiMessage]:
    return [m for _, m in scenario]


def events(scenario: Scenario, name: str) -> list[AmiMessage]:
    return [m for _, m in scenario if m["Event"] == name]


def is_chanvar(key: str) -> bool:
    return key.endswith("ChanVariable") or key.startswith("ChanVariable(")


def header_layout(message: AmiMessage) -> tuple[str, ...]:
    return tuple(k for k in message if not k.startswith("_") and not is_chanvar(k))


def captured_events() -> list[AmiMessage]:
    out: list[AmiMessage] = []
    for path in sorted(CAPTURES.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["_dir"] == "in" and "Event" in record:
                out.append(record)
    return out


def captured_layouts() -> dict[str, set[tuple[str, ...]]]:
    layouts: dict[str, set[tuple[str, ...]]] = {}
    for record in captured_events():
        layouts.setdefault(str(record["Event"]), set()).add(header_layout(record))
    return layouts


def prefixed(prefix: str, keys: Iterable[str]) -> list[str]:
    return [prefix + k for k in keys]


def check_lifecycle(msgs: Iterable[AmiMessage]) -> None:
    """Every channel is created once, used only while alive, hung up once; every
    bridge entered and left consistently and destroyed empty."""
    live: dict[str, str] = {}
    gone: set[str] = set()
    bridges: dict[str, set[str]] = {}
    destroyed: set[str] = set()
    for msg in msgs:
        event = msg["Event"]
        uid = msg.get("Uniqueid")
        if event == "Newchannel":
            assert isinstance(uid, str) and uid not in live and uid not in gone, msg
            live[uid] = str(msg["Channel"])
        elif isinstance(uid, str) and "Channel" in msg:
            assert uid in live, f"{event} for unknown or dead channel {msg['Channel']}"
            assert live[uid] == msg["Channel"]
        dest = msg.get("DestUniqueid")
        if isinstance(dest, str):
            assert dest in live, f"{event} to unknown or dead channel {msg.get('DestChannel')}"
        bridge = msg.get("BridgeUniqueid")
        if event == "BridgeCreate":
            assert isinstance(bridge, str) and bridge not in bridges
            bridges[bridge] = set()
        elif event in ("BridgeEnter", "BridgeLeave"):
            assert isinstance(bridge, str) and bridge in bridges and bridge not in destroyed
            members = bridges[bridge]
            if event == "BridgeEnter":
                assert msg["Channel"] not in members
                members.add(str(msg["Channel"]))
            else:
                members.remove(str(msg["Channel"]))
            assert msg["BridgeNumChannels"] == str(len(members))
        elif event == "BridgeDestroy":
            assert isinstance(bridge, str) and not bridges[bridge], "bridge destroyed with members"
            destroyed.add(bridge)
        if event == "Hangup":
            assert isinstance(uid, str)
            del live[uid]
            gone.add(uid)
    assert not live, f"channels never hung up: {sorted(live.values())}"
    assert set(bridges) == destroyed, "bridges never destroyed"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_serialises_to_ami_the_codec_parses_back(name: str) -> None:
    msgs = messages(build(name))
    data = b"".join(encode_message(m) for m in msgs)
    codec = AmiCodec(drop_events=frozenset())
    # Fed in awkward pieces: a Cyrillic name split across reads must survive.
    for i in range(0, len(data), 997):
        codec.receive_data(data[i : i + 997])
    parsed = list(codec.messages())
    assert parsed == msgs
    assert [list(m) for m in parsed] == [list(m) for m in msgs]
    assert codec.skipped == 0


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_call_one_linkedid(name: str) -> None:
    msgs = messages(build(name))
    linked = {str(v) for m in msgs for k, v in m.items() if k.endswith("Linkedid")}
    assert len(linked) == 1
    (linkedid,) = linked
    first = next(m for m in msgs if m["Event"] == "Newchannel")
    assert linkedid == first["Uniqueid"]  # the first channel's id, as Asterisk does
    if name.startswith("click_to_call"):
        assert linkedid.startswith("c2c-")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_channels_and_bridges_live_consistently(name: str) -> None:
    check_lifecycle(messages(build(name)))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_delays_are_non_negative_and_ids_look_real(name: str) -> None:
    scenario = build(name)
    assert all(delay >= 0 for delay, _ in scenario)
    for msg in messages(scenario):
        uid = msg.get("Uniqueid")
        if isinstance(uid, str) and not uid.startswith("c2c-"):
            epoch, seq = uid.split(".")
            assert int(epoch) >= int(START) and seq.isdigit()
        channel = msg.get("Channel")
        if isinstance(channel, str) and channel.startswith("PJSIP/"):
            endpoint, _, suffix = channel.removeprefix("PJSIP/").rpartition("-")
            assert endpoint in ("trunk", "101", "102", "103", "104") and len(suffix) == 8
            int(suffix, 16)


def test_header_sets_match_the_captures() -> None:
    layouts = captured_layouts()
    seen: Counter[str] = Counter()
    for name in BUILDERS:
        for msg in messages(build(name)):
            event = str(msg["Event"])
            if event not in layouts:
                continue
            layout = header_layout(msg)
            if event == "BridgeEnter" and "SwapUniqueid" in msg:
                # Documented optional header of a Local channel optimisation swap;
                # no capture has one.
                layout = tuple(k for k in layout if k != "SwapUniqueid")
            assert layout in layouts[event], f"{name}: {event} headers {layout} not as captured"
            seen[event] += 1
    # Every captured call event type the scenarios are meant to produce was checked.
    for event in (
        "Newchannel", "Newstate", "NewConnectedLine", "NewCallerid", "NewAccountCode", "DialBegin", "DialState",
        "DialEnd", "BridgeCreate", "BridgeEnter", "BridgeLeave", "BridgeDestroy", "HangupRequest",
        "SoftHangupRequest", "Hangup", "QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon",
        "AgentCalled", "AgentRingNoAnswer", "AgentConnect", "AgentComplete", "BlindTransfer", "Unhold",
        "MixMonitorStart", "VarSet", "Newexten", "DeviceStateChange", "QueueMemberStatus", "Cdr",
        "OriginateResponse",
    ):
        assert seen[event], f"no scenario produced {event}"


def test_privileges_match_the_captures() -> None:
    captured: dict[str, set[str]] = {}
    for record in captured_events():
        if "Privilege" in record:
            captured.setdefault(str(record["Event"]), set()).add(str(record["Privilege"]))
    for name in BUILDERS:
        for msg in messages(build(name)):
            event = str(msg["Event"])
            expected = captured.get(event, {"call,all"})  # events no capture has are all call class
            assert msg["Privilege"] in expected, f"{name}: {event} Privilege {msg['Privilege']}"


def test_chanvariables_carry_did_did_name_and_recfile() -> None:
    msgs = messages(build("direct_answered"))
    newchannel = msgs[0]
    assert newchannel["ChanVariable"] == ["DID=", "DID_NAME=", "RECFILE="]
    dial = events(build("direct_answered"), "DialBegin")[0]
    chanvars = dial["ChanVariable"]
    assert isinstance(chanvars, list)
    assert chanvars[:2] == ["DID=+74950000001", "DID_NAME=shop A"]
    assert chanvars[2].startswith("RECFILE=/var/spool/asterisk/recordings/") and chanvars[2].endswith(".wav")
    assert dial["DestChanVariable"] == chanvars  # inherited by the agent's leg


def test_ids_are_fresh_across_calls() -> None:
    factory = CallFactory(start_epoch=START, rng=random.Random(3))
    seen_uids: set[str] = set()
    seen_channels: set[str] = set()
    seen_bridges: set[str] = set()
    seen_linkedids: set[str] = set()
    for _ in range(3):
        for name, builder in BUILDERS.items():
            if name.startswith("click_to_call"):
                continue  # its Linkedid is the ChannelId the caller chose
            msgs = messages(builder(factory))
            uids = {str(m["Uniqueid"]) for m in msgs if m["Event"] == "Newchannel"}
            channels = {str(m["Channel"]) for m in msgs if m["Event"] == "Newchannel"}
            bridges = {str(m["BridgeUniqueid"]) for m in msgs if m["Event"] == "BridgeCreate"}
            linkedid = str(msgs[0]["Linkedid"])
            assert not uids & seen_uids and not channels & seen_channels and not bridges & seen_bridges
            assert linkedid not in seen_linkedids
            seen_uids |= uids
            seen_channels |= channels
            seen_bridges |= bridges
            seen_linkedids.add(linkedid)


def test_durations_follow_the_parameters() -> None:
    factory = CallFactory(start_epoch=START)
    total = sum(d for d, _ in factory.direct_answered(CALLER, NAME, SHOP_A, ring=4.0, talk=30.0))
    assert 34.0 <= total < 34.1
    total = sum(d for d, _ in factory.direct_missed(CALLER, NAME, SHOP_A, ring=20.0))
    assert 20.0 <= total < 24.0  # 20 s ringing, then the caller listens to the prompt


def test_ring_group_second_member_answers() -> None:
    scenario = build("ring_group_second")
    ends = [(m["DestChannel"], m["DialStatus"]) for m in events(scenario, "DialEnd")]
    first = next(str(m["Channel"]) for m in events(scenario, "Newchannel") if str(m["Channel"]).startswith("PJSIP/101-"))
    second = next(str(m["Channel"]) for m in events(scenario, "Newchannel") if str(m["Channel"]).startswith("PJSIP/102-"))
    assert ends == [(first, "CANCEL"), (second, "ANSWER")]
    hangup = next(m for m in events(scenario, "Hangup") if m["Channel"] == first)
    assert (hangup["Cause"], hangup["Cause-txt"]) == ("26", "Answered elsewhere")
    entered = [m["Channel"] for m in events(scenario, "BridgeEnter")]
    assert second in entered and first not in entered


def test_queue_timeout_is_a_missed_call_without_abandon() -> None:
    scenario = build("queue_timeout")
    names = [m["Event"] for _, m in scenario]
    assert "QueueCallerAbandon" not in names and "AgentConnect" not in names
    assert all(m["DialStatus"] != "ANSWER" for m in events(scenario, "DialEnd"))
    no_answer = events(scenario, "AgentRingNoAnswer")
    assert [m["MemberName"] for m in no_answer] == ["Agent 101", "Agent 102", "Agent 103"]
    assert [m["RingTime"] for m in no_answer][:2] == ["8000", "8000"]  # milliseconds
    leave = names.index("QueueCallerLeave")
    # After leaving the queue the PBX itself answers to play the prompt.
    trunk_up = [i for i, (_, m) in enumerate(scenario) if m["Event"] == "Newstate" and m["ChannelStateDesc"] == "Up"]
    assert len(trunk_up) == 1 and trunk_up[0] > leave
    assert any(m["Value"] == "TIMEOUT" for m in events(scenario, "VarSet") if m["Variable"] == "QUEUESTATUS")
    # Each member leg: NOANSWER then CANCEL, as captured.
    statuses = [m["DialStatus"] for m in events(scenario, "DialEnd")]
    assert statuses == ["NOANSWER", "CANCEL"] * 3


def test_queue_answered_and_abandoned() -> None:
    answered = build("queue_answered")
    connect = events(answered, "AgentConnect")[0]
    assert connect["MemberName"] == "Agent 102"
    assert connect["HoldTime"] == "11" and connect["RingTime"] == "2"  # seconds, as in e_queue_answered
    abandoned = build("queue_abandoned_ringing")
    (abandon,) = events(abandoned, "QueueCallerAbandon")
    assert abandon["HoldTime"] == "12"
    between = build("queue_abandoned_between")
    assert len(events(between, "QueueCallerAbandon")) == 1
    assert [m["DialStatus"] for m in events(between, "DialEnd")] == ["NOANSWER", "CANCEL"]


def test_redirect_has_no_transfer_event_and_the_customer_dials_again() -> None:
    scenario = build("redirect")
    names = [m["Event"] for _, m in scenario]
    assert "BlindTransfer" not in names and "AttendedTransfer" not in names
    trunk = str(events(scenario, "Newchannel")[0]["Channel"])
    agent1 = next(str(m["Channel"]) for m in events(scenario, "Newchannel") if str(m["Channel"]).startswith("PJSIP/101-"))
    dials = events(scenario, "DialBegin")
    assert [m["Channel"] for m in dials] == [trunk, trunk]  # the new Dial comes from the customer channel
    assert str(dials[1]["DestChannel"]).startswith("PJSIP/102-")
    assert dials[1]["Context"] == "internal" and dials[1]["Exten"] == "102"
    hangup_101 = next(i for i, (_, m) in enumerate(scenario) if m["Event"] == "Hangup" and m["Channel"] == agent1)
    second_dial = next(i for i, (_, m) in enumerate(scenario) if m is dials[1])
    assert hangup_101 < second_dial  # the first bridge dissolves and 101 is gone first
    assert [m["DialStatus"] for m in events(scenario, "DialEnd")] == ["ANSWER", "ANSWER"]


def test_attended_transfer_through_local_channels() -> None:
    scenario = build("attended_transfer")
    msgs = messages(scenario)
    locals_ = [str(m["Channel"]) for m in events(scenario, "Newchannel") if str(m["Channel"]).startswith("Local/")]
    assert len(locals_) == 2 and locals_[0].endswith(";1") and locals_[1].endswith(";2")
    assert locals_[0].startswith("Local/102@internal-") and locals_[0][:-2] == locals_[1][:-2]
    (xfer,) = events(scenario, "AttendedTransfer")
    trunk = str(msgs[0]["Channel"])
    assert xfer["TransfereeChannel"] == trunk
    assert xfer["TransferTargetChannel"] == locals_[0]
    assert xfer["DestType"] == "Bridge" and xfer["DestBridgeUniqueid"] == xfer["OrigBridgeUniqueid"]
    assert list(xfer) == [
        "Event", "Privilege", "Result",
        *prefixed("OrigTransferer", SNAPSHOT), "OrigTransfererChanVariable", *prefixed("Orig", BRIDGE),
        *prefixed("SecondTransferer", SNAPSHOT), "SecondTransfererChanVariable", *prefixed("Second", BRIDGE),
        *prefixed("Transferee", SNAPSHOT), "TransfereeChanVariable",
        *prefixed("TransferTarget", SNAPSHOT), "TransferTargetChanVariable",
        "IsExternal", "DestType", "DestBridgeUniqueid",
    ]
    (merge,) = events(scenario, "BridgeMerge")
    assert list(merge) == ["Event", "Privilege", *prefixed("To", BRIDGE), *prefixed("From", BRIDGE)]
    (local_bridge,) = events(scenario, "LocalBridge")
    assert local_bridge["LocalOptimization"] == "Yes" and local_bridge["Exten"] == "102"
    (begin,) = events(scenario, "LocalOptimizationBegin")
    (end,) = events(scenario, "LocalOptimizationEnd")
    assert begin["SourceChannel"] == trunk and begin["Id"] == end["Id"] and end["Success"] == "Yes"
    # Who ends up talking: replay the bridge moves.
    members: dict[str, set[str]] = {}
    for msg in msgs:
        if msg["Event"] == "BridgeEnter":
            members.setdefault(str(msg["BridgeUniqueid"]), set()).add(str(msg["Channel"]))
        elif msg["Event"] == "BridgeLeave":
            members[str(msg["BridgeUniqueid"])].discard(str(msg["Channel"]))
        elif msg["Event"] == "HangupRequest" and msg["Channel"] == trunk:
            break
    talking = [m for m in members.values() if m]
    assert len(talking) == 1
    (pair,) = talking
    assert trunk in pair and any(c.startswith("PJSIP/102-") for c in pair)
    swap = next(m for m in events(scenario, "BridgeEnter") if "SwapUniqueid" in m)
    assert swap["Channel"] == trunk


def test_click_to_call_starts_with_dest_only_dial_and_originate_response() -> None:
    scenario = build("click_to_call")
    first_dial = events(scenario, "DialBegin")[0]
    assert "Channel" not in first_dial and first_dial["DestUniqueid"] == "c2c-1795736444-agent"
    (response,) = events(scenario, "OriginateResponse")
    assert response["ActionID"] == "g_click_to_call-2" and response["Response"] == "Success"
    assert response["Reason"] == "4"
    second_dial = events(scenario, "DialBegin")[1]
    assert second_dial["DialString"] == "+79161110007@trunk"
    unanswered = build("click_to_call_unanswered")
    assert [m["DialStatus"] for m in events(unanswered, "DialEnd")] == ["ANSWER", "NOANSWER"]
    plain = CallFactory(start_epoch=START).click_to_call("101", "+79161110007", SHOP_A, channel_id="c2c-2")
    assert "ActionID" not in events(plain, "OriginateResponse")[0]


def test_invalid_parameters_are_refused() -> None:
    factory = CallFactory(start_epoch=START)
    with pytest.raises(ValueError):
        factory.ring_group(CALLER, NAME, SHOP_B, ("101", "102"), answering="103")
    with pytest.raises(ValueError):
        factory.queue(CALLER, NAME, YANDEX, answering="104")
    with pytest.raises(ValueError):
        factory.direct_answered(CALLER, NAME, SHOP_A, ring=-1.0)


async def collect_until(client: Client, marker: str, timeout: float = 30.0) -> list[AmiMessage]:
    received: list[AmiMessage] = []
    while True:
        msg = await client.read(timeout)
        if msg.get("UserEvent") == marker:
            return received
        received.append(msg)


async def test_demo_pbx_plays_n_calls_to_a_connected_client() -> None:
    async with AmiServer(failed_login_delay=0) as server:
        client = await Client.connect(server.port)
        await client.login()
        demo = DemoPbx(server, rng=random.Random(7))
        collector = asyncio.create_task(collect_until(client, "demo-done"))
        await asyncio.wait_for(demo.run(interval=0, speed=0, calls=40), 30)
        await server.send_event({"Event": "UserEvent", "UserEvent": "demo-done"})
        received = await collector
        await client.close()
    assert demo.calls_started == 40
    calls: dict[str, list[AmiMessage]] = {}
    for msg in received:
        linked = next((v for k, v in msg.items() if k.endswith("Linkedid")), None)
        if isinstance(linked, str):
            calls.setdefault(linked, []).append(msg)
    assert len(calls) == 40
    check_lifecycle(received)  # calls overlap; every id is unique across them
    for msgs in calls.values():
        # Each call's own events arrive in its order: created first, hung up last.
        assert msgs[0]["Event"] == "Newchannel"
        assert msgs[-1]["Event"] in ("Hangup", "Cdr", "SoftHangupRequest")
    kinds = Counter(str(m["Event"]) for m in received)
    # A realistic mix: answered, missed, queue calls and the noise around them.
    assert kinds["BridgeEnter"] and kinds["QueueCallerJoin"] and kinds["VarSet"] > kinds["Hangup"]
    names = {str(m["CallerIDName"]) for m in received if m["Event"] == "Newchannel"}
    assert any(any("а" <= ch <= "я" for ch in name.lower()) for name in names)  # Cyrillic callers


async def test_demo_pbx_answers_an_originate_with_its_call() -> None:
    async with AmiServer(failed_login_delay=0) as server:
        default = server.action_handlers["Originate"]
        client = await Client.connect(server.port)
        await client.login()
        demo = DemoPbx(server, rng=random.Random(11))
        run = asyncio.create_task(demo.run(interval=3600, speed=0))
        await asyncio.sleep(0)
        action_id = client.send(
            "Originate",
            {
                "Channel": "PJSIP/102",
                "Context": "click-to-call",
                "Exten": "+79161230000",
                "Priority": "1",
                "Async": "true",
                "ChannelId": "c2c-test-1",
                "Variable": ["OUTCID=+74950000002"],
            },
        )
        response: AmiMessage | None = None
        ours: list[AmiMessage] = []
        while True:
            msg = await client.read()
            if "Event" not in msg and msg.get("ActionID") == action_id:
                response = msg
            elif msg.get("Linkedid") == "c2c-test-1" or msg.get("DestLinkedid") == "c2c-test-1":
                ours.append(msg)
            elif msg.get("Event") == "OriginateResponse" and msg.get("Uniqueid") == "c2c-test-1":
                ours.append(msg)
            if any(m["Event"] == "Hangup" and m.get("Uniqueid") == "c2c-test-1" for m in ours):
                break
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert server.action_handlers["Originate"] == default
        await client.close()
    assert response is not None and response["Message"] == "Originate successfully queued"
    assert any(m["Event"] == "OriginateResponse" and m.get("ActionID") == action_id for m in ours)
    newchannels = [m for m in ours if m["Event"] == "Newchannel"]
    assert newchannels[0]["Uniqueid"] == "c2c-test-1"
    dial = [m for m in ours if m["Event"] == "DialBegin"]
    assert "Channel" not in dial[0] and dial[-1]["DialString"] == "+79161230000@trunk"
    caller_ids = [m for m in ours if m["Event"] == "NewCallerid" and m["CallerIDNum"] == "+74950000002"]
    assert caller_ids  # the OUTCID of the Originate is shown to the customer
    assert len(server.originates) == 1
