"""Host-side state of one stream: its tokens, utterances and audio accounting, and the events they make.

End of utterance: `<EOU>` (or `<EOB>`, a backchannel) closes the current utterance. A step's tokens
are reported as one Result per utterance they touch, each followed by an UtteranceEnd where the
utterance closed, so every Result's tokens belong to a single utterance. Model state is NOT reset
after `<EOU>`: NeMo's own cache-aware streaming carries encoder caches and decoder state straight
through the token (its voice-agent pipeline resets them, the model does not), and keeping them keeps
our tokens equal to NeMo's for the whole stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from parakeet_streaming.engine.events import Event, Result, UtteranceEnd
from parakeet_streaming.engine.runner import StepOutput
from parakeet_streaming.model.tokenizer import Tokenizer


@dataclass
class Stream:
    id: int
    slot: int
    sink: Callable[[Event], None]
    tokenizer: Tokenizer
    sample_rate: int
    samples: int = 0  # received so far
    samples_covered: int = 0  # received samples the decoded frames cover (engine statistics)
    token_ids: list[int] = field(default_factory=list)
    utterance: int = 0
    utterance_start: int = 0  # index into token_ids where the current utterance starts
    finishing: bool = False

    def audio_ms(self, samples_covered: int) -> int:
        return samples_covered * 1000 // self.sample_rate

    def text(self) -> str:
        return self.tokenizer.decode(self.token_ids)

    def events(self, out: StepOutput) -> list[Event]:
        """The events one step's output makes, in order; the final Result last when `out.done`."""
        audio_ms = self.audio_ms(out.samples_covered)
        events: list[Event] = []
        start = 0
        for i, tok in enumerate(out.token_ids):
            if tok in (self.tokenizer.eou_id, self.tokenizer.eob_id):
                events.append(self._result(out, start, i + 1, audio_ms))
                events.append(self._end_utterance(audio_ms, backchannel=tok == self.tokenizer.eob_id))
                start = i + 1
        if start < len(out.token_ids) or out.done:
            events.append(self._result(out, start, len(out.token_ids), audio_ms, final=out.done))
        return events

    def _result(self, out: StepOutput, a: int, b: int, audio_ms: int, final: bool = False) -> Result:
        self.token_ids.extend(out.token_ids[a:b])
        return Result(
            stream_id=self.id, text=self.text(), token_ids=list(out.token_ids[a:b]),
            confidences=list(out.confidences[a:b]), token_frames=list(out.token_frames[a:b]),
            audio_ms=audio_ms, utterance=self.utterance, is_final=final,
        )

    def _end_utterance(self, audio_ms: int, backchannel: bool) -> UtteranceEnd:
        text = self.tokenizer.decode(self.token_ids[self.utterance_start:]).strip()
        event = UtteranceEnd(self.id, self.utterance, text, audio_ms, backchannel=backchannel)
        self.utterance += 1
        self.utterance_start = len(self.token_ids)
        return event
