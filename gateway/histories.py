"""Calls from sources that deliver out of order and more than once (webhooks).

A cloud PBX posts its callbacks in parallel: a call's end can arrive before its
answer, and any callback may come twice. Feeding such events to one
``CallTracker`` in arrival order would give a different record for every
order. Instead the connector hands over a call's *whole history so far*, as
normalised events in the provider's own order (its sequence numbers and
times), each time the history grows; the call is rebuilt by a tracker of its
own, and only the effects not carried out before come out. Whatever the
arrival order, the last rebuild sees the same history and gives the same
record; a duplicate changes nothing.

The record comes out again when a later callback changes it (a recording that
is reported after the end): the store keeps one record per call, the later one.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence

from gateway.effects import AgentAnswered, AgentRingStarted, CallFinished, Effect
from gateway.events import CallEvent
from gateway.record import CallRecord
from gateway.tracker import CallTracker


class CallHistories:
    """The effects already carried out, per call, for the calls seen lately."""

    def __init__(self, *, remember: int = 20_000) -> None:
        self._remember = remember
        self._done: OrderedDict[str, tuple[Counter[Effect], CallRecord | None]] = OrderedDict()

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._done

    def finished(self, call_id: str) -> bool:
        """Whether the call's record has come out (and so is stored or being stored)."""
        entry = self._done.get(call_id)
        return entry is not None and entry[1] is not None

    def update(self, call_id: str, history: Sequence[CallEvent], *, given_up_at: float | None = None) -> list[Effect]:
        """The effects of ``history`` (every event of the call so far, in the
        provider's order) that were not returned for this call before.

        ``given_up_at``: the provider's final callback never came; end the
        call there, interrupted, with its best-known outcome.
        """
        tracker = CallTracker()
        effects = [effect for event in history for effect in tracker.feed(event)]
        if given_up_at is not None:
            effects += tracker.finish_all(max([given_up_at, *(event.at for event in history)]))
        done, last_record = self._done.pop(call_id, (Counter(), None))
        fresh: list[Effect] = []
        seen: Counter[Effect] = Counter()
        for effect in effects:
            if isinstance(effect, CallFinished):
                if effect.record != last_record:
                    fresh.append(effect)
                    last_record = effect.record
                continue
            seen[effect] += 1
            if seen[effect] > done[effect]:
                fresh.append(effect)
        self._done[call_id] = (done | seen, last_record)
        while len(self._done) > self._remember:
            self._done.popitem(last=False)  # the calls not heard of for longest
        if any(isinstance(effect, CallFinished) for effect in fresh):
            # The call is over already (its end came in with or before its
            # ringing, or it is rebuilt after a restart): no pop for it now.
            fresh = [e for e in fresh if not isinstance(e, (AgentRingStarted, AgentAnswered))]
        return fresh
