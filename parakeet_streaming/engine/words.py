"""Word timestamps: tokens grouped into words at SentencePiece `▁` (word start) boundaries.

A word is complete when the next word starts, or when its utterance or segment ends (end of
utterance, flush, end of stream); only complete words are reported. Times come from the encoder
frame each token was emitted on: a word starts at its first token's frame and ends at the end of
its last token's frame. Its confidence is the lowest of its tokens' confidences.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from parakeet_streaming.model.tokenizer import Tokenizer

WORD_START = "\u2581"  # SentencePiece's word-boundary marker


@dataclass(frozen=True)
class Word:
    word: str
    start_ms: int
    end_ms: int
    confidence: float


def word_starts(tokenizer: Tokenizer) -> list[bool]:
    """Per token id: does its piece begin a new word?"""
    return [tokenizer.id_to_piece(i).startswith(WORD_START) for i in range(tokenizer.vocab_size)]


@dataclass
class WordBuilder:
    tokenizer: Tokenizer
    starts: list[bool]
    frame_ms: int
    _ids: list[int] = field(default_factory=list)
    _start: int = 0
    _last: int = 0
    _conf: float = 1.0

    def add(self, token_id: int, start_ms: int, confidence: float) -> list[Word]:
        """Feed one token; returns the word it completed, if any. Special tokens end the word."""
        if self.tokenizer.is_special(token_id) or not 0 <= token_id < len(self.starts):
            return self.close()
        done = self.close() if self.starts[token_id] else []
        if not self._ids:
            self._start, self._conf = start_ms, confidence
        self._ids.append(token_id)
        self._last, self._conf = start_ms, min(self._conf, confidence)
        return done

    def close(self, limit_ms: int | None = None) -> list[Word]:
        """End the open word (utterance, segment or stream over); `limit_ms`: where the audio ends."""
        if not self._ids:
            return []
        text = self.tokenizer.decode(self._ids).strip()
        end = self._last + self.frame_ms if limit_ms is None else min(self._last + self.frame_ms, limit_ms)
        word = Word(text, self._start, end, self._conf)
        self._ids = []
        return [word] if text else []


@dataclass
class TranscriptText:
    """The text of a growing token list, always equal to `tokenizer.decode(ids so far)`, at a cost
    that does not grow with the transcript: complete words are decoded once and kept.

    SentencePiece text concatenates at word starts: with `a` not empty and `b` starting with a
    word-start piece, decode(a + b) == decode(a) + decode_continuation(b).
    """

    tokenizer: Tokenizer
    starts: list[bool]
    _seen: int = 0  # ids taken from the caller's list so far
    _ids: list[int] = field(default_factory=list)  # the ids decode keeps
    _done: int = 0  # _ids[:_done] are complete words, whose text is _done_text
    _done_text: str = ""

    def update(self, ids: list[int]) -> str:
        """The text of `ids`, a list that only ever grows between calls."""
        self._ids.extend(i for i in ids[self._seen:] if self.tokenizer.is_text(i))
        self._seen = len(ids)
        cut = next((j for j in range(len(self._ids) - 1, self._done, -1) if self.starts[self._ids[j]]), 0)
        if cut > self._done:
            self._done_text, self._done = self._text(cut), cut
        return self._text(len(self._ids))

    def _text(self, end: int) -> str:
        """Text of _ids[:end], from the kept text of the complete words before it."""
        if self._done > 0:
            rest = self.tokenizer.decode_continuation(self._ids[self._done:end])
            if rest is not None:
                return self._done_text + rest
        return self.tokenizer.decode(self._ids[:end])
