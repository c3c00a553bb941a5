"""Flush and timestamps over real sockets (websockets client and raw TCP) with the tiny model."""
from __future__ import annotations

import numpy as np
import pytest
from test_engine import drain_until_final
from server_helpers import (WsClient, chunks, engine_factory, finals, open_stream, running_server,  # noqa: F401
                            settle, tokens_of, transcribe_over, wait_until)


@pytest.fixture
async def app(engine_factory):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        yield app


async def open_with_timestamps(app, transport: str):
    if transport == "ws":
        client = await WsClient.open(app, "/?timestamps=true")
        assert (await client.recv())["type"] == "hello"
        return client
    client, _ = await open_stream(app, "tcp")
    await client.send({"type": "config", "timestamps": True})
    return client


def split_at_flush(msgs: list[dict]) -> tuple[list[dict], dict, list[dict]]:
    (flushed,) = [m for m in msgs if m.get("flushed")]
    at = msgs.index(flushed)
    return msgs[:at], flushed, msgs[at + 1:]


# --- flush -----------------------------------------------------------------------------------


async def transcribe_ts(app, transport: str, samples: np.ndarray) -> list[dict]:
    client = await open_with_timestamps(app, transport)
    for part in chunks(samples):
        await client.send_audio(part)
    await client.send({"type": "close"})
    return await client.collect()


def starts_of(msgs: list[dict]) -> list[int]:
    return [t for m in msgs if m["type"] == "result" for t in m["token_start_ms"]]


async def test_flush_decodes_everything_then_continues_as_a_new_stream(app, transport, speech, short_speech):
    head, tail = speech[: len(speech) // 2], short_speech
    alone_head = await transcribe_ts(app, transport, head)
    alone_tail = await transcribe_ts(app, transport, tail)
    client = await open_with_timestamps(app, transport)
    for part in chunks(head):
        await client.send_audio(part)
    await client.send({"type": "flush"})
    for part in chunks(tail):  # sent at once: the server holds it until the flush is decoded
        await client.send_audio(part)
    await client.send({"type": "close"})
    msgs = await client.collect()
    before, flushed, after = split_at_flush(msgs)
    assert not flushed["is_final"] and flushed["type"] == "result"
    assert flushed["text"] == finals(alone_head)[0]["text"]
    assert flushed["audio_ms"] == finals(alone_head)[0]["audio_ms"]
    assert tokens_of(before + [flushed]) == tokens_of(alone_head)
    assert tokens_of(after) == tokens_of(alone_tail)  # fresh model state after the flush
    # the stream's clock goes on: the tail's times are the lone tail's, shifted by the head's length
    head_ms = len(head) * 1000 // 16000
    assert starts_of(before + [flushed]) == starts_of(alone_head)
    assert starts_of(after) == [t + head_ms for t in starts_of(alone_tail)]
    assert msgs[-1]["is_final"] and msgs[-1]["audio_ms"] == (len(head) + len(tail)) * 1000 // 16000
    assert not [m for m in msgs if m["type"] == "error"]


async def test_flush_ends_the_utterance(app, transport, speech):
    client, _ = await open_stream(app, transport)
    for part in chunks(speech[:32000]):
        await client.send_audio(part)
    await client.send({"type": "flush"})
    await client.send_audio(speech[32000:48000])
    await client.send({"type": "close"})
    msgs = await client.collect()
    before, flushed, after = split_at_flush(msgs)
    upto = before + [flushed]
    ends = [i for i, m in enumerate(upto) if m["type"] == "eou"]
    open_tokens = tokens_of(upto[ends[-1] + 1:] if ends else upto)
    flush_eous = [m for m in msgs if m["type"] == "eou" and m["reason"] == "flush"]
    if open_tokens:  # the utterance was still open: the flush ends it
        assert after[0] == flush_eous[0] and len(flush_eous) == 1
        assert after[0]["utterance"] == flushed["utterance"] and after[0]["text"]
        assert all(m["utterance"] == flushed["utterance"] + 1 for m in after if m["type"] == "result")
    else:  # the model's <EOU> had just closed it: no empty utterance
        assert not flush_eous


async def test_flush_without_audio_and_twice_in_a_row(app, transport, short_speech):
    alone = await transcribe_over(app, transport, short_speech)
    client, _ = await open_stream(app, transport)
    await client.send({"type": "flush"})
    await client.send({"type": "flush"})
    for part in chunks(short_speech):
        await client.send_audio(part)
    await client.send({"type": "close"})
    msgs = await client.collect()
    flushed = [m for m in msgs if m.get("flushed")]
    assert len(flushed) == 2 and all(m["token_ids"] == [] and m["text"] == "" for m in flushed)
    assert msgs.index(flushed[1]) < msgs.index(msgs[-1])
    assert tokens_of(msgs) == tokens_of(alone) and msgs[-1]["is_final"]
    await settle(app)


# --- timestamps ------------------------------------------------------------------------------


def words_of(msgs: list[dict]) -> list[dict]:
    return [w for m in msgs if m["type"] in ("result", "eou") for w in m.get("words", [])]


async def test_timestamps_align_with_tokens_and_text(app, transport, speech):
    plain = await transcribe_over(app, transport, speech)
    client = await open_with_timestamps(app, transport)
    for part in chunks(speech):
        await client.send_audio(part)
    await client.send({"type": "close"})
    msgs = await client.collect()
    results = [m for m in msgs if m["type"] == "result"]
    assert tokens_of(msgs) == tokens_of(plain)  # timestamps change nothing else
    starts: list[int] = []
    for r in results:
        assert len(r["token_start_ms"]) == len(r["token_ids"])
        assert all(t < r["audio_ms"] and t % 80 == 0 for t in r["token_start_ms"])
        starts += r["token_start_ms"]
    assert starts == sorted(starts) and starts and starts[0] >= 0
    words = words_of(msgs)
    assert len(words) >= 3
    assert " ".join(w["word"] for w in words).split() == msgs[-1]["text"].split()
    assert all(w["start_ms"] < w["end_ms"] and 0 <= w["confidence"] <= 1 for w in words)
    assert all(w["start_ms"] in starts for w in words)
    assert [w["start_ms"] for w in words] == sorted(w["start_ms"] for w in words)
    assert all(a["end_ms"] <= b["start_ms"] + 80 for a, b in zip(words, words[1:]))


async def test_no_timestamps_unless_asked(app, short_speech):
    msgs = await transcribe_over(app, "ws", short_speech)
    assert not any("words" in m or "token_start_ms" in m for m in msgs)


async def test_bad_timestamps_query_is_fatal(app):
    client = await WsClient.open(app, "/?timestamps=maybe")
    msgs = await client.collect()
    assert [(m["code"], m["fatal"]) for m in msgs] == [("bad_config", True)]


# --- engine level ----------------------------------------------------------------------------


def engine_events(engine, commands, timeout: float = 30.0) -> list:
    """Open a stream, run `commands(stream_id)`, and collect events until the final result."""
    import queue

    events: queue.SimpleQueue = queue.SimpleQueue()
    sid = engine.open_stream(events.put).result(5)
    commands(sid)
    return drain_until_final(events, timeout)


def test_engine_flush_then_finalize_and_stats(engine_factory, short_speech):
    from parakeet_streaming.engine.events import Result

    engine, _ = engine_factory(2)

    def commands(sid: int) -> None:
        engine.send_audio(sid, short_speech)
        engine.flush(sid)
        engine.finalize(sid)  # waits behind the flush
        engine.flush(sid)  # after finalizing: ignored

    before = engine.stats_snapshot().audio_seconds
    events = engine_events(engine, commands)
    results = [e for e in events if isinstance(e, Result)]
    assert [r.flushed for r in results].count(True) == 1 and results[-1].is_final and not results[-1].flushed
    assert results[-1].audio_ms == len(short_speech) * 1000 // 16000
    covered = engine.stats_snapshot().audio_seconds - before
    assert abs(covered - len(short_speech) / 16000) < 1e-6  # counted once, not once per segment


def test_engine_abort_during_a_flush_frees_the_slot(engine_factory, speech):
    engine, _ = engine_factory(1)
    sid = engine.open_stream(lambda e: None).result(5)
    engine.send_audio(sid, speech)
    engine.flush(sid)
    engine.send_audio(sid, speech[:4000])
    engine.abort(sid)
    wait_until(lambda: engine.num_free == 1)
    assert engine.open_stream(lambda e: None).result(5)  # the slot is usable again
