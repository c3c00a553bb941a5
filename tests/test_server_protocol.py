"""The wire protocol over real sockets (websockets client and raw asyncio TCP), both transports.

Every bad input gets its error code; non-fatal errors lose no audio (the tokens equal a clean run);
fatal ones still deliver the final result; limits and disconnects leave nothing behind.
"""
from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from server_helpers import (WsClient, chunks, engine_factory, finals, hold_slots, open_client,  # noqa: F401
                            open_stream, pcm16_b64, running_server, settle, status, tokens_of, transcribe_over)


def _f32(values) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


# message -> expected error code; all non-fatal
BAD_INPUTS = [
    ("{not json", "bad_json"),
    ("[1, 2]", "bad_json"),
    ('"audio"', "bad_json"),
    ('{"type":"dance"}', "unknown_type"),
    ('{"data":"AAAA"}', "unknown_type"),
    ('{"type":"audio","data":12}', "bad_audio"),
    ('{"type":"audio","data":"@@@@"}', "bad_audio"),
    ('{"type":"audio","data":"AAE","encoding":"pcm16"}', "bad_audio"),  # bad base64 padding
    ('{"type":"audio","data":"AAEC","encoding":"pcm16"}', "bad_audio"),  # 3 bytes: odd pcm16
    ('{"type":"audio","data":"AAECAwQ=","encoding":"f32"}', "bad_audio"),  # 5 bytes
    (json.dumps({"type": "audio", "data": _f32([0.1, np.nan]), "encoding": "f32"}), "bad_audio"),
    (json.dumps({"type": "audio", "data": _f32([np.inf]), "encoding": "f32"}), "bad_audio"),
    ('{"type":"audio","samples":[0.1, NaN]}', "bad_audio"),
    ('{"type":"audio","samples":[0.1,"x"]}', "bad_audio"),
    ('{"type":"audio","samples":"0.1"}', "bad_audio"),
    ('{"type":"audio","data":"","encoding":"opus"}', "unsupported_encoding"),
    ('{"type":"audio","data":"","final":"yes"}', "bad_audio"),
]


@pytest.fixture
async def app(engine_factory):
    engine, model = engine_factory(4)
    async with running_server(engine, model, idle_timeout=20) as app:
        yield app


async def test_hello_first_results_final_last_then_close(app, transport, speech):
    client, hello = await open_stream(app, transport)
    assert hello["sample_rate"] == 16000 and isinstance(hello["stream_id"], int)
    assert {"model", "encodings", "chunk_ms", "protocol"} <= hello.keys()
    for part in chunks(speech):
        await client.send_audio(part)
    await client.send_audio(np.zeros(0, np.float32), final=True)
    msgs = await client.collect()
    results = [m for m in msgs if m["type"] == "result"]
    assert len(finals(msgs)) == 1 and msgs[-1]["is_final"]
    for r in results:
        assert r["stream_id"] == hello["stream_id"]
        assert len(r["token_ids"]) == len(r["confidence_scores"])
        assert all(0.0 <= c <= 1.0 for c in r["confidence_scores"])
        assert {"audio_ms", "utterance", "text"} <= r.keys()


async def test_bad_inputs_are_non_fatal_and_lose_nothing(app, transport, short_speech):
    clean = await transcribe_over(app, transport, short_speech)
    extra = [text for text, _ in BAD_INPUTS] + [{"type": "ping"}]
    dirty = await transcribe_over(app, transport, short_speech, extra=extra)
    errors = [m for m in dirty if m["type"] == "error"]
    assert [e["code"] for e in errors] == [code for _, code in BAD_INPUTS]
    assert not any(e["fatal"] for e in errors) and all(e["message"] for e in errors)
    assert {"type": "pong"} in dirty
    assert tokens_of(dirty) == tokens_of(clean)
    assert finals(dirty)[0]["text"] == finals(clean)[0]["text"]
    assert dirty[-1]["is_final"]


async def test_ping_pong(app, transport):
    client, _ = await open_stream(app, transport)
    await client.send({"type": "ping"})
    assert await client.recv() == {"type": "pong"}
    await client.send({"type": "close"})
    msgs = await client.collect()
    assert len(finals(msgs)) == 1


async def test_audio_after_final(app, transport, short_speech):
    client, _ = await open_stream(app, transport)
    await client.send_audio(short_speech, final=True)
    await client.send_audio(short_speech)
    msgs = await client.collect()
    assert msgs[-1]["is_final"]
    errors = [m for m in msgs if m["type"] == "error"]
    # The final may win the race against the late audio; if not, the error names it.
    assert all(e["code"] == "audio_after_final" and not e["fatal"] for e in errors)


async def test_message_over_size_cap_is_fatal_but_keeps_transcript(engine_factory, transport, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model, max_message_bytes=64 * 1024) as app:
        head = short_speech[:8000]
        clean = await transcribe_over(app, transport, head, chunk=8000)
        client, _ = await open_stream(app, transport)
        await client.send_audio(head)
        await client.send_audio(np.zeros(48000, np.float32))  # ~128 KiB of base64
        msgs = await client.collect()
        errors = [m for m in msgs if m["type"] == "error"]
        assert [(e["code"], e["fatal"]) for e in errors] == [("message_too_large", True)]
        assert msgs[-1]["is_final"] and tokens_of(msgs) == tokens_of(clean)
        await settle(app)


async def test_tcp_endless_line_without_newline(engine_factory):
    engine, model = engine_factory(2)
    async with running_server(engine, model, max_message_bytes=4096) as app:
        client, _ = await open_stream(app, "tcp")
        await client.send(b'{"type":"audio","data":"' + b"A" * 20000)  # no newline, ever
        msgs = await client.collect()
        assert [m.get("code") for m in msgs if m["type"] == "error"] == ["message_too_large"]
        assert msgs[-1]["is_final"]
        await settle(app)


async def test_stream_too_long_is_finalized_with_transcript(engine_factory, transport, speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model, max_stream_seconds=1.0) as app:
        clean = await transcribe_over(app, transport, speech[:16000], chunk=4000)
        msgs = await transcribe_over(app, transport, speech, chunk=4000)
        errors = [m for m in msgs if m["type"] == "error"]
        assert [(e["code"], e["fatal"]) for e in errors] == [("stream_too_long", True)]
        assert msgs[-1]["is_final"] and len(finals(msgs)) == 1
        assert tokens_of(msgs) == tokens_of(clean)
        assert finals(msgs)[0]["text"] == finals(clean)[0]["text"]


async def test_server_full_leaves_others_alone(engine_factory, transport, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        clean = await transcribe_over(app, transport, short_speech)
        await settle(app)
        holders = [await open_stream(app, transport) for _ in range(2)]
        first, *rest = chunks(short_speech)
        await hold_slots(app, [client for client, _ in holders], first)  # slots are taken by audio
        extra = await open_client(app, transport)
        msgs = await extra.collect()
        assert [(m["type"], m["code"], m["fatal"]) for m in msgs] == [("error", "server_full", True)]
        for client, _ in holders:
            for part in rest:
                await client.send_audio(part)
            await client.send({"type": "close"})
        for client, _ in holders:
            msgs = await client.collect()
            assert tokens_of(msgs) == tokens_of(clean)
        await settle(app)


async def test_idle_client_times_out(engine_factory, transport, short_speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model, idle_timeout=0.5) as app:
        client, _ = await open_stream(app, transport)
        await client.send_audio(short_speech[:4000])
        msgs = await client.collect(timeout=10)
        errors = [m for m in msgs if m["type"] == "error"]
        assert [(e["code"], e["fatal"]) for e in errors] == [("idle_timeout", True)]
        assert msgs[-1]["is_final"]
        await settle(app)


@pytest.mark.parametrize("when", ["before_hello", "after_hello", "mid_audio", "after_final"])
async def test_abrupt_disconnect(app, transport, when, short_speech):
    client = await open_client(app, transport)
    if when != "before_hello":
        await client.recv()
    if when in ("mid_audio", "after_final"):
        for part in chunks(short_speech)[:3]:
            await client.send_audio(part)
        if transport == "tcp":
            await client.send(b'{"type":"audio","data":"AAAA')  # half a line
    if when == "after_final":
        await client.send({"type": "close"})
    await client.abort()
    await settle(app)


async def test_clean_close_without_final_frees_slot(app, transport, short_speech):
    client, _ = await open_stream(app, transport)
    await client.send_audio(short_speech[:4000])
    await client.close()
    await settle(app)


async def test_status_port_counts_streams(app):
    assert (await status(app))["connected_streams"] == 0
    a, _ = await open_stream(app, "ws")
    b, _ = await open_stream(app, "tcp")
    s = await status(app)
    assert s["type"] == "status" and s["connected_streams"] == 2
    await a.abort()
    await b.send({"type": "close"})
    await b.collect()
    await settle(app)
    assert (await status(app))["connected_streams"] == 0


async def test_ws_binary_frames_and_query_params(app, short_speech):
    from parakeet_streaming.audio import resample

    clean = await transcribe_over(app, "ws", short_speech)
    low = resample(short_speech, 16000, 8000)
    client = await WsClient.open(app, "/any/path?encoding=f32&sample_rate=8000")
    hello = await client.recv()
    assert hello["sample_rate"] == 8000
    for part in chunks(low, 1280):
        await client.send(part.astype("<f4").tobytes())
    await client.send({"type": "close"})
    msgs = await client.collect()
    assert msgs[-1]["is_final"] and not [m for m in msgs if m["type"] == "error"]
    assert abs(msgs[-1]["audio_ms"] - finals(clean)[0]["audio_ms"]) <= 100


async def test_ws_bad_query_param_is_fatal(app):
    client = await WsClient.open(app, "/?encoding=opus")
    msgs = await client.collect()
    assert [(m["code"], m["fatal"]) for m in msgs] == [("unsupported_encoding", True)]


async def test_tcp_unterminated_last_line_counts(app, short_speech):
    client, _ = await open_stream(app, "tcp")
    await client.send_audio(short_speech[:4000])
    client.writer.write(json.dumps({"type": "close"}).encode())  # no newline, then half-close
    client.writer.write_eof()
    msgs = await client.collect()
    assert msgs[-1]["is_final"]


async def test_samples_debug_form_matches_pcm16(app, short_speech):
    quantized = np.round(short_speech * 32768) / 32768
    clean = await transcribe_over(app, "tcp", quantized)
    client, _ = await open_stream(app, "tcp")
    for part in chunks(quantized):
        await client.send({"type": "audio", "samples": part.tolist()})
    await client.send({"type": "audio", "samples": [], "final": True})
    msgs = await client.collect()
    assert tokens_of(msgs) == tokens_of(clean)


async def test_hundred_abrupt_disconnects_leave_nothing(app, short_speech):
    import resource

    async def one(i: int) -> None:
        while True:  # an aborted stream's slot frees asynchronously; the next one may find it taken
            client = await open_client(app, "ws" if i % 2 else "tcp")
            if (await client.recv())["type"] == "hello":
                break
            await asyncio.sleep(0.01)
        await client.send({"type": "audio", "data": pcm16_b64(short_speech[:4000])})
        await client.abort()

    for i in range(10):  # warm up allocators before measuring
        await one(i)
    await settle(app)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i in range(100):
        await one(i)
    await settle(app)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 50_000
    assert (await status(app))["connected_streams"] == 0
