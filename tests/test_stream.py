"""Host-side stream state without a model: how step outputs become Results and UtteranceEnds."""
from __future__ import annotations

import pytest

from parakeet_streaming.engine.events import Result, UtteranceEnd
from parakeet_streaming.engine.runner import StepOutput
from parakeet_streaming.engine.stream import Stream
from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE, Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.synthetic(40, (EOU_PIECE, EOB_PIECE))


def word(tok: Tokenizer, piece: str) -> int:
    return next(i for i in range(tok.vocab_size) if tok.id_to_piece(i) == piece)


def make_stream(tok: Tokenizer) -> Stream:
    return Stream(id=7, slot=0, sink=lambda e: None, tokenizer=tok, sample_rate=16000)


def out(tokens: list[int], done: bool = False, covered: int = 16000) -> StepOutput:
    n = len(tokens)
    return StepOutput(slot=0, token_ids=tokens, confidences=[0.5 + i / 100 for i in range(n)],
                      token_frames=list(range(10, 10 + n)), frames_decoded=12, samples_covered=covered,
                      done=done)


def test_plain_tokens_make_one_result(tok) -> None:
    s = make_stream(tok)
    a, b = word(tok, "▁a"), word(tok, "b")
    (ev,) = s.events(out([a, b], covered=16000))
    assert ev == Result(7, "ab", [a, b], [0.5, 0.51], [10, 11], 1000, 0, token_start_ms=[800, 880])
    assert s.events(out([])) == []  # nothing new, nothing sent


def test_eou_splits_the_step_and_starts_the_next_utterance(tok) -> None:
    s = make_stream(tok)
    a, b, c = word(tok, "▁a"), word(tok, "b"), word(tok, "▁c")
    r0, end, r1 = s.events(out([a, b, tok.eou_id, c]))
    assert r0.token_ids == [a, b, tok.eou_id] and r0.confidences == [0.5, 0.51, 0.52]
    assert r0.token_frames == [10, 11, 12] and r0.utterance == 0 and r0.text == "ab"
    assert end == UtteranceEnd(7, 0, "ab", 1000, backchannel=False)  # "ab" is in r0's words
    assert [w.word for w in r0.words] == ["ab"] and r0.words[0].start_ms == 800 and r0.words[0].end_ms == 960
    assert r1.token_ids == [c] and r1.confidences == [0.53] and r1.token_frames == [13]
    assert r1.utterance == 1 and r1.text == "ab c"
    (r2, end2) = s.events(out([c, tok.eob_id]))
    assert r2.utterance == 1 and end2 == UtteranceEnd(7, 1, "c c", 1000, backchannel=True)
    assert [w.word for w in r1.words + r2.words] == ["c", "c"]
    assert "<EOU>" not in r2.text and "<EOB>" not in r2.text


def test_empty_utterances_and_back_to_back_ends(tok) -> None:
    s = make_stream(tok)
    events = s.events(out([tok.eou_id, tok.eou_id]))
    assert [type(e) for e in events] == [Result, UtteranceEnd, Result, UtteranceEnd]
    assert [e.utterance for e in events] == [0, 0, 1, 1]
    assert events[1].text == "" and events[3].text == ""


def test_final_is_last_even_after_an_eou(tok) -> None:
    s = make_stream(tok)
    a = word(tok, "▁a")
    events = s.events(out([a, tok.eou_id], done=True, covered=1234))
    assert [type(e) for e in events] == [Result, UtteranceEnd, Result]
    final = events[-1]
    assert final.is_final and final.token_ids == [] and final.text == "a" and final.utterance == 1
    assert final.audio_ms == 1234 * 1000 // 16000
    assert sum(isinstance(e, Result) and e.is_final for e in events) == 1


def test_final_without_tokens(tok) -> None:
    (final,) = make_stream(tok).events(out([], done=True, covered=0))
    assert final == Result(7, "", [], [], [], 0, 0, is_final=True)  # no token_start_ms, no words


def test_final_carries_the_last_tokens(tok) -> None:
    a, b = word(tok, "▁a"), word(tok, "b")
    (final,) = make_stream(tok).events(out([a, b], done=True))
    assert final.is_final and final.token_ids == [a, b] and final.text == "ab"


def test_model_without_eou_never_splits() -> None:
    tok = Tokenizer.synthetic(40)
    assert tok.eou_id is None and tok.eob_id is None
    s = make_stream(tok)
    events = s.events(out(list(range(1, 30)), done=True))
    assert len(events) == 1 and events[0].utterance == 0


def test_a_token_on_the_padded_last_frame_starts_inside_the_audio(tok) -> None:
    a = word(tok, "▁a")
    step = StepOutput(slot=0, token_ids=[a], confidences=[0.9], token_frames=[13], frames_decoded=14,
                      samples_covered=16000, done=True)  # 1000 ms of audio, 14 frames (the last padded)
    (final,) = make_stream(tok).events(step)
    assert final.token_start_ms == [960] and final.words[0].end_ms == 1000


def test_silence_endpoint_splits_a_step_between_tokens(tok) -> None:
    from parakeet_streaming.endpointing import EndpointConfig, Endpointer

    s = Stream(id=7, slot=0, sink=lambda e: None, tokenizer=tok, sample_rate=16000,
               endpointer=Endpointer(EndpointConfig(500, "vad")))
    s.endpointer.on_vad(0, 32, [0.9] * 25 + [0.1] * 20)  # speech until 800 ms: endpoint at 1300
    a, b, c = word(tok, "▁a"), word(tok, "b"), word(tok, "▁c")
    step = StepOutput(slot=0, token_ids=[a, b, c], confidences=[0.9, 0.8, 0.7], token_frames=[8, 9, 17],
                      frames_decoded=20, samples_covered=26000)
    r0, end, r1 = s.events(step)
    assert r0.token_ids == [a, b] and r0.utterance == 0 and r0.words == []
    assert (end.reason, end.audio_ms, end.text, end.utterance) == ("silence", 1300, "ab", 0)
    assert [(w.word, w.start_ms, w.end_ms, w.confidence) for w in end.words] == [("ab", 640, 800, 0.8)]
    assert r1.token_ids == [c] and r1.utterance == 1 and r1.token_start_ms == [1360]
    assert s.events(StepOutput(slot=0, frames_decoded=40, samples_covered=52000)) == []  # once per pause
