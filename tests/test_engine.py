"""The engine loop with the real runner and a tiny model: finals, aborts, limits, EOU events, batching."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from parakeet_streaming.engine import scheduler
from parakeet_streaming.engine.engine import Engine, transcribe
from parakeet_streaming.engine.events import Result, ServerFull, UtteranceEnd
from test_runner import run_alone


@pytest.fixture
def engine(tiny_model):
    eng = Engine(tiny_model, 4)
    eng.start()
    assert eng.ready.wait(30)
    yield eng
    eng.shutdown()


def collect(engine: Engine) -> tuple[int, queue.SimpleQueue]:
    events: queue.SimpleQueue = queue.SimpleQueue()
    sid = engine.open_stream(events.put).result(5)
    return sid, events


def drain_until_final(events: queue.SimpleQueue, timeout: float = 30) -> list:
    out = []
    while True:
        ev = events.get(timeout=timeout)
        out.append(ev)
        if isinstance(ev, Result) and ev.is_final:
            return out


def wait_for(pred, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_transcribe_equals_runner(engine, tiny_model, speech) -> None:
    result = transcribe(engine, speech)
    tokens, _, frames = run_alone(tiny_model, speech)
    assert result["token_ids"] == tokens
    assert result["token_frames"] == frames
    assert len(result["confidence_scores"]) == len(tokens)
    assert result["text"] == tiny_model.tokenizer.decode(tokens)
    assert "<EOU>" not in result["text"]


def test_exactly_one_final_and_it_is_last(engine, speech) -> None:
    sid, events = collect(engine)
    for i in range(0, len(speech), 3000):
        engine.send_audio(sid, speech[i:i + 3000])
    engine.send_audio(sid, np.zeros(0, np.float32), final=True)
    got = drain_until_final(events)
    finals = [e for e in got if isinstance(e, Result) and e.is_final]
    assert len(finals) == 1 and got[-1] is finals[0]
    assert all(isinstance(e, (Result, UtteranceEnd)) for e in got)
    time.sleep(0.2)
    assert events.empty()
    wait_for(lambda: engine.num_active == 0)


def test_final_without_audio(engine) -> None:
    sid, events = collect(engine)
    engine.finalize(sid)
    got = drain_until_final(events)
    assert got[-1].text == "" and got[-1].token_ids == []


def test_server_full_and_slot_reuse(engine) -> None:
    ids = [collect(engine)[0] for _ in range(4)]
    assert len(set(ids)) == 4
    with pytest.raises(ServerFull):
        engine.open_stream(lambda e: None).result(5)
    engine.abort(ids[0])
    wait_for(lambda: engine.num_free == 1)
    sid, _ = collect(engine)
    assert sid not in ids
    for i in ids[1:] + [sid]:
        engine.abort(i)
    wait_for(lambda: engine.num_active == 0)


def test_abort_mid_stream_emits_nothing_more(engine, speech) -> None:
    sid, events = collect(engine)
    engine.send_audio(sid, speech[:16000])
    engine.abort(sid)
    engine.send_audio(sid, speech[16000:32000], final=True)  # late commands are ignored
    wait_for(lambda: engine.num_active == 0)
    time.sleep(0.2)
    leftovers = []
    while not events.empty():
        leftovers.append(events.get())
    assert not any(isinstance(e, Result) and e.is_final for e in leftovers)


def test_concurrent_streams_match_alone(engine, tiny_model, speech, short_speech) -> None:
    clips = [speech, short_speech, speech[8000:], short_speech[::-1].copy()]
    expected = [run_alone(tiny_model, c)[0] for c in clips]
    results: list = [None] * len(clips)

    def client(i: int) -> None:
        time.sleep(0.05 * i)
        sid, events = collect(engine)
        step = [1600, 800, 2560, 4000][i]
        for j in range(0, len(clips[i]), step):
            engine.send_audio(sid, clips[i][j:j + step])
            time.sleep(0.002)
        engine.finalize(sid)
        toks = []
        for ev in drain_until_final(events):
            if isinstance(ev, Result):
                toks += ev.token_ids
        results[i] = toks

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == expected


def test_eou_ends_utterances(engine, tiny_model, speech) -> None:
    eou, eob = tiny_model.tokenizer.eou_id, tiny_model.tokenizer.eob_id
    sid, events = collect(engine)
    engine.send_audio(sid, speech, final=True)
    got = drain_until_final(events)
    tokens = [t for e in got if isinstance(e, Result) for t in e.token_ids]
    ends = [e for e in got if isinstance(e, UtteranceEnd)]
    assert tokens.count(eou) >= 1, "the tiny model is calibrated to emit <EOU>"
    assert len(ends) == tokens.count(eou) + tokens.count(eob)
    # Each UtteranceEnd follows the Result holding its <EOU>, and utterance indices count up.
    assert [e.utterance for e in ends] == list(range(len(ends)))
    for i, ev in enumerate(got):
        if isinstance(ev, UtteranceEnd):
            assert isinstance(got[i - 1], Result) and got[i - 1].token_ids[-1] in (eou, eob)
            assert ev.backchannel == (got[i - 1].token_ids[-1] == eob)
            assert got[i - 1].utterance == ev.utterance
    # Utterance texts are the text between EOUs; the full text never shows the token.
    pieces, cur = [], []
    for t in tokens:
        if t in (eou, eob):
            pieces.append(tiny_model.tokenizer.decode(cur).strip())
            cur = []
        else:
            cur.append(t)
    assert [e.text for e in ends] == pieces
    assert "<EOU>" not in got[-1].text


def test_failing_sink_does_not_stall_others(engine, speech) -> None:
    def bad_sink(event) -> None:
        raise RuntimeError("client bug")

    bad = engine.open_stream(bad_sink).result(5)
    sid, events = collect(engine)
    engine.send_audio(bad, speech, final=True)
    engine.send_audio(sid, speech, final=True)
    assert drain_until_final(events)[-1].is_final
    wait_for(lambda: engine.num_active == 0)


def test_scheduler_prefers_longest_waiting() -> None:
    c = [scheduler.Candidate(1, 5, False), scheduler.Candidate(2, 3, False), scheduler.Candidate(3, 3, True),
         scheduler.Candidate(4, -1, False)]
    assert scheduler.pick(c, 10) == [1, 2, 3, 4]
    assert scheduler.pick(c, 2) == [4, 3]
    assert scheduler.pick(c, 3) == [4, 3, 2]


def test_cancelled_open_is_harmless(engine) -> None:
    """A client that gives up while its stream is being opened takes no slot and breaks nothing."""
    futures = []
    for _ in range(20):
        f = engine.open_stream(lambda e: None)
        f.cancel()
        futures.append(f)
    sid, events = collect(engine)
    engine.finalize(sid)
    assert drain_until_final(events)[-1].is_final
    wait_for(lambda: engine.num_active == sum(1 for f in futures if not f.cancelled()))


def test_audio_ms_tracks_what_was_decoded(engine, speech) -> None:
    sid, events = collect(engine)
    sent = 0
    seen: list[tuple[int, int]] = []  # (audio_ms of a result, ms sent when it could have been made)
    for i in range(0, len(speech), 2560):
        engine.send_audio(sid, speech[i:i + 2560])
        sent += len(speech[i:i + 2560])
    engine.finalize(sid)
    got = [e for e in drain_until_final(events) if isinstance(e, Result)]
    ms = [e.audio_ms for e in got]
    assert ms == sorted(ms)
    assert ms[-1] == len(speech) * 1000 // 16000
    # A partial never claims more audio than a chunk's frames depend on.
    assert all(m <= len(speech) * 1000 // 16000 for m in ms)
