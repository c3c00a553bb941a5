"""The engine loop with the real runner and a tiny model: finals, aborts, limits, EOU events, batching."""
from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from server_helpers import transcribe, wait_until
from test_runner import run_alone

from parakeet_streaming.engine import scheduler
from parakeet_streaming.engine.engine import Engine
from parakeet_streaming.engine.events import Result, ServerFull, StreamFailed, UtteranceEnd


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


wait_for = wait_until


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


def test_scheduler_takes_everyone_when_uncapped_and_is_fair_when_capped() -> None:
    last = {i: -1 for i in range(5)}
    assert scheduler.pick([scheduler.Candidate(i, -1, False) for i in range(5)], 5) == list(range(5))
    counts = dict.fromkeys(last, 0)
    served = 0  # the engine's serve order: one number per stream served, in batch order
    for _ in range(10):
        chosen = scheduler.pick([scheduler.Candidate(i, last[i], False) for i in last], 2)
        assert len(chosen) == 2
        for i in chosen:
            last[i], served = served, served + 1
            counts[i] += 1
        assert max(counts.values()) - min(counts.values()) <= 1  # a strict rotation
    assert set(counts.values()) == {4}


def test_commands_for_unknown_streams_are_ignored(engine, tiny_model, short_speech) -> None:
    for sid in (0, 999, -3):
        engine.send_audio(sid, short_speech[:1600])
        engine.send_audio(sid, short_speech[:1600], final=True)
        engine.finalize(sid)
        engine.abort(sid)
    result = transcribe(engine, short_speech)
    assert result["token_ids"] == run_alone(tiny_model, short_speech)[0]


def test_late_audio_and_second_finalize_are_ignored(engine, tiny_model, short_speech) -> None:
    sid, events = collect(engine)
    engine.send_audio(sid, short_speech, final=True)
    engine.send_audio(sid, short_speech)  # after final: dropped
    engine.finalize(sid)
    got = drain_until_final(events)
    assert engine.num_active == 0  # the slot is free by the time the final arrives
    tokens = [t for e in got if isinstance(e, Result) for t in e.token_ids]
    assert tokens == run_alone(tiny_model, short_speech)[0]
    time.sleep(0.2)
    assert events.empty()


def test_failing_step_fails_its_batch_only(engine, tiny_model, short_speech) -> None:
    real_step = engine.runner.step
    calls = []

    def broken_step(slots):
        calls.append(list(slots))
        raise RuntimeError("device on fire")

    sid, events = collect(engine)
    engine.runner.step = broken_step  # the loop looks the method up on every step
    try:
        engine.send_audio(sid, short_speech, final=True)
        ev = events.get(timeout=10)
    finally:
        engine.runner.step = real_step
    assert isinstance(ev, StreamFailed) and ev.stream_id == sid and "device on fire" in ev.message
    wait_for(lambda: engine.num_active == 0)
    assert len(calls) == 1
    assert engine.stats_snapshot().step_failures == 1
    # The engine keeps serving, and a reused slot starts clean.
    assert transcribe(engine, short_speech)["token_ids"] == run_alone(tiny_model, short_speech)[0]


def test_capped_batches_do_not_change_tokens(tiny_model, speech, short_speech) -> None:
    clips = [speech, short_speech, speech[5000:]]
    eng = Engine(tiny_model, 3, max_batch_size=2)
    eng.start()
    try:
        streams = [collect(eng) for _ in clips]
        for (sid, _), clip in zip(streams, clips):
            eng.send_audio(sid, clip, final=True)  # all ready at once: the cap has to rotate them
        got = [[t for e in drain_until_final(ev) if isinstance(e, Result) for t in e.token_ids]
               for _, ev in streams]
        stats = eng.stats_snapshot()
    finally:
        eng.shutdown()
    assert got == [run_alone(tiny_model, c)[0] for c in clips]
    assert stats.max_batch_size == 2


def test_stats_count_steps_and_audio(engine, speech) -> None:
    before = engine.stats_snapshot()
    transcribe(engine, speech)
    after = engine.stats_snapshot()
    steps = after.steps - before.steps
    assert steps > 0
    audio = after.audio_seconds - before.audio_seconds
    assert audio == pytest.approx(len(speech) / 16000)
    assert after.step_seconds.total > before.step_seconds.total
    assert after.batch_size.total - before.batch_size.total >= steps
    assert after.streams_opened == before.streams_opened + 1
    assert after.active_streams == 0 and after.free_slots == 4


def test_shutdown_fails_live_streams_and_refuses_new_ones(tiny_model, short_speech) -> None:
    eng = Engine(tiny_model, 2)
    eng.start()
    sid, events = collect(eng)
    eng.send_audio(sid, short_speech[:3000])
    eng.shutdown()
    got = []
    while not events.empty():
        got.append(events.get())
    assert isinstance(got[-1], StreamFailed) and got[-1].code == "shutting_down"
    assert not any(isinstance(e, Result) and e.is_final for e in got)
    with pytest.raises(ServerFull):  # EngineStopped: transports turn the client away the same way
        eng.open_stream(lambda e: None).result(1)


def test_decode_lag_counts_from_the_audio_arrival(engine, speech) -> None:
    """All audio sent at once: the last chunk waited for every step before it, so its decode lag is
    at least the sum of the stream's step times; every step that decoded new audio is observed."""
    before = engine.stats_snapshot()
    stream_id, events = collect(engine)
    engine.send_audio(stream_id, speech, final=True)
    drain_until_final(events)
    after = engine.stats_snapshot()
    lag, steps = after.decode_lag, after.steps - before.steps
    observed = sum(lag.counts) - sum(before.decode_lag.counts)
    assert observed == steps > 3
    step_total = after.step_seconds.total - before.step_seconds.total
    highest = max(i for i, n in enumerate(lag.counts) if n > before.decode_lag.counts[i])
    upper = lag.bounds[highest] if highest < len(lag.bounds) else float("inf")
    assert upper >= step_total
    assert lag.total - before.decode_lag.total >= step_total


def test_arrivals_are_matched_to_covered_samples() -> None:
    from parakeet_streaming.engine.stream import Stream
    from parakeet_streaming.model.tokenizer import Tokenizer

    stream = Stream(1, 0, lambda ev: None, Tokenizer.synthetic(40), 16000)
    stream.arrivals.extend([(1280, 1.0), (2560, 2.0), (3840, 3.0)])
    assert stream.arrived(1000) == 1.0
    assert stream.arrived(1281) == 2.0  # needs the second packet
    assert stream.arrived(2560) == 2.0
    assert stream.arrived(3840) == 3.0
    assert stream.arrived(3841) is None  # not received (cannot happen: nothing decodes unreceived audio)
    assert list(stream.arrivals) == [(3840, 3.0)]
