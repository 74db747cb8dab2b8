"""Realistic calls as Asterisk 22 AMI event streams, for tests and the demo PBX.

A ``Scenario`` is the list of ``(delay, message)`` pairs one call produces:
``delay`` is the seconds to wait before sending that message, so the delays
of a scenario add up to the call's duration. ``CallFactory`` builds them with
fresh identifiers for every call (``Uniqueid``/``Linkedid`` as
``<epoch>.<sequence>``, ``PJSIP/<endpoint>-<8 hex digits>`` channel names,
uuid4 bridge ids, ``Local/<exten>@<context>-<8 hex digits>;1``/``;2``) and
carries one call per scenario: every channel of a scenario shares its Linkedid.

The PBX modelled is the reference one in ``shared/ami-traces/asterisk-22/conf``:
trunk endpoint ``trunk``, agents 101-104 (static members of queue ``sales``,
linear, 8 s per member, retry 1 s, Queue() timeout 60 s), DIDs +74950000001-4,
``channelvars = DID,DID_NAME,RECFILE``, MixMonitor on every inbound call. Header
sets and their order, causes, DialString values, the double NOANSWER+CANCEL
DialEnd of a queue member, the Dest*-only DialBegin of an Originate and the
noise (VarSet, Newexten, DeviceStateChange, QueueMemberStatus, Cdr) follow the
captures of that PBX (``tests/captures/asterisk-22``). CEL events are left out.

Flows with no capture are modelled on Asterisk's source and documentation:

* ``redirect`` -- AMI ``Redirect`` with no ExtraChannel on the answered customer
  channel. ``main/manager.c`` action_redirect calls ``ast_async_goto``;
  ``main/pbx.c`` ast_async_goto, for a bridged channel or one running a PBX,
  only does ``ast_explicit_goto`` plus ``ast_softhangup_nolock(chan,
  AST_SOFTHANGUP_ASYNCGOTO)`` (no SoftHangupRequest event, no transfer event).
  The channel leaves the basic bridge, whose NORMAL_FLAGS include
  ``AST_BRIDGE_FLAG_DISSOLVE_HANGUP`` (``main/bridge_basic.c``), so the bridge
  dissolves and the agent's channel, imparted by Dial with no after-bridge
  goto, is hung up (Normal Clearing). Dial returns in the customer's PBX,
  which resumes at internal,<exten>,1 and Dials the new agent from the customer
  channel: a new DialBegin whose caller is the trunk channel, as in
  h1_blind_transfer.
* ``attended_transfer`` -- ``main/bridge_basic.c`` feature_attended_transfer
  and its state machine (Asterisk 12+; AMI ``Atxfer`` queues the same DTMF
  feature): the transferer's bridge is held (Hold / MusicOnHoldStart), a
  ``Local/<exten>@<context>`` pair is requested with the transferer as
  requestor (so both halves share the call's Linkedid) and gets TRANSFERERNAME
  and ATTENDEDTRANSFER; a new basic "target" bridge is created, Local;1
  imparted into it, ``ast_call`` starts the dialplan on Local;2 (LocalBridge),
  calling_target_enter moves the transferer into the target bridge, Local;2
  Dials the agent. When the transferer hangs up in the consulting state,
  complete_enter merges the target bridge into the transferee bridge, kicking
  the transferer (BridgeMerge, BridgeLeave/BridgeEnter), and publishes
  AttendedTransfer (``main/stasis_bridges.c`` attended_transfer_to_ami:
  OrigTransferer/OrigBridge, SecondTransferer/SecondBridge, Transferee,
  TransferTarget, IsExternal, DestType Bridge, DestBridgeUniqueid). Both
  bridges are merge-inhibited during the transfer, so the Local pair optimises
  away only afterwards (``main/bridge.c`` bridges_allow_swap_optimization and
  try_swap_optimize_out, event format from ``main/core_local.c``
  local_message_to_ami). Modelled from the Local;1 side: two two-party basic
  bridges of equal priority give SWAP_TO_PEER_BRIDGE, so LocalOptimizationBegin
  (Source = the customer channel, DestUniqueId = Local;2), the customer is
  moved into the agent's bridge swapping out Local;2 (BridgeEnter with
  SwapUniqueid), LocalOptimizationEnd, Local;1 leaves, the emptied bridge is
  destroyed and both Local halves hang up. (Triggered from the Local;2 side,
  the agent would be moved into the customer's bridge instead.)
* In ``redirect`` the customer's dialplan resumes at priority 1 (the NoOp) of
  internal,<exten>, as written; in h1_blind_transfer the after-bridge goto of a
  transfer resumed at priority 2, which is a different code path.
* AMI event formats and the order of moves in a Local optimisation follow the
  Asterisk "AMI v2 Specification" (docs.asterisk.org, sections Transfers and
  Local Channel Optimization), the manager event documentation of Asterisk 22
  (AttendedTransfer, LocalBridge, LocalOptimizationBegin/End, BridgeMerge) and
  ``main/manager_bridging.c`` (BridgeMerge with To/From bridge snapshots,
  BridgeEnter with SwapUniqueid).

Where Asterisk runs the two sides of a move in different threads the order of
their events is not defined; the order produced here is one Asterisk can produce.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from connectors.ami.codec import AmiMessage

__all__ = [
    "AGENT_NAMES",
    "CallFactory",
    "DID_NAMES",
    "QUEUE",
    "Scenario",
]

Scenario: TypeAlias = list[tuple[float, AmiMessage]]
"""``(delay before this message in seconds, message)`` for each message of one call."""

QUEUE: Final = "sales"
TRUNK: Final = "trunk"
RECDIR: Final = "/var/spool/asterisk/recordings"
DIAL_TIMEOUT: Final = 20.0
QUEUE_MEMBER_TIMEOUT: Final = 8.0
QUEUE_RETRY: Final = 1.0
QUEUE_TIMEOUT: Final = 60.0
OUTBOUND_DIAL_TIMEOUT: Final = 30.0

DID_NAMES: Final[dict[str, str]] = {
    "+74950000001": "shop A",
    "+74950000002": "shop B",
    "+74950000003": "ad channel yandex",
    "+74950000004": "ad channel avito",
}
"""The reference number plan: DID -> DID_NAME set by the dialplan."""

AGENT_NAMES: Final[dict[str, str]] = {ext: f"Agent {ext}" for ext in ("101", "102", "103", "104")}

DOWN: Final = 0
RING: Final = 4
RINGING: Final = 5
UP: Final = 6
BUSY: Final = 7
_STATE_DESC: Final[dict[int, str]] = {DOWN: "Down", RING: "Ring", RINGING: "Ringing", UP: "Up", BUSY: "Busy"}
_CAUSE_TEXT: Final[dict[int, str]] = {
    0: "Unknown",
    16: "Normal Clearing",
    17: "User busy",
    26: "Answered elsewhere",
    127: "Interworking, unspecified",
}
# Device states as QueueMemberStatus numbers them (AST_DEVICE_*).
_MEMBER_STATUS: Final[dict[str, str]] = {"NOT_INUSE": "1", "INUSE": "2", "BUSY": "3", "RINGING": "6"}
_CHANVARS: Final = ("DID", "DID_NAME", "RECFILE")
# How long a caller listens to "nobody available" before hanging up (b_missed: 3 s).
_PROMPT_LISTEN: Final = 3.0
_RTP_QOS: Final = (
    ("RTPAUDIOQOS", "ssrc={ssrc};themssrc=3390111744;lp=0;rxjitter=0.000000;rxcount={count};txjitter=0.000250;"
     "txcount={count};rlp=0;rtt=0.000000;rxmes=0.000000;txmes=0.000000"),
    ("RTPAUDIOQOSJITTER", "minrxjitter=000.000000;maxrxjitter=000.000750;avgrxjitter=000.000312;"
     "stdevrxjitter=000.000186;mintxjitter=000.000000;maxtxjitter=000.000000;avgtxjitter=000.000000;"
     "stdevtxjitter=000.000000;"),
    ("RTPAUDIOQOSLOSS", "  minrxlost=000.000000;  maxrxlost=000.000000;  avgrxlost=000.000000;  "
     "stdevrxlost=000.000000;  mintxlost=000.000000;  maxtxlost=000.000000;  avgtxlost=000.000000;  "
     "stdevtxlost=000.000000;"),
    ("RTPAUDIOQOSRTT", "     minrtt=000.000000;     maxrtt=000.000000;     avgrtt=000.000000;     stdevrtt=000.000000;"),
    ("RTPAUDIOQOSMES", "   minrxmes=000.000000;   maxrxmes=000.000000;   avgrxmes=000.000000;   "
     "stdevrxmes=000.000000;   mintxmes=000.000000;   maxtxmes=000.000000;   avgtxmes=000.000000;   "
     "stdevtxmes=000.000000;"),
)
# Dial() clears these on the calling channel as it starts (a_answered).
_DIAL_VARS: Final = (
    "DIALSTATUS", "DIALEDPEERNUMBER", "DIALEDPEERNAME", "ANSWEREDTIME", "ANSWEREDTIME_MS", "DIALEDTIME",
    "DIALEDTIME_MS", "RINGTIME", "RINGTIME_MS", "PROGRESSTIME", "PROGRESSTIME_MS",
)


@dataclass
class _Channel:
    """What Asterisk's channel snapshot says about a channel at this moment."""

    name: str
    uniqueid: str
    linkedid: str
    state: int
    cid_num: str
    cid_name: str
    context: str
    exten: str
    priority: int = 1
    conn_num: str = "<unknown>"
    conn_name: str = "<unknown>"
    account: str = ""
    vars: dict[str, str] = field(default_factory=lambda: dict.fromkeys(_CHANVARS, ""))
    created: float = 0.0  # call time (s) at creation, for Cdr durations

    def snapshot(self, prefix: str = "") -> AmiMessage:
        return {
            f"{prefix}Channel": self.name,
            f"{prefix}ChannelState": str(self.state),
            f"{prefix}ChannelStateDesc": _STATE_DESC[self.state],
            f"{prefix}CallerIDNum": self.cid_num,
            f"{prefix}CallerIDName": self.cid_name,
            f"{prefix}ConnectedLineNum": self.conn_num,
            f"{prefix}ConnectedLineName": self.conn_name,
            f"{prefix}Language": "en",
            f"{prefix}AccountCode": self.account,
            f"{prefix}Context": self.context,
            f"{prefix}Exten": self.exten,
            f"{prefix}Priority": str(self.priority),
            f"{prefix}Uniqueid": self.uniqueid,
            f"{prefix}Linkedid": self.linkedid,
            f"{prefix}ChanVariable": [f"{k}={v}" for k, v in self.vars.items()],
        }

    def connect(self, other: _Channel) -> None:
        """Connected line := the other party's caller id."""
        self.conn_num, self.conn_name = other.cid_num, other.cid_name


@dataclass
class _Bridge:
    uniqueid: str
    members: list[_Channel] = field(default_factory=list)

    def snapshot(self, prefix: str = "") -> AmiMessage:
        return {
            f"{prefix}BridgeUniqueid": self.uniqueid,
            f"{prefix}BridgeType": "basic",
            f"{prefix}BridgeTechnology": "simple_bridge",
            f"{prefix}BridgeCreator": "<unknown>",
            f"{prefix}BridgeName": "<unknown>",
            f"{prefix}BridgeNumChannels": str(len(self.members)),
            f"{prefix}BridgeVideoSourceMode": "none",
        }


@dataclass
class _Agent:
    """A queue member's counters, as QueueMemberStatus reports them."""

    calls_taken: int = 0
    last_call: int = 0


@dataclass
class _Attempt:
    """One queue member rung for a caller."""

    leg: _Channel
    agent: str
    start: float
    answered: float | None = None


def _stamp(epoch: float, fmt: str) -> str:
    return time.strftime(fmt, time.gmtime(epoch))


class _Call:
    """Builds one call's scenario: a clock, the channels and the events."""

    def __init__(self, factory: CallFactory, start: float) -> None:
        self.f = factory
        self.start = start
        self.t = 0.0
        self._last = 0.0
        self.events: Scenario = []
        self.linkedid = ""
        self.did = ""
        self.did_name = ""

    # -- clock and output ---------------------------------------------------

    def wait(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("durations must be >= 0")
        self.t += seconds

    def epoch(self, t: float | None = None) -> float:
        return self.start + (self.t if t is None else t)

    def emit(self, message: AmiMessage) -> None:
        self.events.append((round(self.t - self._last, 6), message))
        self._last = self.t

    def event(self, name: str, privilege: str, *parts: AmiMessage, **extra: str) -> None:
        msg: AmiMessage = {"Event": name, "Privilege": privilege}
        for part in parts:
            msg.update(part)
        msg.update(extra)
        self.emit(msg)

    def chan_event(self, name: str, chan: _Channel, **extra: str) -> None:
        self.event(name, "call,all", chan.snapshot(), **extra)

    # -- channels and bridges -------------------------------------------------

    def new_channel(
        self,
        endpoint: str,
        *,
        state: int,
        cid_num: str,
        cid_name: str,
        context: str,
        exten: str,
        uniqueid: str | None = None,
    ) -> _Channel:
        uid = uniqueid or self.f._next_uniqueid(self.epoch())
        if not self.linkedid:
            self.linkedid = uid
        chan = _Channel(
            name=f"PJSIP/{endpoint}-{self.f._next_pjsip():08x}",
            uniqueid=uid,
            linkedid=self.linkedid,
            state=state,
            cid_num=cid_num,
            cid_name=cid_name,
            context=context,
            exten=exten,
            created=self.t,
        )
        self.chan_event("Newchannel", chan)
        return chan

    def new_local_pair(self, exten: str, context: str) -> tuple[_Channel, _Channel]:
        seq = self.f._next_local()
        base = f"Local/{exten}@{context}-{seq:08x}"
        pair = []
        for half, state in ((";1", DOWN), (";2", RING)):
            chan = _Channel(
                name=base + half,
                uniqueid=self.f._next_uniqueid(self.epoch()),
                linkedid=self.linkedid,
                state=state,
                cid_num="<unknown>",
                cid_name="<unknown>",
                context=context,
                exten=exten,
                created=self.t,
            )
            self.chan_event("Newchannel", chan)
            pair.append(chan)
        return pair[0], pair[1]

    def new_bridge(self) -> _Bridge:
        bridge = _Bridge(self.f._next_bridge_id())
        self.event("BridgeCreate", "call,all", bridge.snapshot())
        return bridge

    def bridge_enter(self, bridge: _Bridge, chan: _Channel, swap: _Channel | None = None) -> None:
        bridge.members.append(chan)
        extra = {"SwapUniqueid": swap.uniqueid} if swap is not None else {}
        self.event("BridgeEnter", "call,all", bridge.snapshot(), chan.snapshot(), **extra)

    def bridge_leave(self, bridge: _Bridge, chan: _Channel) -> None:
        bridge.members.remove(chan)
        self.event("BridgeLeave", "call,all", bridge.snapshot(), chan.snapshot())

    def bridge_destroy(self, bridge: _Bridge) -> None:
        self.event("BridgeDestroy", "call,all", bridge.snapshot())

    # -- channel events -------------------------------------------------------

    def set_var(self, chan: _Channel, name: str, value: str) -> None:
        plain = name.lstrip("_")
        if plain in chan.vars:
            chan.vars[plain] = value
        self.event("VarSet", "dialplan,all", chan.snapshot(), Variable=name, Value=value)

    def exten(self, chan: _Channel, context: str, exten: str, priority: int, app: str, data: str) -> None:
        chan.context, chan.exten, chan.priority = context, exten, priority
        self.event("Newexten", "dialplan,all", chan.snapshot(), Extension=exten, Application=app, AppData=data)

    def set_state(self, chan: _Channel, state: int) -> None:
        chan.state = state
        self.chan_event("Newstate", chan)

    def connected_line(self, chan: _Channel, other: _Channel) -> None:
        chan.connect(other)
        self.chan_event("NewConnectedLine", chan)

    def hangup_request(self, chan: _Channel, cause: int | None, tech_cause: int | None = None) -> None:
        extra: dict[str, str] = {}
        if cause is not None:
            extra["Cause"] = str(cause)
        if tech_cause is not None:
            extra["TechCause"] = str(tech_cause)
        self.chan_event("HangupRequest", chan, **extra)

    def soft_hangup_request(self, chan: _Channel, tech_cause: int | None = None) -> None:
        # Cause 16 here is AST_SOFTHANGUP_APPUNLOAD, set when a PBX run ends.
        extra = {"Cause": "16"}
        if tech_cause is not None:
            extra["TechCause"] = str(tech_cause)
        self.chan_event("SoftHangupRequest", chan, **extra)

    def hangup(self, chan: _Channel, cause: int, tech_cause: int | None = None) -> None:
        extra = {"Cause": str(cause), "Cause-txt": _CAUSE_TEXT[cause]}
        if tech_cause is not None:
            extra["TechCause"] = str(tech_cause)
        self.chan_event("Hangup", chan, **extra)

    def rtp_qos(self, chan: _Channel, seconds: float, peer: _Channel | None = None) -> None:
        """The RTP statistics Asterisk sets on a media channel as it goes down, and
        the ``...BRIDGED`` copies on its bridge peer (noise)."""
        count = str(max(0, int(seconds * 50)))
        ssrc = str(self.f.rng.getrandbits(31))
        for name, template in _RTP_QOS:
            value = template.format(ssrc=ssrc, count=count)
            if peer is not None:
                self.set_var(peer, name + "BRIDGED", value)
            self.set_var(chan, name, value)

    def device(self, device: str, state: str) -> None:
        self.event("DeviceStateChange", "call,all", Device=device, State=state)

    def agent_device(self, agent: str, state: str, *, member_first: bool = False) -> None:
        """An agent's DeviceStateChange and the QueueMemberStatus it causes (both
        orders occur in the captures)."""
        if member_first:
            self.member_status(agent, state)
            self.device(f"PJSIP/{agent}", state)
        else:
            self.device(f"PJSIP/{agent}", state)
            self.member_status(agent, state)

    def member_status(self, agent: str, state: str) -> None:
        counters = self.f._agent(agent)
        self.emit(
            {
                "Event": "QueueMemberStatus",
                "Privilege": "agent,all",
                "Queue": QUEUE,
                "MemberName": AGENT_NAMES.get(agent, f"Agent {agent}"),
                "Interface": f"PJSIP/{agent}",
                "StateInterface": f"PJSIP/{agent}",
                "Membership": "static",
                "Penalty": "0",
                "CallsTaken": str(counters.calls_taken),
                "LastCall": str(counters.last_call),
                "LastPause": "0",
                "LoginTime": str(self.f.login_time),
                "InCall": "0",
                "Status": _MEMBER_STATUS[state],
                "Paused": "0",
                "PausedReason": "",
                "Ringinuse": "0",
                "Wrapuptime": "0",
            }
        )

    def mixmonitor_start(self, chan: _Channel) -> None:
        self.chan_event("MixMonitorStart", chan)

    # -- dialling -------------------------------------------------------------

    def dial_event(self, name: str, caller: _Channel | None, dest: _Channel, **extra: str) -> None:
        # An Originate's first leg has no calling channel: only Dest* fields.
        parts = [dest.snapshot("Dest")] if caller is None else [caller.snapshot(), dest.snapshot("Dest")]
        self.event(name, "call,all", *parts, **extra)

    def dial_begin(self, caller: _Channel | None, dest: _Channel, dialstring: str) -> None:
        self.dial_event("DialBegin", caller, dest, DialString=dialstring)

    def dial_state(self, caller: _Channel | None, dest: _Channel, status: str = "RINGING") -> None:
        self.dial_event("DialState", caller, dest, DialStatus=status)

    def dial_end(self, caller: _Channel | None, dest: _Channel, status: str) -> None:
        self.dial_event("DialEnd", caller, dest, DialStatus=status)

    def dial_app_vars(self, chan: _Channel) -> None:
        """Dial() clears its result variables as it starts (noise)."""
        for name in _DIAL_VARS:
            self.set_var(chan, name, "")

    def dial_result_vars(self, chan: _Channel, status: str, dialled: float, answered: float | None) -> None:
        if answered is not None:
            self.set_var(chan, "ANSWEREDTIME", str(int(answered)))
            self.set_var(chan, "ANSWEREDTIME_MS", str(int(answered * 1000)))
        self.set_var(chan, "DIALEDTIME", str(int(dialled)))
        self.set_var(chan, "DIALEDTIME_MS", str(int(dialled * 1000)))
        self.set_var(chan, "DIALSTATUS", status)

    def agent_leg(self, caller: _Channel, agent: str, *, exten: str, app: str = "AppDial") -> _Channel:
        """A channel to an agent's phone, up to the moment before DialBegin."""
        chan = self.new_channel(
            agent,
            state=DOWN,
            cid_num=agent,
            cid_name=AGENT_NAMES.get(agent, f"Agent {agent}"),
            context="internal",
            exten="s",
        )
        inherited = [(name, caller.vars[name]) for name in ("RECFILE", "DID_NAME", "DID") if caller.vars.get(name)]
        if app == "AppQueue":
            # app_queue shows the connected line (with RECFILE already copied)
            # before the inherited variables are set one by one.
            chan.connect(caller)
            self.exten(chan, "internal", exten, 1, app, "(Outgoing Line)")
            chan.vars["RECFILE"] = caller.vars["RECFILE"]
            self.chan_event("NewConnectedLine", chan)
            for name, value in inherited:
                self.set_var(chan, f"__{name}", value)
            return chan
        self.set_var(chan, "DIALEDPEERNUMBER", agent)
        # Inherited variables (``__`` prefix) arrive in reverse order of setting.
        for name, value in inherited:
            self.set_var(chan, f"__{name}", value)
        chan.connect(caller)
        self.exten(chan, "internal", exten, 1, app, "(Outgoing Line)")
        self.chan_event("NewConnectedLine", chan)
        return chan

    def ring(self, caller: _Channel, leg: _Channel, agent: str, *, update_caller: bool = True) -> None:
        """The agent's phone starts ringing."""
        if update_caller:
            self.connected_line(caller, leg)
        self.set_state(leg, RINGING)
        self.agent_device(agent, "RINGING", member_first=True)
        self.dial_state(caller, leg)

    def answer_leg(self, leg: _Channel, agent: str) -> None:
        self.set_state(leg, UP)
        leg.exten = ""
        self.agent_device(agent, "INUSE")

    def cdr(
        self,
        chan: _Channel,
        *,
        source: str,
        destination: str,
        dest_context: str,
        dest_channel: str,
        app: str,
        data: str,
        start: float,
        answer: float | None,
        end: float,
        disposition: str,
        userfield: str,
    ) -> None:
        billable = 0 if answer is None else int(end - answer)
        self.emit(
            {
                "Event": "Cdr",
                "Privilege": "cdr,all",
                "AccountCode": chan.account,
                "Source": source,
                "Destination": destination,
                "DestinationContext": dest_context,
                "CallerID": f'"{chan.cid_name}" <{chan.cid_num}>',
                "Channel": chan.name,
                "DestinationChannel": dest_channel,
                "LastApplication": app,
                "LastData": data,
                "StartTime": _stamp(self.epoch(start), "%Y-%m-%d %H:%M:%S"),
                "AnswerTime": "" if answer is None else _stamp(self.epoch(answer), "%Y-%m-%d %H:%M:%S"),
                "EndTime": _stamp(self.epoch(end), "%Y-%m-%d %H:%M:%S"),
                "Duration": str(int(end - start)),
                "BillableSeconds": str(billable),
                "Disposition": disposition,
                "AMAFlags": "DOCUMENTATION",
                "UniqueID": chan.uniqueid,
                "UserField": userfield,
            }
        )

    # -- the dialplan of the reference PBX --------------------------------------

    def inbound(self, caller: str, name: str, did: str) -> _Channel:
        """A call arrives on the trunk and runs [from-trunk] up to its route."""
        self.did, self.did_name = did, DID_NAMES.get(did, "unknown line")
        trunk = self.new_channel(
            TRUNK, state=RING, cid_num=caller, cid_name=name, context="from-trunk", exten=did
        )
        self.set_var(trunk, "SIPDOMAIN", "127.0.0.1")
        self.wait(0.001)
        gosub = f"sub-inbound,s,1({did},{self.did_name})"
        self.exten(trunk, "from-trunk", did, 1, "Gosub", gosub)
        self.exten(trunk, "sub-inbound", "s", 0, "Gosub", gosub)
        self.set_var(trunk, "LOCAL(ARG1)", did)
        self.set_var(trunk, "LOCAL(ARG2)", self.did_name)
        self.set_var(trunk, "LOCAL(ARGC)", "2")
        self.exten(trunk, "sub-inbound", "s", 1, "NoOp", f"Inbound call DID={did} ({self.did_name}) from {caller}")
        self.exten(trunk, "sub-inbound", "s", 2, "Set", f"__DID={did}")
        self.set_var(trunk, "__DID", did)
        self.exten(trunk, "sub-inbound", "s", 3, "Set", f"__DID_NAME={self.did_name}")
        self.set_var(trunk, "__DID_NAME", self.did_name)
        self.exten(trunk, "sub-inbound", "s", 4, "Set", f"CDR(userfield)={did}")
        self.exten(trunk, "sub-inbound", "s", 5, "Gosub", "sub-record,s,1")
        self.record(trunk, caller)
        self.exten(trunk, "sub-inbound", "s", 5, "Return", "")
        self.set_var(trunk, "GOSUB_RETVAL", "")
        self.exten(trunk, "from-trunk", did, 1, "Return", "")
        self.wait(0.001)
        return trunk

    def record(self, chan: _Channel, number: str) -> None:
        """[sub-record]: RECFILE and MixMonitor."""
        self.exten(chan, "sub-record", "s", 0, "Gosub", "sub-record,s,1")
        recfile = f"{RECDIR}/{_stamp(self.epoch(), '%Y%m%d-%H%M%S')}-{number}-{chan.uniqueid}.wav"
        self.exten(chan, "sub-record", "s", 1, "Set", f"__RECFILE={recfile}")
        self.set_var(chan, "__RECFILE", recfile)
        self.exten(chan, "sub-record", "s", 2, "MixMonitor", f"{recfile},b")
        self.set_var(chan, "MIXMONITOR_FILENAME", recfile)
        self.mixmonitor_start(chan)
        self.exten(chan, "sub-record", "s", 3, "Return", "")

    def goto_route(self, trunk: _Channel, context: str, exten: str) -> None:
        if self.did == "+74950000004" and context == "route-ringgroup":
            # [route-agi] with no FastAGI server: the fallback to the ring group.
            self.exten(trunk, "from-trunk", self.did, 2, "Goto", "route-agi,s,1")
            self.exten(trunk, "route-agi", "s", 1, "AGI", f"agi://127.0.0.1:4573/route,{self.did},{trunk.cid_num}")
            self.set_var(trunk, "AGISTATUS", "FAILURE")
            self.exten(trunk, "route-agi", "s", 2, "NoOp", "AGISTATUS=FAILURE ROUTE=")
            self.exten(trunk, "route-agi", "s", 3, "GotoIf", '0?dial')
            self.exten(trunk, "route-agi", "s", 4, "NoOp", "AGI unreachable or no route -> fallback to ring group")
            self.exten(trunk, "route-agi", "s", 5, "Goto", "route-ringgroup,s,1")
        else:
            self.exten(trunk, "from-trunk", self.did, 2, "Goto", f"{context},{exten},1")

    def after_dial_noanswer(self, trunk: _Channel, listen: float) -> None:
        """[after-dial] NOANSWER (or [after-queue] TIMEOUT): the PBX answers to play
        "nobody available" (not a person), the caller hangs up while listening."""
        self.set_state(trunk, UP)
        self.exten(trunk, trunk.context, trunk.exten, 3, "Playback", "vm-nobodyavail")
        self.wait(min(listen, 2.0))
        self.exten(trunk, trunk.context, trunk.exten, 4, "Wait", "15")
        self.wait(max(0.0, listen - 2.0))

    def talk_then_caller_hangs_up(
        self, trunk: _Channel, leg: _Channel, agent: str, bridge: _Bridge, talk: float
    ) -> None:
        self.set_var(trunk, "BRIDGEPEER", leg.name)
        self.set_var(leg, "BRIDGEPEER", trunk.name)
        self.set_var(trunk, "BRIDGEPVTCALLID", f"{self.f.rng.getrandbits(32):08x}@127.0.0.1")
        self.wait(talk)
        self.rtp_qos(trunk, talk, peer=leg)
        self.hangup_request(trunk, 16)
        self.set_var(trunk, "BRIDGEPEER", "")
        self.set_var(leg, "BRIDGEPEER", "")
        self.bridge_leave(bridge, trunk)
        self.set_var(trunk, "BRIDGEPVTCALLID", "")
        self.soft_hangup_request(trunk)
        self.bridge_leave(bridge, leg)
        self.bridge_destroy(bridge)
        self.rtp_qos(leg, talk)
        self.hangup(leg, 16)
        self.agent_device(agent, "NOT_INUSE")

    def caller_gone(self, trunk: _Channel, cause: int, tech_cause: int | None = None) -> None:
        self.hangup(trunk, cause, tech_cause)
        self.device(f"PJSIP/{TRUNK}", "NOT_INUSE")

    def direct_dial(self, trunk: _Channel, agent: str, context: str = "route-direct") -> _Channel:
        """[route-direct] Dial(PJSIP/<agent>,20,tT) up to the phone ringing."""
        self.goto_route(trunk, context, agent)
        self.exten(trunk, context, agent, 1, "Dial", f"PJSIP/{agent},20,tT")
        self.dial_app_vars(trunk)
        leg = self.agent_leg(trunk, agent, exten=agent)
        self.dial_begin(trunk, leg, agent)
        self.device(f"PJSIP/{TRUNK}", "INUSE")
        return leg


class CallFactory:
    """Builds call scenarios with fresh, realistic identifiers.

    ``start_epoch`` fixes the clock (each call then starts where the previous
    one ended, plus a second); None uses the current time for every call.
    ``rng`` makes bridge ids and noise reproducible.
    """

    def __init__(self, start_epoch: float | None = None, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.Random()
        self._clock = start_epoch
        self._uid_seq = 0
        self._pjsip_seq = 0
        self._local_seq = 0
        self._optimization_id = 0
        self._agents: dict[str, _Agent] = {}
        self.login_time = int(start_epoch if start_epoch is not None else time.time()) - 3600

    # -- identifiers ------------------------------------------------------------

    def _next_uniqueid(self, epoch: float) -> str:
        uid = f"{int(epoch)}.{self._uid_seq}"
        self._uid_seq += 1
        return uid

    def _next_pjsip(self) -> int:
        seq = self._pjsip_seq
        self._pjsip_seq += 1
        return seq

    def _next_local(self) -> int:
        seq = self._local_seq
        self._local_seq += 1
        return seq

    def _next_bridge_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _agent(self, agent: str) -> _Agent:
        return self._agents.setdefault(agent, _Agent())

    def _begin(self) -> _Call:
        start = time.time() if self._clock is None else self._clock
        return _Call(self, start)

    def _end(self, call: _Call) -> Scenario:
        if self._clock is not None:
            self._clock = call.start + call.t + 1.0
        return call.events

    # -- inbound calls to one agent ------------------------------------------------

    def direct_answered(
        self, caller: str, name: str, did: str, agent: str = "101", ring: float = 2.0, talk: float = 3.0
    ) -> Scenario:
        """The agent answers after ``ring`` s, talks ``talk`` s, the caller hangs up (a_answered)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, agent)
        call.ring(trunk, leg, agent)
        call.wait(ring)
        answered_at = call.t
        self._answer_direct(call, trunk, leg, agent)
        bridge = self._bridge_pair(call, leg, trunk)
        call.talk_then_caller_hangs_up(trunk, leg, agent, bridge, talk)
        call.cdr(
            trunk, source=caller, destination=agent, dest_context="route-direct", dest_channel=leg.name,
            app="Dial", data=f"PJSIP/{agent},20,tT", start=0.0, answer=answered_at, end=call.t,
            disposition="ANSWERED", userfield=did,
        )
        call.caller_gone(trunk, 16)
        return self._end(call)

    def direct_missed(self, caller: str, name: str, did: str, agent: str = "101", ring: float = 20.0) -> Scenario:
        """Nobody answers in ``ring`` s (the dialplan's 20 s): DialEnd NOANSWER, then
        the PBX answers to play a prompt, with no agent (b_missed)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, agent)
        call.ring(trunk, leg, agent)
        call.wait(ring)
        dial_end = call.t
        call.dial_end(trunk, leg, "NOANSWER")
        call.hangup(leg, 0)
        call.dial_result_vars(trunk, "NOANSWER", ring, None)
        call.exten(trunk, "after-dial", "NOANSWER", 1, "NoOp", "Missed call: nobody answered")
        call.exten(trunk, "after-dial", "NOANSWER", 2, "Answer", "")
        call.set_state(trunk, UP)
        call.agent_device(agent, "NOT_INUSE")
        call.exten(trunk, "after-dial", "NOANSWER", 3, "Playback", "vm-nobodyavail")
        call.wait(2.0)
        call.exten(trunk, "after-dial", "NOANSWER", 4, "Wait", "15")
        call.wait(_PROMPT_LISTEN - 2.0)
        call.hangup_request(trunk, None)
        call.soft_hangup_request(trunk)
        call.cdr(
            trunk, source=caller, destination=agent, dest_context="route-direct", dest_channel=leg.name,
            app="Dial", data=f"PJSIP/{agent},20,tT", start=0.0, answer=None, end=dial_end,
            disposition="NO ANSWER", userfield=did,
        )
        call.cdr(
            trunk, source=caller, destination="NOANSWER", dest_context="after-dial", dest_channel="",
            app="Wait", data="15", start=dial_end, answer=dial_end, end=call.t,
            disposition="ANSWERED", userfield=did,
        )
        call.caller_gone(trunk, 0)
        return self._end(call)

    def abandoned_ringing(self, caller: str, name: str, did: str, agent: str = "101", ring: float = 5.0) -> Scenario:
        """The caller hangs up while the agent's phone rings (c_abandoned_ringing)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, agent)
        call.ring(trunk, leg, agent)
        call.wait(ring)
        call.hangup_request(trunk, 127, 487)
        call.dial_end(trunk, leg, "CANCEL")
        call.hangup(leg, 127, 500)
        call.soft_hangup_request(trunk, 487)
        call.agent_device(agent, "NOT_INUSE", member_first=True)
        call.cdr(
            trunk, source=caller, destination=agent, dest_context="route-direct", dest_channel=leg.name,
            app="Dial", data=f"PJSIP/{agent},20,tT", start=0.0, answer=None, end=call.t,
            disposition="NO ANSWER", userfield=did,
        )
        call.hangup(trunk, 127, 487)
        call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
        return self._end(call)

    def busy(self, caller: str, name: str, did: str, agent: str = "101") -> Scenario:
        """The agent's phone answers 486 Busy Here; the dialplan plays Busy (i_busy)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        call.goto_route(trunk, "route-direct", agent)
        call.exten(trunk, "route-direct", agent, 1, "Dial", f"PJSIP/{agent},20,tT")
        call.dial_app_vars(trunk)
        leg = call.agent_leg(trunk, agent, exten=agent)
        call.dial_begin(trunk, leg, agent)
        call.connected_line(trunk, leg)
        call.hangup_request(leg, 17, 486)
        call.dial_end(trunk, leg, "BUSY")
        call.dial_result_vars(trunk, "BUSY", 0.0, None)
        call.exten(trunk, "after-dial", "BUSY", 1, "NoOp", "Agent busy")
        call.exten(trunk, "after-dial", "BUSY", 2, "Busy", "3")
        call.set_state(trunk, BUSY)
        call.hangup_request(trunk, 17, 486)
        call.soft_hangup_request(trunk, 486)
        call.device(f"PJSIP/{TRUNK}", "BUSY")
        for destination, app, data in ((agent, "Dial", f"PJSIP/{agent},20,tT"), ("BUSY", "Busy", "3")):
            call.cdr(
                trunk, source=caller, destination=destination, dest_context="route-direct",
                dest_channel=leg.name, app=app, data=data, start=0.0, answer=None, end=call.t,
                disposition="BUSY", userfield=did,
            )
        call.hangup(leg, 17, 486)
        call.wait(0.001)
        call.caller_gone(trunk, 17, 486)
        return self._end(call)

    # -- ring group -------------------------------------------------------------

    def ring_group(
        self,
        caller: str,
        name: str,
        did: str,
        agents: Sequence[str] = ("101", "102"),
        answering: str | None = "101",
        ring: float = 3.0,
        talk: float = 3.0,
    ) -> Scenario:
        """Dial(PJSIP/101&PJSIP/102,20,tT) (k_agi_fallback). ``answering`` answers after
        ``ring`` s and the others get DialEnd CANCEL and Hangup cause 26 "Answered
        elsewhere"; None: every phone rings 20 s, DialEnd NOANSWER, then the PBX
        answers to play a prompt and the caller hangs up (missed)."""
        if answering is not None and answering not in agents:
            raise ValueError(f"{answering} is not in the ring group {agents}")
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        call.goto_route(trunk, "route-ringgroup", "s")
        dial_data = "&".join(f"PJSIP/{a}" for a in agents) + ",20,tT"
        call.exten(trunk, "route-ringgroup", "s", 1, "Dial", dial_data)
        call.dial_app_vars(trunk)
        legs = {agent: call.agent_leg(trunk, agent, exten=agent) for agent in agents}
        for agent, leg in legs.items():
            call.dial_begin(trunk, leg, agent)
        for agent, leg in legs.items():
            # The caller's connected line stays <unknown> until someone answers.
            call.ring(trunk, leg, agent, update_caller=False)
        call.device(f"PJSIP/{TRUNK}", "INUSE")
        if answering is None:
            call.wait(DIAL_TIMEOUT)
            for leg in legs.values():
                call.dial_end(trunk, leg, "NOANSWER")
            for agent, leg in legs.items():
                call.hangup(leg, 0)
                call.agent_device(agent, "NOT_INUSE")
            call.dial_result_vars(trunk, "NOANSWER", DIAL_TIMEOUT, None)
            call.exten(trunk, "after-dial", "NOANSWER", 1, "NoOp", "Missed call: nobody answered")
            call.exten(trunk, "after-dial", "NOANSWER", 2, "Answer", "")
            dial_end = call.t
            call.after_dial_noanswer(trunk, _PROMPT_LISTEN)
            call.hangup_request(trunk, None)
            call.soft_hangup_request(trunk)
            call.cdr(
                trunk, source=caller, destination="s", dest_context="route-ringgroup", dest_channel="",
                app="Dial", data=dial_data, start=0.0, answer=None, end=dial_end,
                disposition="NO ANSWER", userfield=did,
            )
            call.cdr(
                trunk, source=caller, destination="NOANSWER", dest_context="after-dial", dest_channel="",
                app="Wait", data="15", start=dial_end, answer=dial_end, end=call.t,
                disposition="ANSWERED", userfield=did,
            )
            call.caller_gone(trunk, 0)
            return self._end(call)

        call.wait(ring)
        answered_at = call.t
        winner = legs[answering]
        call.set_state(winner, UP)
        winner.exten = ""
        call.connected_line(trunk, winner)
        # app_dial cancels the other legs as it takes the answer: their DialEnd
        # CANCEL can come before the winner's DialEnd ANSWER.
        for agent, leg in legs.items():
            if agent != answering:
                call.dial_end(trunk, leg, "CANCEL")
        call.dial_result_vars(trunk, "ANSWER", ring, 0.0)
        call.dial_end(trunk, winner, "ANSWER")
        call.set_state(trunk, UP)
        for agent, leg in legs.items():
            if agent != answering:
                call.hangup(leg, 26)
        call.device(f"PJSIP/{answering}", "INUSE")
        for agent in legs:
            if agent != answering:
                call.device(f"PJSIP/{agent}", "NOT_INUSE")
        call.member_status(answering, "INUSE")
        for agent in legs:
            if agent != answering:
                call.member_status(agent, "NOT_INUSE")
        bridge = self._bridge_pair(call, winner, trunk)
        call.talk_then_caller_hangs_up(trunk, winner, answering, bridge, talk)
        call.cdr(
            trunk, source=caller, destination="s", dest_context="route-ringgroup", dest_channel=winner.name,
            app="Dial", data=dial_data, start=0.0, answer=answered_at, end=call.t,
            disposition="ANSWERED", userfield=did,
        )
        call.caller_gone(trunk, 16)
        return self._end(call)

    # -- queue ----------------------------------------------------------------

    def queue(
        self,
        caller: str,
        name: str,
        did: str,
        members: Sequence[str] = ("101", "102", "103"),
        answering: str | None = None,
        abandon_after: float | None = None,
        timeout: float | None = None,
        ring: float = 2.0,
        talk: float = 3.0,
    ) -> Scenario:
        """Queue(sales,tTr,,,60): members rung in turn (linear, 8 s each, retry 1 s).

        Whichever comes first ends the wait: ``answering`` picks up ``ring`` s after
        its phone starts ringing (e_queue_answered); the caller hangs up after
        ``abandon_after`` s in the queue (f_queue_abandoned: QueueCallerAbandon);
        the queue times out after ``timeout`` s (None: the dialplan's 60 s), then
        QueueCallerLeave without Abandon, the PBX answers to play a prompt
        ([after-queue] TIMEOUT) and the caller hangs up: a missed call.
        """
        if answering is not None and answering not in members:
            raise ValueError(f"{answering} is not a member of {members}")
        if not members:
            raise ValueError("a queue needs members")
        if answering is not None and ring >= QUEUE_MEMBER_TIMEOUT:
            raise ValueError("a member must answer within the member timeout (8 s)")
        limit = QUEUE_TIMEOUT if timeout is None else timeout
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        call.goto_route(trunk, "route-queue", QUEUE)
        call.exten(trunk, "route-queue", QUEUE, 1, "Queue", f"{QUEUE},tTr,,,60")
        # setqueuevar=yes: the queue's statistics land on the caller's channel.
        for var, value in (
            ("QUEUENAME", QUEUE), ("QUEUEMAX", "0"), ("QUEUESTRATEGY", "linear"), ("QUEUECALLS", "1"),
            ("QUEUEHOLDTIME", "8"), ("QUEUETALKTIME", "3"), ("QUEUECOMPLETED", "1"), ("QUEUEABANDONED", "1"),
            ("QUEUESRVLEVEL", "0"), ("QUEUESRVLEVELPERF", "0.0"),
        ):
            call.set_var(trunk, var, value)
        call.wait(0.002)
        call.device(f"Queue:{QUEUE}", "RINGING")
        joined = call.t
        call.event("QueueCallerJoin", "agent,all", trunk.snapshot(), Queue=QUEUE, Position="1", Count="1")
        call.device(f"PJSIP/{TRUNK}", "INUSE")

        attempts: list[_Attempt] = []
        index = 0
        outcome = "timeout"
        deadline_abandon = None if abandon_after is None else joined + abandon_after
        deadline_timeout = joined + limit
        while True:
            agent = members[index % len(members)]
            index += 1
            start = call.t
            stop = min(d for d in (deadline_abandon, deadline_timeout) if d is not None)
            if start >= stop:
                outcome = "abandon" if deadline_abandon is not None and stop == deadline_abandon else "timeout"
                call.wait(max(0.0, stop - call.t))
                break
            leg = call.agent_leg(trunk, agent, exten="s", app="AppQueue")
            leg.exten = QUEUE
            call.exten(leg, "internal", QUEUE, 1, "AppQueue", "(Outgoing Line)")
            counters = self._agent(agent)
            # setinterfacevar=yes: the member's details on its channel.
            for var, value in (
                ("MEMBERINTERFACE", f"PJSIP/{agent}"), ("MEMBERNAME", AGENT_NAMES.get(agent, agent)),
                ("MEMBERCALLS", str(counters.calls_taken)), ("MEMBERLASTCALL", str(counters.last_call)),
                ("MEMBERPENALTY", "0"), ("MEMBERDYNAMIC", "0"), ("MEMBERREALTIME", "0"),
            ):
                call.set_var(leg, var, value)
            call.event(
                "AgentCalled", "agent,all", trunk.snapshot(), leg.snapshot("Dest"),
                Queue=QUEUE, Interface=f"PJSIP/{agent}", MemberName=AGENT_NAMES.get(agent, agent),
            )
            call.dial_begin(trunk, leg, f"PJSIP/{agent}")
            call.connected_line(trunk, leg)
            call.set_state(leg, RINGING)
            call.device(f"PJSIP/{agent}", "RINGING")
            call.dial_state(trunk, leg)
            call.member_status(agent, "RINGING")
            ring_until = start + (ring if agent == answering else QUEUE_MEMBER_TIMEOUT)
            if ring_until <= stop and agent == answering:
                call.wait(ring_until - call.t)
                attempts.append(_Attempt(leg, agent, start, call.t))
                outcome = "answer"
                break
            if ring_until < stop:
                call.wait(ring_until - call.t)
                self._queue_member_no_answer(call, trunk, leg, agent, QUEUE_MEMBER_TIMEOUT)
                attempts.append(_Attempt(leg, agent, start))
                call.wait(min(QUEUE_RETRY, max(0.0, stop - call.t)))
                continue
            # The caller gives up, or the queue times out, while this phone rings.
            call.wait(stop - call.t)
            attempts.append(_Attempt(leg, agent, start))
            if deadline_abandon is not None and stop == deadline_abandon:
                outcome = "abandon_ringing"
            else:
                outcome = "timeout_ringing"
                self._queue_member_no_answer(call, trunk, leg, agent, stop - start)
            break

        if outcome == "answer":
            last = attempts[-1]
            leg, agent, start, answered = last.leg, last.agent, last.start, last.answered
            assert answered is not None
            call.set_state(leg, UP)
            call.dial_end(trunk, leg, "ANSWER")
            call.device(f"PJSIP/{agent}", "INUSE")
            call.wait(0.008)
            call.device(f"Queue:{QUEUE}", "NOT_INUSE")
            call.event("QueueCallerLeave", "agent,all", trunk.snapshot(), Queue=QUEUE, Position="1", Count="0")
            call.member_status(agent, "INUSE")
            hold = str(int(answered - joined))
            call.event(
                "AgentConnect", "agent,all", trunk.snapshot(), leg.snapshot("Dest"),
                Queue=QUEUE, Interface=f"PJSIP/{agent}", MemberName=AGENT_NAMES.get(agent, agent),
                HoldTime=hold, RingTime=str(int(answered - start)),
            )
            call.set_state(trunk, UP)
            bridge = self._bridge_pair(call, leg, trunk)
            call.set_var(trunk, "BRIDGEPEER", leg.name)
            call.wait(talk)
            call.hangup_request(trunk, None)
            call.event(
                "AgentComplete", "agent,all", trunk.snapshot(), leg.snapshot("Dest"),
                Queue=QUEUE, Interface=f"PJSIP/{agent}", MemberName=AGENT_NAMES.get(agent, agent),
                HoldTime=hold, TalkTime=str(int(talk)), Reason="caller",
            )
            call.bridge_leave(bridge, trunk)
            call.bridge_leave(bridge, leg)
            call.bridge_destroy(bridge)
            call.soft_hangup_request(trunk)
            call.rtp_qos(leg, talk)
            call.hangup(leg, 16)
            counters = self._agent(agent)
            counters.calls_taken += 1
            counters.last_call = int(call.epoch())
            call.member_status(agent, "NOT_INUSE")
            call.device(f"PJSIP/{agent}", "NOT_INUSE")
            self._queue_cdrs(call, trunk, attempts, answered_end=call.t)
            call.caller_gone(trunk, 16)
            return self._end(call)

        if outcome.startswith("abandon"):
            call.hangup_request(trunk, 127, 487)
            ringing = attempts[-1] if outcome == "abandon_ringing" else None
            if ringing is not None:
                # Two CANCELs for the one leg, as captured.
                call.dial_end(trunk, ringing.leg, "CANCEL")
                call.dial_end(trunk, ringing.leg, "CANCEL")
            call.event(
                "QueueCallerAbandon", "agent,all", trunk.snapshot(), Queue=QUEUE, Position="1",
                OriginalPosition="1", HoldTime=str(int(call.t - joined)),
            )
            call.device(f"Queue:{QUEUE}", "NOT_INUSE")
            call.event("QueueCallerLeave", "agent,all", trunk.snapshot(), Queue=QUEUE, Position="1", Count="0")
            call.soft_hangup_request(trunk, 487)
            call.hangup(trunk, 127, 487)
            self._queue_cdrs(call, trunk, attempts, answered_end=None)
            call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
            if ringing is not None:
                call.hangup(ringing.leg, 0)
                call.agent_device(ringing.agent, "NOT_INUSE")
            return self._end(call)

        # Queue timeout: QUEUESTATUS=TIMEOUT, [after-queue] answers and plays a prompt.
        call.device(f"Queue:{QUEUE}", "NOT_INUSE")
        call.event("QueueCallerLeave", "agent,all", trunk.snapshot(), Queue=QUEUE, Position="1", Count="0")
        call.set_var(trunk, "QUEUESTATUS", "TIMEOUT")
        call.exten(trunk, "route-queue", QUEUE, 2, "Goto", "after-queue,TIMEOUT,1")
        call.exten(trunk, "after-queue", "TIMEOUT", 1, "NoOp", "Queue timeout")
        call.exten(trunk, "after-queue", "TIMEOUT", 2, "Answer", "")
        queue_end = call.t
        call.after_dial_noanswer(trunk, _PROMPT_LISTEN)
        call.hangup_request(trunk, None)
        call.soft_hangup_request(trunk)
        self._queue_cdrs(call, trunk, attempts, answered_end=None)
        call.cdr(
            trunk, source=caller, destination="TIMEOUT", dest_context="after-queue", dest_channel="",
            app="Wait", data="15", start=queue_end, answer=queue_end, end=call.t,
            disposition="ANSWERED", userfield=did,
        )
        call.caller_gone(trunk, 0)
        return self._end(call)

    @staticmethod
    def _queue_member_no_answer(call: _Call, trunk: _Channel, leg: _Channel, agent: str, rang: float) -> None:
        call.event(
            "AgentRingNoAnswer", "agent,all", trunk.snapshot(), leg.snapshot("Dest"),
            Queue=QUEUE, Interface=f"PJSIP/{agent}", MemberName=AGENT_NAMES.get(agent, agent),
            RingTime=str(int(round(rang * 1000))),
        )
        # app_queue reports a member's timeout twice: NOANSWER, then CANCEL.
        call.dial_end(trunk, leg, "NOANSWER")
        call.dial_end(trunk, leg, "CANCEL")
        call.wait(0.003)
        call.hangup(leg, 0)
        call.agent_device(agent, "NOT_INUSE")

    @staticmethod
    def _queue_cdrs(
        call: _Call, trunk: _Channel, attempts: Sequence[_Attempt], *, answered_end: float | None
    ) -> None:
        """One Cdr per member attempt (e_queue_answered, f_queue_abandoned)."""
        for i, attempt in enumerate(attempts):
            last = i == len(attempts) - 1
            end = call.t if last else attempt.start + QUEUE_MEMBER_TIMEOUT
            answer_at: float | None = None
            if attempt.answered is not None and answered_end is not None:
                answer_at, end = attempt.answered, answered_end
            call.cdr(
                trunk, source=trunk.cid_num, destination=QUEUE, dest_context="route-queue",
                dest_channel=attempt.leg.name, start=attempt.start,
                app="Queue", data=f"{QUEUE},tTr,,,60", answer=answer_at, end=end,
                disposition="NO ANSWER" if answer_at is None else "ANSWERED", userfield=call.did,
            )

    # -- transfers --------------------------------------------------------------

    def blind_transfer(
        self,
        caller: str,
        name: str,
        did: str,
        from_agent: str = "101",
        to_agent: str = "102",
        ring: float = 2.0,
        talk: float = 2.0,
        ring2: float = 2.0,
        talk2: float = 8.0,
    ) -> Scenario:
        """``from_agent`` answers, then blind-transfers to ``to_agent`` with the AMI
        BlindTransfer action (h1_blind_transfer): BlindTransfer event, the first
        bridge dissolves, the customer channel Dials the new agent itself."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, from_agent)
        call.ring(trunk, leg, from_agent)
        call.wait(ring)
        first_answer = call.t
        self._answer_direct(call, trunk, leg, from_agent)
        bridge = self._bridge_pair(call, leg, trunk)
        call.wait(talk)
        transfer_at = call.t
        call.chan_event("Unhold", leg)
        call.set_var(leg, "BLINDTRANSFER", trunk.name)
        call.set_var(trunk, "BLINDTRANSFER", leg.name)
        call.event(
            "BlindTransfer", "call,all",
            {"Result": "Success"}, leg.snapshot("Transferer"), trunk.snapshot("Transferee"), bridge.snapshot(),
            IsExternal="Yes", Context="internal", Extension=to_agent,
        )
        call.bridge_leave(bridge, leg)
        call.set_var(trunk, "BRIDGEPEER", "")
        # The after-bridge goto lands on internal,<ext>; as captured, the PBX
        # resumes at priority 2 (the Dial), the NoOp at priority 1 is skipped.
        trunk.context, trunk.exten, trunk.priority = "internal", to_agent, 1
        call.event(
            "Newexten", "dialplan,all", trunk.snapshot(),
            Extension=to_agent, Application="Dial", AppData=f"PJSIP/{from_agent},20,tT",
        )
        call.bridge_leave(bridge, trunk)
        call.set_var(trunk, "DIALSTATUS", "ANSWER")
        call.exten(trunk, "internal", to_agent, 2, "Dial", f"PJSIP/{to_agent},20,tT")
        call.dial_app_vars(trunk)
        call.bridge_destroy(bridge)
        call.rtp_qos(leg, talk)
        leg2 = call.agent_leg(trunk, to_agent, exten=to_agent)
        call.hangup(leg, 16)
        call.agent_device(from_agent, "NOT_INUSE")
        call.dial_begin(trunk, leg2, to_agent)
        call.connected_line(trunk, leg2)
        call.set_state(leg2, RINGING)
        call.dial_state(trunk, leg2)
        call.agent_device(to_agent, "RINGING")
        call.wait(ring2)
        second_answer = call.t
        call.answer_leg(leg2, to_agent)
        call.member_status(to_agent, "INUSE")
        call.dial_end(trunk, leg2, "ANSWER")
        bridge2 = self._bridge_pair(call, leg2, trunk)
        call.wait(talk2)
        call.hangup_request(trunk, 16)
        for agent, dest_leg, start, answer, end in (
            (from_agent, leg, 0.0, first_answer, transfer_at),
            (to_agent, leg2, transfer_at, second_answer, call.t),
        ):
            call.cdr(
                trunk, source=caller, destination=to_agent, dest_context="internal", dest_channel=dest_leg.name,
                app="Dial", data=f"PJSIP/{agent},20,tT", start=start, answer=answer, end=end,
                disposition="ANSWERED", userfield=did,
            )
        call.bridge_leave(bridge2, trunk)
        call.soft_hangup_request(trunk)
        call.bridge_leave(bridge2, leg2)
        call.bridge_destroy(bridge2)
        call.hangup(trunk, 16)
        call.rtp_qos(leg2, talk2)
        call.hangup(leg2, 16)
        call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
        call.agent_device(to_agent, "NOT_INUSE", member_first=True)
        return self._end(call)

    def redirect(
        self,
        caller: str,
        name: str,
        did: str,
        from_agent: str = "101",
        to_agent: str = "102",
        ring: float = 2.0,
        talk: float = 3.0,
        ring2: float = 2.0,
        talk2: float = 6.0,
    ) -> Scenario:
        """An answered call whose customer channel is moved by AMI ``Redirect``
        (Channel=<trunk channel>, Context=internal, Exten=<to_agent>, Priority=1,
        no ExtraChannel). No transfer event: the customer leaves the bridge, the
        bridge dissolves and hangs up ``from_agent``, the customer channel runs
        internal,<to_agent> and Dials the new agent (see the module docstring)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, from_agent)
        call.ring(trunk, leg, from_agent)
        call.wait(ring)
        first_answer = call.t
        self._answer_direct(call, trunk, leg, from_agent)
        bridge = self._bridge_pair(call, leg, trunk)
        call.set_var(trunk, "BRIDGEPEER", leg.name)
        call.wait(talk)
        redirect_at = call.t
        # ast_async_goto: explicit goto, then AST_SOFTHANGUP_ASYNCGOTO (no event).
        trunk.context, trunk.exten, trunk.priority = "internal", to_agent, 1
        call.bridge_leave(bridge, trunk)
        call.set_var(trunk, "BRIDGEPEER", "")
        # A basic bridge dissolves when a member leaves it this way
        # (AST_BRIDGE_FLAG_DISSOLVE_HANGUP): the agent is put out and hung up.
        call.bridge_leave(bridge, leg)
        call.bridge_destroy(bridge)
        call.rtp_qos(leg, talk)
        call.hangup(leg, 16)
        call.agent_device(from_agent, "NOT_INUSE")
        # Dial returns into the customer's PBX, which resumes at the new place.
        call.dial_result_vars(trunk, "ANSWER", redirect_at, talk)
        call.exten(trunk, "internal", to_agent, 1, "NoOp", f"Internal call to {to_agent}")
        call.exten(trunk, "internal", to_agent, 2, "Dial", f"PJSIP/{to_agent},20,tT")
        call.dial_app_vars(trunk)
        leg2 = call.agent_leg(trunk, to_agent, exten=to_agent)
        call.dial_begin(trunk, leg2, to_agent)
        call.connected_line(trunk, leg2)
        call.set_state(leg2, RINGING)
        call.dial_state(trunk, leg2)
        call.agent_device(to_agent, "RINGING")
        call.wait(ring2)
        second_answer = call.t
        call.answer_leg(leg2, to_agent)
        call.member_status(to_agent, "INUSE")
        call.dial_end(trunk, leg2, "ANSWER")
        bridge2 = self._bridge_pair(call, leg2, trunk)
        call.wait(talk2)
        call.hangup_request(trunk, 16)
        for agent, context, dest_leg, start, answer, end in (
            (from_agent, "route-direct", leg, 0.0, first_answer, redirect_at),
            (to_agent, "internal", leg2, redirect_at, second_answer, call.t),
        ):
            call.cdr(
                trunk, source=caller, destination=agent, dest_context=context, dest_channel=dest_leg.name,
                app="Dial", data=f"PJSIP/{agent},20,tT", start=start, answer=answer, end=end,
                disposition="ANSWERED", userfield=did,
            )
        call.bridge_leave(bridge2, trunk)
        call.soft_hangup_request(trunk)
        call.bridge_leave(bridge2, leg2)
        call.bridge_destroy(bridge2)
        call.hangup(trunk, 16)
        call.rtp_qos(leg2, talk2)
        call.hangup(leg2, 16)
        call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
        call.agent_device(to_agent, "NOT_INUSE", member_first=True)
        return self._end(call)

    def attended_transfer(
        self,
        caller: str,
        name: str,
        did: str,
        from_agent: str = "101",
        to_agent: str = "102",
        ring: float = 2.0,
        talk: float = 3.0,
        dialling: float = 2.0,
        ring2: float = 3.0,
        consult: float = 5.0,
        talk2: float = 8.0,
    ) -> Scenario:
        """``from_agent`` answers, starts an attended transfer (features atxfer or AMI
        Atxfer) to ``to_agent`` through a Local channel pair, consults ``consult`` s,
        then hangs up to complete it: BridgeMerge, AttendedTransfer, then the Local
        pair optimises away and the customer ends up bridged with ``to_agent``
        (see the module docstring for the sources)."""
        call = self._begin()
        trunk = call.inbound(caller, name, did)
        leg = call.direct_dial(trunk, from_agent)
        call.ring(trunk, leg, from_agent)
        call.wait(ring)
        first_answer = call.t
        self._answer_direct(call, trunk, leg, from_agent)
        bridge_a = self._bridge_pair(call, leg, trunk)  # the transferee bridge
        call.set_var(trunk, "BRIDGEPEER", leg.name)
        call.wait(talk)
        transfer_at = call.t

        # The transferer presses atxfer: the customer is held while he dials.
        call.chan_event("Hold", leg)
        call.chan_event("MusicOnHoldStart", trunk, Class="default")
        call.wait(dialling)
        one, two = call.new_local_pair(to_agent, "internal")
        call.set_var(one, "TRANSFERERNAME", leg.name)
        call.set_var(one, "ATTENDEDTRANSFER", leg.name)
        for var in ("RECFILE", "DID_NAME", "DID"):
            call.set_var(one, f"__{var}", leg.vars[var])
        call.connected_line(one, leg)
        bridge_c = call.new_bridge()  # the target bridge
        # ast_call: Local;2 takes Local;1's connected line as caller id and runs the dialplan.
        two.cid_num, two.cid_name = leg.cid_num, leg.cid_name
        for var in ("RECFILE", "DID_NAME", "DID"):
            two.vars[var] = leg.vars[var]
        call.chan_event("NewCallerid", two, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})
        call.event(
            "LocalBridge", "call,all", one.snapshot("LocalOne"), two.snapshot("LocalTwo"),
            Context="internal", Exten=to_agent, LocalOptimization="Yes",
        )
        call.exten(two, "internal", to_agent, 1, "NoOp", f"Internal call to {to_agent}")
        call.exten(two, "internal", to_agent, 2, "Dial", f"PJSIP/{to_agent},20,tT")
        call.dial_app_vars(two)
        call.bridge_enter(bridge_c, one)
        # calling_target_enter: the transferer moves to the target bridge.
        call.bridge_leave(bridge_a, leg)
        call.bridge_enter(bridge_c, leg)
        leg2 = call.agent_leg(two, to_agent, exten=to_agent)
        call.dial_begin(two, leg2, to_agent)
        call.connected_line(two, leg2)
        call.set_state(leg2, RINGING)
        call.dial_state(two, leg2)
        call.agent_device(to_agent, "RINGING")
        call.wait(ring2)
        second_answer = call.t
        call.answer_leg(leg2, to_agent)
        call.member_status(to_agent, "INUSE")
        call.dial_result_vars(two, "ANSWER", ring2, 0.0)
        call.dial_end(two, leg2, "ANSWER")
        call.set_state(two, UP)
        call.set_state(one, UP)
        bridge_d = call.new_bridge()  # Dial's bridge on the Local;2 side
        call.bridge_enter(bridge_d, leg2)
        call.bridge_enter(bridge_d, two)
        call.wait(consult)

        # The transferer hangs up: complete_enter merges the target bridge into
        # the transferee bridge, kicking the transferer.
        call.hangup_request(leg, 16)
        call.event("BridgeMerge", "call,all", bridge_a.snapshot("To"), bridge_c.snapshot("From"))
        call.bridge_leave(bridge_c, one)
        call.bridge_enter(bridge_a, one)
        call.bridge_leave(bridge_c, leg)
        call.event(
            "AttendedTransfer", "call,all",
            {"Result": "Success"},
            leg.snapshot("OrigTransferer"), bridge_a.snapshot("Orig"),
            leg.snapshot("SecondTransferer"), bridge_c.snapshot("Second"),
            trunk.snapshot("Transferee"), one.snapshot("TransferTarget"),
            IsExternal="No", DestType="Bridge", DestBridgeUniqueid=bridge_a.uniqueid,
        )
        call.chan_event("MusicOnHoldStop", trunk)
        call.rtp_qos(leg, talk + consult)
        call.hangup(leg, 16)
        call.agent_device(from_agent, "NOT_INUSE")
        call.bridge_destroy(bridge_c)

        # Both bridges are two-party and no longer merge-inhibited: the Local pair
        # optimises away by moving the customer into the agent's bridge.
        call.wait(0.02)
        self._optimization_id += 1
        opt_id = str(self._optimization_id)
        call.event(
            "LocalOptimizationBegin", "call,all", one.snapshot("LocalOne"), two.snapshot("LocalTwo"),
            trunk.snapshot("Source"), DestUniqueId=two.uniqueid, Id=opt_id,
        )
        call.bridge_leave(bridge_a, trunk)
        call.bridge_enter(bridge_d, trunk, swap=two)
        call.bridge_leave(bridge_d, two)
        call.event(
            "LocalOptimizationEnd", "call,all", one.snapshot("LocalOne"), two.snapshot("LocalTwo"),
            Success="Yes", Id=opt_id,
        )
        call.bridge_leave(bridge_a, one)
        call.bridge_destroy(bridge_a)
        call.hangup(one, 16)
        call.hangup(two, 16)
        call.connected_line(trunk, leg2)
        call.connected_line(leg2, trunk)
        call.set_var(trunk, "BRIDGEPEER", leg2.name)
        call.wait(talk2)
        call.hangup_request(trunk, 16)
        call.bridge_leave(bridge_d, trunk)
        call.soft_hangup_request(trunk)
        call.bridge_leave(bridge_d, leg2)
        call.bridge_destroy(bridge_d)
        call.cdr(
            trunk, source=caller, destination=from_agent, dest_context="route-direct", dest_channel=leg.name,
            app="Dial", data=f"PJSIP/{from_agent},20,tT", start=0.0, answer=first_answer, end=transfer_at + dialling,
            disposition="ANSWERED", userfield=did,
        )
        call.cdr(
            two, source=from_agent, destination=to_agent, dest_context="internal", dest_channel=leg2.name,
            app="Dial", data=f"PJSIP/{to_agent},20,tT", start=two.created, answer=second_answer, end=call.t,
            disposition="ANSWERED", userfield=did,
        )
        call.hangup(trunk, 16)
        call.rtp_qos(leg2, consult + talk2)
        call.hangup(leg2, 16)
        call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
        call.agent_device(to_agent, "NOT_INUSE", member_first=True)
        return self._end(call)

    # -- outbound ---------------------------------------------------------------

    def click_to_call(
        self,
        agent: str,
        customer: str,
        outcid: str,
        *,
        channel_id: str,
        answered: bool = True,
        action_id: str | None = None,
        account: str = "",
        agent_ring: float = 2.0,
        ring: float = 3.0,
        talk: float = 4.0,
    ) -> Scenario:
        """AMI Originate Channel=PJSIP/<agent> Context=click-to-call Exten=<customer>
        ChannelId=<channel_id>, Variable OUTCID=<outcid> (g_click_to_call).

        The agent's phone rings first (DialBegin/DialEnd with Dest* fields only,
        Linkedid = ``channel_id``), OriginateResponse when it answers, then the
        agent's channel Dials the customer on the trunk. ``answered=False``: the
        customer does not answer within the dialplan's 30 s. ``account`` is the
        Originate's Account (NewAccountCode on both channels); ``action_id`` its
        ActionID, echoed in OriginateResponse.
        """
        call = self._begin()
        call.linkedid = channel_id
        cid_name = "Click-to-call"
        leg = call.new_channel(
            agent, state=DOWN, cid_num=agent, cid_name=AGENT_NAMES.get(agent, agent),
            context="internal", exten="s", uniqueid=channel_id,
        )
        if account:
            leg.account = account
            call.chan_event("NewAccountCode", leg, OldAccountCode="")
        leg.cid_num, leg.cid_name = customer, cid_name
        call.chan_event("NewCallerid", leg, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})
        leg.conn_num, leg.conn_name = customer, cid_name
        call.chan_event("NewConnectedLine", leg)
        call.exten(leg, "internal", "s", 1, "AppDial2", "(Outgoing Line)")
        call.dial_begin(None, leg, agent)
        call.set_state(leg, RINGING)
        call.agent_device(agent, "RINGING")
        call.dial_state(None, leg)
        call.wait(agent_ring)
        call.set_state(leg, UP)
        call.dial_end(None, leg, "ANSWER")
        call.device(f"PJSIP/{agent}", "INUSE")
        response: AmiMessage = {"Event": "OriginateResponse", "Privilege": "call,all"}
        if action_id:
            response["ActionID"] = action_id
        response.update(
            {
                "Response": "Success",
                "Channel": leg.name,
                "Context": "click-to-call",
                "Exten": customer,
                "Reason": "4",
                "Uniqueid": leg.uniqueid,
                "CallerIDNum": customer,
                "CallerIDName": cid_name,
                f"ChanVariable({leg.name})": [f"{k}={v}" for k, v in leg.vars.items()],
            }
        )
        call.emit(response)
        call.exten(leg, "click-to-call", customer, 1, "NoOp", f"Click-to-call from {customer} to {customer}")
        call.exten(leg, "click-to-call", customer, 2, "Goto", f"outbound,{customer},1")
        call.exten(leg, "outbound", customer, 1, "NoOp", f"Outbound call to {customer}")
        call.exten(leg, "outbound", customer, 2, "ExecIf", f"1?Set(CALLERID(all)={outcid} <{outcid}>)")
        leg.cid_num, leg.cid_name = outcid, outcid
        call.chan_event("NewCallerid", leg, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})
        call.exten(leg, "outbound", customer, 3, "ExecIf", f"0?Set(CALLERID(all)={outcid} <{outcid}>)")
        call.exten(leg, "outbound", customer, 4, "Gosub", "sub-record,s,1")
        call.record(leg, outcid)
        call.exten(leg, "outbound", customer, 4, "Return", "")
        call.member_status(agent, "INUSE")
        call.exten(leg, "outbound", customer, 5, "Dial", f"PJSIP/{customer}@trunk,{int(OUTBOUND_DIAL_TIMEOUT)}")
        call.dial_app_vars(leg)
        trunk = call.new_channel(
            TRUNK, state=DOWN, cid_num="<unknown>", cid_name="<unknown>", context="from-trunk", exten="s"
        )
        trunk.cid_num, trunk.cid_name, trunk.exten = customer, cid_name, customer
        for var in ("RECFILE", "DID_NAME", "DID"):
            trunk.vars[var] = leg.vars[var]
        trunk.conn_num = trunk.conn_name = outcid
        # The trunk channel inherits the account before its events are published.
        trunk.account = account
        call.chan_event("NewCallerid", trunk, **{"CID-CallingPres": "0 (Presentation Allowed, Not Screened)"})
        if account:
            call.chan_event("NewAccountCode", trunk, OldAccountCode="")
        call.chan_event("NewConnectedLine", trunk)
        leg.conn_num, leg.conn_name = customer, cid_name
        call.dial_begin(leg, trunk, f"{customer}@trunk")
        call.set_state(trunk, RINGING)
        call.dial_state(leg, trunk)
        call.device(f"PJSIP/{TRUNK}", "RINGING")
        if not answered:
            call.wait(OUTBOUND_DIAL_TIMEOUT)
            call.dial_end(leg, trunk, "NOANSWER")
            call.hangup(trunk, 0)
            call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
            call.dial_result_vars(leg, "NOANSWER", OUTBOUND_DIAL_TIMEOUT, None)
            call.exten(leg, "outbound", customer, 6, "Hangup", "")
            call.soft_hangup_request(leg)
            call.cdr(
                leg, source=outcid, destination=customer, dest_context="outbound", dest_channel=trunk.name,
                app="Dial", data=f"PJSIP/{customer}@trunk,30", start=0.0, answer=agent_ring, end=call.t,
                disposition="NO ANSWER", userfield="",
            )
            call.hangup(leg, 16)
            call.agent_device(agent, "NOT_INUSE")
            return self._end(call)
        call.wait(ring)
        call.set_state(trunk, UP)
        call.device(f"PJSIP/{TRUNK}", "INUSE")
        trunk.exten = ""
        call.dial_end(leg, trunk, "ANSWER")
        bridge = call.new_bridge()
        call.bridge_enter(bridge, trunk)
        call.bridge_enter(bridge, leg)
        call.wait(talk)
        call.hangup_request(trunk, 16)
        call.bridge_leave(bridge, trunk)
        call.hangup(trunk, 16)
        call.bridge_leave(bridge, leg)
        call.bridge_destroy(bridge)
        call.soft_hangup_request(leg)
        call.device(f"PJSIP/{TRUNK}", "NOT_INUSE")
        call.rtp_qos(leg, talk)
        call.hangup(leg, 16)
        call.cdr(
            leg, source=outcid, destination=customer, dest_context="outbound", dest_channel=trunk.name,
            app="Dial", data=f"PJSIP/{customer}@trunk,30", start=0.0, answer=agent_ring, end=call.t,
            disposition="ANSWERED", userfield="",
        )
        call.agent_device(agent, "NOT_INUSE")
        return self._end(call)

    # -- shared steps -------------------------------------------------------------

    @staticmethod
    def _answer_direct(call: _Call, trunk: _Channel, leg: _Channel, agent: str) -> None:
        """The agent picks up a direct Dial (a_answered)."""
        call.set_state(leg, UP)
        leg.exten = ""
        call.set_var(trunk, "DIALSTATUS", "ANSWER")
        call.set_var(trunk, "DIALEDPEERNAME", leg.name)
        call.dial_end(trunk, leg, "ANSWER")
        call.set_state(trunk, UP)
        call.agent_device(agent, "INUSE")

    @staticmethod
    def _bridge_pair(call: _Call, leg: _Channel, trunk: _Channel) -> _Bridge:
        bridge = call.new_bridge()
        call.bridge_enter(bridge, leg)
        call.bridge_enter(bridge, trunk)
        return bridge
