"""Transcoding a recording for the browser, and describing it.

pydub decodes whatever the PBX wrote (WAV, GSM, MP3...) through ffmpeg, and
encodes mono Opus in Ogg (default, small for voice) or MP3 at the configured
bitrate. It blocks and spawns ffmpeg: callers run ``transcode`` off the event
loop (``asyncio.to_thread``) under a bound on how many run at once.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pydub import AudioSegment  # type: ignore[import-untyped]

FORMATS = {
    # format: (pydub/ffmpeg container, codec, Content-Type, file suffix)
    "opus": ("ogg", "libopus", "audio/ogg", ".ogg"),
    "mp3": ("mp3", "libmp3lame", "audio/mpeg", ".mp3"),
}
PEAKS = 200  # bars of the player's waveform


class TranscodeError(Exception):
    """The source is not audio ffmpeg can read, or encoding failed."""


@dataclass(frozen=True, slots=True)
class Transcoded:
    data: bytes
    content_type: str
    suffix: str
    duration: float  # seconds, of the source
    peaks: list[float]  # PEAKS values in 0..1


def transcode(source: bytes, *, fmt: str = "opus", bitrate: str = "24k") -> Transcoded:
    container, codec, content_type, suffix = FORMATS[fmt]
    try:
        audio = AudioSegment.from_file(io.BytesIO(source))
    except Exception as exc:  # pydub raises CouldntDecodeError, ffmpeg failures, IndexError on garbage...
        raise TranscodeError(f"not audio ffmpeg can read: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from exc
    mono = audio.set_channels(1)
    out = io.BytesIO()
    try:
        mono.export(out, format=container, codec=codec, bitrate=bitrate)
    except Exception as exc:
        raise TranscodeError(f"encoding {fmt} failed: {str(exc)[:200]}") from exc
    return Transcoded(out.getvalue(), content_type, suffix, len(audio) / 1000.0, peaks(mono))


def peaks(audio: AudioSegment, bars: int = PEAKS) -> list[float]:
    """The loudest sample of each of ``bars`` equal slices, as a share of full scale."""
    samples = audio.get_array_of_samples()
    if not samples:
        return [0.0] * bars
    full = float(1 << (8 * audio.sample_width - 1))
    step = max(1, len(samples) // bars)
    out = []
    for start in range(0, step * bars, step):
        chunk = samples[start:start + step]
        out.append(min(1.0, max((abs(s) for s in chunk), default=0) / full))
    return out[:bars]
