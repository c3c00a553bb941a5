"""engine/words.TranscriptText: the incremental transcript text equals a full decode, every time."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm

from parakeet_streaming.engine.words import TranscriptText, word_starts
from parakeet_streaming.model.loader import load_nemo_archive
from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE, Tokenizer

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def byte_fallback_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """Trained here, with byte fallback, so ids include <0x..> pieces and multi-byte characters."""
    rng = random.Random(0)
    words = ["naïve", "café", "über", "speech", "stream", "token", "hello", "world"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    lines += ["日本 €5"] * 5  # rare: below the character coverage, so they become byte pieces
    prefix = tmp_path_factory.mktemp("spm") / "bf"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=300,
                                   model_type="bpe", byte_fallback=True, character_coverage=0.98,
                                   num_threads=1, minloglevel=2)
    return Tokenizer.from_file(f"{prefix}.model")


def tokenizers(byte_fallback: Tokenizer) -> list[Tokenizer]:
    trained = load_nemo_archive(GOLDEN / "small" / "model.nemo").tokenizer
    return [Tokenizer.synthetic(1026, (EOU_PIECE, EOB_PIECE)), trained, byte_fallback]


def test_equals_full_decode_on_random_streams(byte_fallback_tokenizer: Tokenizer) -> None:
    rng = random.Random(1)
    for tok in tokenizers(byte_fallback_tokenizer):
        starts = word_starts(tok)
        assert tok.decode_continuation([]) is not None  # each has an anchor piece, so caching is exercised
        for _ in range(200):
            text, ids = TranscriptText(tok, starts), []
            for _ in range(rng.randint(1, 30)):
                # out-of-range and blank ids included: decode drops them, so must the incremental text
                ids += [rng.randrange(-1, tok.vocab_size + 2) for _ in range(rng.randint(0, 6))]
                assert text.update(ids) == tok.decode(ids)


def test_real_text_round_trips(byte_fallback_tokenizer: Tokenizer) -> None:
    tok = byte_fallback_tokenizer
    ids = tok.encode("hello naïve café über 日本 €5 world")
    text = TranscriptText(tok, word_starts(tok))
    for i in range(1, len(ids) + 1):
        assert text.update(ids[:i]) == tok.decode(ids[:i])
    assert text.update(ids) == "hello naïve café über 日本 €5 world"


def test_complete_words_are_not_decoded_again(byte_fallback_tokenizer: Tokenizer) -> None:
    """The point of it: after many words, an update decodes only the open word."""
    tok = byte_fallback_tokenizer
    text = TranscriptText(tok, word_starts(tok))
    ids = tok.encode(" ".join(["speech stream token"] * 200))
    text.update(ids)
    calls: list[int] = []
    real = tok._sp.DecodeIds
    tok._sp.DecodeIds = lambda xs: calls.append(len(xs)) or real(xs)  # type: ignore[method-assign]
    try:
        more = ids + tok.encode(" hello")
        assert text.update(more) == tok.decode(more)
    finally:
        del tok._sp.DecodeIds
    assert max(calls[:-1] or [0]) < 10  # the last call is the assertion's own full decode
