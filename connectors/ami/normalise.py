"""AMI messages -> the core's normalised events. The only place that knows
Asterisk's event names, headers and channel naming.

Facts from real Asterisk 22 traffic that shape this module:
- ``Linkedid`` ties the legs of a call; ``Uniqueid`` names a leg (an Originate
  with ``ChannelId`` gives non-numeric ids).
- The first DialBegin/DialEnd of an Originate carry only ``Dest*`` headers: the
  PBX itself rings the agent, nobody offers him a call.
- Events carry no time unless ``timestampevents`` is on; then ``Timestamp`` is
  used, else the time the message arrived.
- A restart shows as ``Shutdown``, or as a ``FullyBooted`` whose ``Uptime`` is
  smaller than the one seen before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from connectors.ami.codec import AmiMessage
from gateway.events import (
    CallEvent,
    CallTransferred,
    DialStatus,
    LegBridged,
    LegCreated,
    LegDialEnded,
    LegDialled,
    LegHangupRequested,
    LegHungUp,
    LegRinging,
    LegUnbridged,
    LiveLegsListed,
    PartyKind,
    PbxRestarted,
    QueueAbandoned,
    QueueJoined,
    QueueLeft,
    RecordingStarted,
)

AGENT_TECHNOLOGIES = frozenset({"PJSIP", "SIP", "IAX2"})
_UNKNOWN = frozenset({"", "<unknown>", "unknown"})
_DIAL_STATUS = {
    "ANSWER": DialStatus.ANSWER,
    "NOANSWER": DialStatus.NOANSWER,
    "BUSY": DialStatus.BUSY,
    "CANCEL": DialStatus.CANCEL,
    "CONGESTION": DialStatus.CONGESTION,
    "CHANUNAVAIL": DialStatus.UNAVAILABLE,
}


def device_of(channel: str) -> str:
    """``PJSIP/101-0000000a`` -> ``PJSIP/101`` (the endpoint, without the
    per-call sequence suffix)."""
    head, sep, tail = channel.rpartition("-")
    return head if sep and tail and all(c in "0123456789abcdefABCDEF" for c in tail) else channel


class ChannelClassifier:
    """Tells agents from trunks and plumbing by channel name.

    With configured devices (``{"PJSIP/101": "101"}``) only those are agents;
    without, a PJSIP/SIP/IAX2 endpoint whose name is all digits is the agent
    with that extension. Local channels are never agents.
    """

    def __init__(self, devices: Mapping[str, str] | None = None) -> None:
        self._devices = dict(devices or {})
        self._cache: dict[str, tuple[PartyKind, str | None]] = {}

    def classify(self, channel: str) -> tuple[PartyKind, str | None]:
        device = device_of(channel)
        hit = self._cache.get(device)
        if hit is not None:
            return hit
        tech, _, resource = device.partition("/")
        result: tuple[PartyKind, str | None]
        if tech == "Local":
            result = (PartyKind.LOCAL, None)
        elif self._devices:
            ext = self._devices.get(device)
            result = (PartyKind.AGENT, ext) if ext else (PartyKind.EXTERNAL, None)
        elif tech in AGENT_TECHNOLOGIES and resource.isdigit():
            result = (PartyKind.AGENT, resource)
        else:
            result = (PartyKind.EXTERNAL, None)
        if len(self._cache) < 10_000:
            self._cache[device] = result
        return result


_LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z: later is no time of a call (nor of datetime)
_LONGEST = 366 * 86400  # seconds: a channel "up" for longer is a garbled Duration


def _str(msg: AmiMessage, key: str) -> str:
    value = msg.get(key, "")
    return value if isinstance(value, str) else (value[0] if value else "")


def _opt(msg: AmiMessage, key: str) -> str | None:
    value = _str(msg, key)
    return None if value in _UNKNOWN else value


def _looks_like_number(value: str | None) -> bool:
    return bool(value) and value is not None and value.lstrip("+").isdigit()


def _duration(text: str) -> float:
    """``HH:MM:SS`` -> seconds (0 when unreadable, or longer than a channel lives)."""
    try:
        hours, minutes, seconds = (int(part) for part in text.split(":"))
    except ValueError:
        return 0.0
    total = hours * 3600 + minutes * 60 + seconds
    return float(total) if 0 <= total <= _LONGEST else 0.0


def chan_variable(msg: AmiMessage, name: str, header: str = "ChanVariable") -> str | None:
    """A variable from ``ChanVariable: NAME=value`` headers (manager.conf channelvars)."""
    raw = msg.get(header)
    if raw is None:
        return None
    prefix = name + "="
    for item in [raw] if isinstance(raw, str) else raw:
        if item.startswith(prefix):
            return item[len(prefix) :] or None
    return None


class AmiNormaliser:
    """One per PBX link, kept across reconnects: it remembers the PBX's uptime
    (restart detection) and the resync listing in progress."""

    # The events this module reads; the codec drops every other event by its
    # first line, before decoding it (most of a busy PBX's traffic).
    HANDLED_EVENTS = frozenset({
        "Newchannel", "DialBegin", "DialEnd", "Newstate", "BridgeEnter", "BridgeLeave", "HangupRequest",
        "SoftHangupRequest", "Hangup", "QueueCallerJoin", "QueueCallerLeave", "QueueCallerAbandon",
        "BlindTransfer", "AttendedTransfer", "MixMonitorStart", "Shutdown", "FullyBooted",
        "CoreShowChannel", "CoreShowChannelsComplete", "QueueEntry",
    })

    def __init__(
        self,
        classifier: ChannelClassifier | None = None,
        *,
        recording_variable: str = "RECFILE",
        did_variable: str = "DID",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.classifier = classifier or ChannelClassifier()
        self._recording_variable = recording_variable
        self._did_variable = did_variable
        self._clock = clock
        self._uptime: float | None = None
        self._listing: dict[str, set[tuple[str, str]]] = {}  # ActionID -> legs listed so far
        self._handlers: dict[str, Callable[[AmiMessage, float], list[CallEvent]]] = {
            "Newchannel": self._newchannel,
            "DialBegin": self._dial_begin,
            "DialEnd": self._dial_end,
            "Newstate": self._newstate,
            "BridgeEnter": self._bridge_enter,
            "BridgeLeave": self._bridge_leave,
            "HangupRequest": self._hangup_request,
            "SoftHangupRequest": self._hangup_request,
            "Hangup": self._hangup,
            "QueueCallerJoin": self._queue_join,
            "QueueCallerLeave": self._queue_leave,
            "QueueCallerAbandon": self._queue_abandon,
            "BlindTransfer": self._blind_transfer,
            "AttendedTransfer": self._attended_transfer,
            "MixMonitorStart": self._mixmonitor,
            "Shutdown": self._shutdown,
            "FullyBooted": self._fully_booted,
            "CoreShowChannel": self._listed_channel,
            "CoreShowChannelsComplete": self._listing_complete,
            "QueueEntry": self._queue_entry,
        }
        assert set(self._handlers) == self.HANDLED_EVENTS

    def normalise(self, msg: AmiMessage, received_at: float | None = None) -> list[CallEvent]:
        """The core events one AMI message stands for (usually none or one)."""
        name = msg.get("Event")
        if not isinstance(name, str):
            return []
        handler = self._handlers.get(name)
        if handler is None:
            return []
        stamp = msg.get("Timestamp")
        at: float | None = None
        if isinstance(stamp, str) and stamp:
            try:
                at = float(stamp)
            except ValueError:
                pass
            if at is not None and not 0 <= at < _LATEST:
                at = None  # nan, inf, 1e308: no time a record could be stored with
        if at is None:
            at = received_at if received_at is not None else self._clock()
        return handler(msg, at)

    # -- channel events ------------------------------------------------------

    def _newchannel(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        kind, ext = self.classifier.classify(_str(msg, "Channel"))
        exten = _opt(msg, "Exten")
        dialled = exten if _looks_like_number(exten) else chan_variable(msg, self._did_variable)
        return [
            LegCreated(
                _str(msg, "Linkedid"),
                _str(msg, "Uniqueid"),
                at,
                kind,
                ext,
                _opt(msg, "CallerIDNum"),
                _opt(msg, "CallerIDName"),
                dialled if kind is PartyKind.EXTERNAL else None,
            )
        ]

    def _dial_begin(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        source = _opt(msg, "Uniqueid")
        exten = _opt(msg, "Exten")
        if not _looks_like_number(exten):
            dial_string = _str(msg, "DialString")
            exten = dial_string.rpartition("/")[2].partition("@")[0] or None
        return [LegDialled(_str(msg, "DestLinkedid"), _str(msg, "DestUniqueid"), at, source, exten)]

    def _dial_end(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        status = _DIAL_STATUS.get(_str(msg, "DialStatus"), DialStatus.OTHER)
        return [
            LegDialEnded(_str(msg, "DestLinkedid"), _str(msg, "DestUniqueid"), at, status, _opt(msg, "Uniqueid"))
        ]

    def _newstate(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        if _str(msg, "ChannelStateDesc") != "Ringing":
            return []
        return [LegRinging(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), at)]

    def _bridge_enter(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        holding = _str(msg, "BridgeType") in ("holding", "parking")
        return [LegBridged(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "BridgeUniqueid"), at, holding)]

    def _bridge_leave(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [LegUnbridged(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "BridgeUniqueid"), at)]

    def _hangup_request(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [LegHangupRequested(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), at)]

    def _hangup(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        cause_text = _opt(msg, "Cause-txt")
        try:
            cause: int | None = int(_str(msg, "Cause"))
        except ValueError:
            cause = None
        if cause is not None and not 0 <= cause <= 127:
            cause = None  # no Q.850 cause; a huge one could not even be stored
        return [LegHungUp(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), at, cause, cause_text)]

    def _queue_join(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [QueueJoined(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "Queue"), at)]

    def _queue_leave(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [QueueLeft(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "Queue"), at)]

    def _queue_abandon(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [QueueAbandoned(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "Queue"), at)]

    def _blind_transfer(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        call_id = _str(msg, "TransfereeLinkedid") or _str(msg, "TransfererLinkedid")
        return [CallTransferred(call_id, at, "blind", _opt(msg, "Extension"))]

    def _attended_transfer(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        call_id = _str(msg, "OrigTransfererLinkedid") or _str(msg, "TransfereeLinkedid")
        return [CallTransferred(call_id, at, "attended", _opt(msg, "DestExten") or _opt(msg, "TransferTargetChannel"))]

    def _mixmonitor(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        path = chan_variable(msg, self._recording_variable)
        return [RecordingStarted(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), at, path)]

    # -- resync after a (re)connect ----------------------------------------------

    def _listed_channel(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        """A live channel in the CoreShowChannels answer: recreate what it tells."""
        call_id, leg_id = _str(msg, "Linkedid"), _str(msg, "Uniqueid")
        if not call_id or not leg_id:
            return []
        self._listing.setdefault(_str(msg, "ActionID"), set()).add((call_id, leg_id))
        started = at - _duration(_str(msg, "Duration"))
        events: list[CallEvent] = self._newchannel(msg, started)
        created = events[0]
        assert isinstance(created, LegCreated)
        if created.kind is PartyKind.AGENT and _str(msg, "ChannelStateDesc") == "Ringing":
            # Its dial began while we were away: an offer still ringing.
            events += [LegDialled(call_id, leg_id, at, "resync"), LegRinging(call_id, leg_id, at)]
        bridge = _opt(msg, "BridgeId")
        if bridge:
            events.append(LegBridged(call_id, leg_id, bridge, at))
        return events

    def _listing_complete(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        legs = self._listing.pop(_str(msg, "ActionID"), set())
        return [LiveLegsListed(at, frozenset(legs))]

    def _queue_entry(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        return [QueueJoined(_str(msg, "Linkedid"), _str(msg, "Uniqueid"), _str(msg, "Queue"), at)]

    # -- PBX lifecycle -------------------------------------------------------

    def _shutdown(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        self._uptime = None
        return [PbxRestarted(at)]

    def _fully_booted(self, msg: AmiMessage, at: float) -> list[CallEvent]:
        # A new session: a listing the old one lost mid-way never completes.
        self._listing.clear()
        try:
            uptime: float | None = float(_str(msg, "Uptime"))
        except ValueError:
            uptime = None
        previous, self._uptime = self._uptime, uptime
        if previous is not None and uptime is not None and uptime < previous:
            return [PbxRestarted(at)]
        return []
