"""Host-side state of one stream: its tokens, utterances, words and audio accounting, and the events they make.

End of utterance: `<EOU>` (or `<EOB>`, a backchannel) closes the current utterance, and so does a
silence endpoint (`endpointing.py`) or a flush. A step's tokens are reported as one Result per
utterance they touch, each followed by an UtteranceEnd where the utterance closed, so every
Result's tokens belong to a single utterance. Model state is NOT reset after `<EOU>` or a silence
endpoint: NeMo's own cache-aware streaming carries encoder caches and decoder state straight
through the token (its voice-agent pipeline resets them, the model does not), and keeping them
keeps our tokens equal to NeMo's for the whole stream.

Segments: a flush decodes everything received like an end of stream, then the engine resets the
slot's model state and the stream goes on as a new segment. Times stay on the stream's clock:
`seg_start` (samples before the segment) is added to the runner's per-segment counts.

The Stream owns every transition of its own state (audio received, finish, flush and the commands
that wait for it, a step's output, when it was last served, its endpointer); the Engine owns the
inbox, the slot map, scheduling, the runner and emitting.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from parakeet_streaming.endpointing import EndpointConfig, Endpointer
from parakeet_streaming.engine.events import Event, Result, UtteranceEnd
from parakeet_streaming.engine.runner import StepOutput
from parakeet_streaming.engine.words import TranscriptText, Word, WordBuilder, word_starts
from parakeet_streaming.model.tokenizer import Tokenizer


@dataclass
class Stream:
    id: int
    slot: int
    sink: Callable[[Event], None]
    tokenizer: Tokenizer
    sample_rate: int
    frame_ms: int = 80
    starts: list[bool] | None = None  # word_starts(tokenizer), shared by the engine's streams
    endpointer: Endpointer | None = None
    samples: int = 0  # received so far (pushed to the runner)
    samples_covered: int = 0  # received samples the decoded frames cover (engine statistics)
    seg_start: int = 0  # stream samples before the current segment
    token_ids: list[int] = field(default_factory=list)
    utterance: int = 0
    utterance_start: int = 0  # index into token_ids where the current utterance starts
    finishing: bool = False
    flushing: bool = False  # a flush is being decoded; commands wait in `backlog`
    backlog: list[Any] = field(default_factory=list)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (samples received, when), not yet decoded
    last_served: int = -1  # the engine's serve order when this stream last stepped (-1: never)
    _words: WordBuilder = field(init=False)
    _text: TranscriptText = field(init=False)

    def __post_init__(self) -> None:
        starts = self.starts if self.starts is not None else word_starts(self.tokenizer)
        self._words = WordBuilder(self.tokenizer, starts, self.frame_ms)
        self._text = TranscriptText(self.tokenizer, starts)

    # ---- transitions (the engine calls these; they say whether the runner has something to do) ----
    @property
    def ending(self) -> bool:
        """The runner was told the segment ends (finish or flush): its tail decodes next."""
        return self.finishing or self.flushing

    def on_audio(self, samples: int, at: float) -> bool:
        """`samples` arrived at perf_counter `at`; False once finishing (late audio is dropped)."""
        if self.finishing or not samples:
            return False
        self.samples += samples
        self.arrivals.append((self.samples, at))
        return True

    def finish(self) -> bool:
        """No more audio; True the first time (the runner must finish the slot)."""
        first, self.finishing = not self.finishing, True
        return first

    def begin_flush(self) -> bool:
        """Decode all so far as a segment; True unless finishing (the runner must finish the slot)."""
        self.flushing = not self.finishing
        return self.flushing

    def defer(self, command: Any) -> bool:
        """While a flush decodes, commands wait for the next segment; True if `command` waits."""
        if self.flushing:
            self.backlog.append(command)
        return self.flushing

    def new_segment(self) -> list[Any]:
        """After a flush: later audio is a new segment on the same clock. Returns the waiting commands."""
        self.seg_start = self.samples
        self.flushing = False
        backlog, self.backlog = self.backlog, []
        return backlog

    @property
    def uses_vad(self) -> bool:
        return self.endpointer is not None and self.endpointer.config.uses_vad

    def set_endpoint(self, config: EndpointConfig) -> bool:
        """This stream's endpointing; True when it newly needs the VAD (from `self.samples` on)."""
        had_vad = self.uses_vad
        if not config.enabled:
            self.endpointer = None
        elif self.endpointer is None:
            self.endpointer = Endpointer(config, self.frame_ms)
        else:
            self.endpointer.config = config  # keeps what the VAD heard so far
        return self.uses_vad and not had_vad

    def on_vad(self, start_ms: int, frame_ms: int, probs: list[float]) -> None:
        if self.endpointer is not None:
            self.endpointer.on_vad(start_ms, frame_ms, probs)

    def on_step(self, out: StepOutput, served: int, now: float) -> tuple[int, float | None]:
        """Stepped as number `served` of the serve order, ending at perf_counter `now`: the stream
        samples newly covered and, if any, the decode lag of the newest (engine statistics).
        `events(out)` then makes the events."""
        self.last_served = served
        new = self.covered(out)
        lag = now - arrived if new > self.samples_covered and (arrived := self.arrived(new)) is not None else None
        gained, self.samples_covered = new - self.samples_covered, new
        return gained, lag

    # ---- events ----------------------------------------------------------------------------
    def audio_ms(self, samples_covered: int) -> int:
        return samples_covered * 1000 // self.sample_rate

    def arrived(self, sample: int) -> float | None:
        """When the audio up to stream sample `sample` had arrived (forgetting earlier arrivals)."""
        while len(self.arrivals) > 1 and self.arrivals[0][0] < sample:
            self.arrivals.popleft()
        return self.arrivals[0][1] if self.arrivals and self.arrivals[0][0] >= sample else None

    def covered(self, out: StepOutput) -> int:
        """Stream samples the decoded frames cover."""
        return self.seg_start + out.samples_covered

    def events(self, out: StepOutput) -> list[Event]:
        """The events one step's output makes, in order; the final (or flushed) Result last when `out.done`."""
        audio_ms = self.audio_ms(self.covered(out))
        seg_ms = self.audio_ms(self.seg_start)
        # The encoder's last frame of a segment may lie partly past the audio (padding): a token on
        # it starts at the last frame start inside the audio, so every start is < audio_ms.
        last = seg_ms + max(0, audio_ms - seg_ms - 1) // self.frame_ms * self.frame_ms
        ms = [min(seg_ms + f * self.frame_ms, last) for f in out.token_frames]
        events: list[Event] = []
        start, words = 0, []
        for i, tok in enumerate(out.token_ids):
            start, words = self._silence_ends(events, out, ms, start, i, words, limit=ms[i])
            words += self._words.add(tok, ms[i], out.confidences[i])
            if tok in (self.tokenizer.eou_id, self.tokenizer.eob_id):
                events.append(self._result(out, ms, start, i + 1, audio_ms, words))
                events.append(self._end(audio_ms, ms[i], backchannel=tok == self.tokenizer.eob_id))
                start, words = i + 1, []
            elif self.endpointer is not None:
                self.endpointer.on_token(ms[i])
        n = len(out.token_ids)
        start, words = self._silence_ends(events, out, ms, start, n, words,
                                          limit=seg_ms + out.frames_decoded * self.frame_ms)
        if out.done:
            words += self._words.close(limit_ms=audio_ms)
        if start < n or out.done:
            events.append(self._result(out, ms, start, n, audio_ms, words, final=out.done and not self.flushing,
                                       flushed=out.done and self.flushing))
        if out.done and self.flushing and self.utterance_start < len(self.token_ids):
            events.append(self._end(audio_ms, audio_ms, reason="flush"))
        return events

    def _silence_ends(self, events: list[Event], out: StepOutput, ms: list[int], start: int, i: int,
                      words: list[Word], limit: int) -> tuple[int, list[Word]]:
        """Silence endpoints due before token i (starting at `limit`): close the utterance there."""
        while self.endpointer is not None and (at := self.endpointer.due(limit)) is not None:
            if self.utterance_start == len(self.token_ids) and start == i:
                self.endpointer.ended(at)  # nothing was said: no empty utterance
                continue
            if start < i:
                events.append(self._result(out, ms, start, i, self.audio_ms(self.covered(out)), words))
                start, words = i, []
            events.append(self._end(at, at, reason="silence", words=self._words.close()))
        return start, words

    def _result(self, out: StepOutput, ms: list[int], a: int, b: int, audio_ms: int, words: list[Word],
                final: bool = False, flushed: bool = False) -> Result:
        self.token_ids.extend(out.token_ids[a:b])
        return Result(
            stream_id=self.id, text=self._text.update(self.token_ids), token_ids=list(out.token_ids[a:b]),
            confidences=list(out.confidences[a:b]), token_frames=list(out.token_frames[a:b]),
            audio_ms=audio_ms, utterance=self.utterance, is_final=final, flushed=flushed,
            token_start_ms=ms[a:b], words=words,
        )

    def _end(self, audio_ms: int, at_ms: int, backchannel: bool = False, reason: str = "model",
             words: list[Word] | None = None) -> UtteranceEnd:
        text = self.tokenizer.decode(self.token_ids[self.utterance_start:]).strip()
        event = UtteranceEnd(self.id, self.utterance, text, audio_ms, backchannel=backchannel, reason=reason,
                             words=words or [])
        self.utterance += 1
        self.utterance_start = len(self.token_ids)
        if self.endpointer is not None:
            self.endpointer.ended(at_ms)
        return event
