"""Replay a capture through the live service's codec, normaliser and tracker,
yielding one record per finished call, then the calls still open."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from connectors.ami.capture import read_capture
from connectors.ami.codec import AmiCodec
from connectors.ami.normalise import AmiNormaliser, ChannelClassifier
from gateway.effects import CallFinished
from gateway.record import CallRecord
from gateway.tracker import CallTracker


def replay_capture(
    path: Path,
    *,
    classifier: ChannelClassifier | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[CallRecord]:
    codec = AmiCodec(keep_events=AmiNormaliser.HANDLED_EVENTS)
    normaliser = AmiNormaliser(classifier, clock=clock)
    tracker = CallTracker()

    def drain() -> Iterator[CallRecord]:
        for message in codec.messages():
            for event in normaliser.normalise(message):
                for effect in tracker.feed(event):
                    if isinstance(effect, CallFinished):
                        yield effect.record

    for chunk in read_capture(path):
        codec.receive_data(chunk)
        yield from drain()
    codec.receive_data(b"")
    yield from drain()
    yield from tracker.snapshot(clock())
