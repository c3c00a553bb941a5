"""A finished stream's events -> segments, and the OpenAI response formats (json, text,
verbose_json, srt, vtt). Pure functions of plain data: no I/O."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from parakeet_streaming.engine.events import Event, Result, UtteranceEnd
from parakeet_streaming.engine.words import Word

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CONTENT_TYPES = {"json": "application/json", "verbose_json": "application/json", "text": "text/plain",
                 "srt": "application/x-subrip", "vtt": "text/vtt"}


@dataclass
class Segment:
    """One utterance (ended by the model, the endpointer or a flush), or the unfinished tail."""

    id: int
    start_ms: int
    end_ms: int  # clamped so that segments never overlap
    text: str
    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    index: int = 0  # the stream's utterance index
    audio_ms: int = 0  # where the stream said it ended
    backchannel: bool = False
    reason: str | None = None  # "model" | "silence" | "flush"; None: the unfinished tail


@dataclass
class FileTranscript:
    """A finished stream: the one fold of its events, for every output (HTTP formats, the CLI)."""

    text: str
    duration_s: float
    utterances: list[Segment]  # every utterance end, in order (some without words), then the tail
    words: list[Word]
    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    token_frames: list[int] = field(default_factory=list)
    token_start_ms: list[int] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        """The utterances with words, numbered from 0."""
        return [replace(u, id=i) for i, u in enumerate(u for u in self.utterances if u.text)]


def collect(events: Iterable[Event], duration_s: float) -> FileTranscript:
    """Events of one stream, in order, ending with the final Result -> its transcript."""
    t = FileTranscript("", duration_s, [], [])
    tokens: list[int] = []
    confs: list[float] = []
    words: list[Word] = []
    committed, text, prev_end = "", "", 0
    final: Result | None = None

    def close(index: int, seg_text: str, end_ms: int, extra_words: list[Word], **end: Any) -> None:
        nonlocal tokens, confs, words, prev_end
        words += extra_words
        # Word times are frame-exact, utterance ends chunk-exact: clamp so segments never overlap.
        start = max(words[0].start_ms, prev_end) if words else prev_end
        stop = max(start, end_ms)
        t.utterances.append(Segment(len(t.utterances), start, stop, seg_text.strip(), tokens, confs, words,
                                    index, end_ms, **end))
        tokens, confs, words, prev_end = [], [], [], stop

    for ev in events:
        if isinstance(ev, Result):
            tokens += ev.token_ids
            confs += ev.confidences
            words += ev.words
            t.words += ev.words
            t.token_ids += ev.token_ids
            t.confidences += ev.confidences
            t.token_frames += ev.token_frames
            t.token_start_ms += ev.token_start_ms
            text = ev.text
            final = ev if ev.is_final else final
        elif isinstance(ev, UtteranceEnd):
            t.words += ev.words
            close(ev.utterance, ev.text, ev.audio_ms, list(ev.words), backchannel=ev.backchannel, reason=ev.reason)
            committed = text
    if final is None:
        raise ValueError("the events end without a final result")
    tail = final.text[len(committed):] if final.text.startswith(committed) else ""
    close(final.utterance, tail, final.audio_ms, [])
    if not t.utterances[-1].text:
        t.utterances.pop()  # no unfinished tail
    t.text = final.text
    return t


def cli_json(t: FileTranscript) -> dict[str, Any]:
    """`parakeet-server transcribe --json`."""
    utterances = [{"index": u.index, "text": u.text, "audio_ms": u.audio_ms, "backchannel": u.backchannel,
                   "ended": u.reason is not None, **({"reason": u.reason} if u.reason is not None else {})}
                  for u in t.utterances]
    return {"text": t.text, "token_ids": t.token_ids, "confidence_scores": t.confidences,
            "token_frames": t.token_frames, "token_start_ms": t.token_start_ms,
            "words": [vars(w) for w in t.words], "utterances": utterances}


def render(t: FileTranscript, fmt: str, word_timestamps: bool = False) -> str | dict[str, Any]:
    """The response body: a dict for the JSON formats, text otherwise."""
    if fmt == "json":
        return {"text": t.text, "usage": {"type": "duration", "seconds": round(t.duration_s, 3)}}
    if fmt == "text":
        return t.text + "\n"
    if fmt == "verbose_json":
        return verbose_json(t, word_timestamps)
    if fmt == "srt":
        return srt(t.segments)
    if fmt == "vtt":
        return vtt(t.segments)
    raise ValueError(f"unknown response_format {fmt!r}")


def verbose_json(t: FileTranscript, word_timestamps: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": "transcribe", "language": "english", "duration": round(t.duration_s, 3), "text": t.text,
        "segments": [_segment_json(s) for s in t.segments],
        "usage": {"type": "duration", "seconds": round(t.duration_s, 3)},
    }
    if word_timestamps:
        body["words"] = [{"word": w.word, "start": w.start_ms / 1000, "end": w.end_ms / 1000} for w in t.words]
    return body


def _segment_json(s: Segment) -> dict[str, Any]:
    # avg_logprob: mean log of the token confidences (the model's own scores, not Whisper log-probs).
    logs = [math.log(max(c, 1e-6)) for c in s.confidences]
    return {"id": s.id, "seek": 0, "start": s.start_ms / 1000, "end": s.end_ms / 1000, "text": s.text,
            "tokens": [int(t) for t in s.token_ids], "temperature": 0.0,
            "avg_logprob": round(sum(logs) / len(logs), 4) if logs else 0.0,
            "compression_ratio": 1.0, "no_speech_prob": 0.0}


def srt(segments: list[Segment]) -> str:
    blocks = [f"{i + 1}\n{_clock(s.start_ms, ',')} --> {_clock(s.end_ms, ',')}\n{s.text}\n"
              for i, s in enumerate(segments) if s.text]
    return "\n".join(blocks)


def vtt(segments: list[Segment]) -> str:
    blocks = [f"{_clock(s.start_ms, '.')} --> {_clock(s.end_ms, '.')}\n{s.text}\n" for s in segments if s.text]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _clock(ms: int, sep: str) -> str:
    h, rest = divmod(int(ms), 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"
