"""What the engine tells a stream's sink. Plain data: the server turns these into protocol messages."""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, replace

from parakeet_streaming.engine.words import Word


@dataclass(frozen=True)
class Result:
    """New tokens of one stream. `text` is the whole transcript so far (special tokens removed)."""

    stream_id: int
    text: str
    token_ids: list[int]  # emitted since the previous Result (special tokens included)
    confidences: list[float]  # aligned with token_ids
    token_frames: list[int]  # encoder frame index of each token (frame_ms each) within the segment
    audio_ms: int  # stream audio covered by the transcript
    utterance: int  # index of the utterance the newest token belongs to
    is_final: bool = False
    flushed: bool = False  # answers a flush: every sample received before it is decoded
    token_start_ms: list[int] = field(default_factory=list)  # stream time each token starts at
    words: list[Word] = field(default_factory=list)  # words these tokens completed (see words.py)


@dataclass(frozen=True)
class UtteranceEnd:
    """The model emitted <EOU> (or <EOB>, then `backchannel` is True), an endpointer fired, or a
    flush ended the utterance. `reason`: "model" | "silence" | "flush"."""

    stream_id: int
    utterance: int
    text: str
    audio_ms: int
    backchannel: bool = False
    reason: str = "model"
    words: list[Word] = field(default_factory=list)  # words the end completed (its last one, usually)


@dataclass(frozen=True)
class StreamFailed:
    """The engine could not serve this stream (e.g. an internal error); the stream is over."""

    stream_id: int
    code: str
    message: str


@dataclass(frozen=True)
class KeytermsRejected:
    """A stream's new key-term list could not be used (KeytermError's message); the stream goes on
    with the list it had."""

    stream_id: int
    message: str


Event = Result | UtteranceEnd | StreamFailed | KeytermsRejected


class ServerFull(Exception):
    """Every stream slot is taken."""


class EngineStopped(ServerFull):
    """The engine is shut down. Its own type, mapped to `shutting_down` (engine/handle.py); still a
    ServerFull for code that only asks "was the stream refused?"."""


STEP_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
DECODE_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                      5.0, 10.0)


@dataclass
class Buckets:
    """A histogram the engine thread alone writes: counts[i] = observations <= bounds[i] and above
    the bound before; the last count is above every bound. Readers copy it (see `copy`)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> "Buckets":
        return Buckets(self.bounds, list(self.counts), self.total)


@dataclass
class EngineStats:
    """The engine's counters; the engine thread alone writes them, readers take `copy()`. Every field
    is exported by server/metrics.py."""

    active_streams: int = 0
    free_slots: int = 0
    streams_opened: int = 0
    step_failures: int = 0  # batched steps that raised (their streams failed)
    sink_failures: int = 0  # event sinks that raised (their streams were dropped)
    audio_seconds: float = 0.0  # stream audio decoded
    max_batch_size: int = 0  # the largest batch stepped so far
    step_seconds: Buckets = field(default_factory=lambda: Buckets(STEP_SECONDS_BUCKETS))
    batch_size: Buckets = field(default_factory=lambda: Buckets(BATCH_SIZE_BUCKETS))
    # Per stream and step: from the arrival of the audio its newest decoded frame needs to the step's end.
    decode_lag: Buckets = field(default_factory=lambda: Buckets(DECODE_LAG_BUCKETS))

    @property
    def steps(self) -> int:
        return sum(self.step_seconds.counts)

    def copy(self) -> "EngineStats":
        return replace(self, step_seconds=self.step_seconds.copy(), batch_size=self.batch_size.copy(),
                       decode_lag=self.decode_lag.copy())
