"""What the engine tells a stream's sink. Plain data: the server turns these into protocol messages."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Result:
    """New tokens of one stream. `text` is the whole transcript so far (special tokens removed)."""

    stream_id: int
    text: str
    token_ids: list[int]  # emitted since the previous Result (special tokens included)
    confidences: list[float]  # aligned with token_ids
    token_frames: list[int]  # encoder frame index of each token (frame_ms each)
    audio_ms: int  # stream audio covered by the transcript
    utterance: int  # index of the utterance the newest token belongs to
    is_final: bool = False
    flushed: bool = False


@dataclass(frozen=True)
class UtteranceEnd:
    """The model emitted <EOU> (or <EOB>, then `backchannel` is True), or an endpointer fired."""

    stream_id: int
    utterance: int
    text: str
    audio_ms: int
    backchannel: bool = False


@dataclass(frozen=True)
class StreamFailed:
    """The engine could not serve this stream (e.g. an internal error); the stream is over."""

    stream_id: int
    code: str
    message: str


Event = Result | UtteranceEnd | StreamFailed


class ServerFull(Exception):
    """Every stream slot is taken."""


@dataclass
class EngineStats:
    active_streams: int = 0
    free_slots: int = 0
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)
