"""Streaming behaviour over real sockets: partials, concurrency, isolation, graceful shutdown."""
from __future__ import annotations

import asyncio

import numpy as np
from server_helpers import (chunks, engine_factory, finals, open_stream, running_server,  # noqa: F401
                            settle, tokens_of, transcribe_over)


def _clips(speech: np.ndarray, short: np.ndarray, n: int) -> list[np.ndarray]:
    """n different clips, so a stream receiving another's audio would show."""
    step = len(speech) // (2 * n)
    clips = [speech[i * step:i * step + len(speech) // 2] for i in range(n - 1)]
    return clips + [short]


async def test_partial_results_arrive_while_audio_is_sent(engine_factory, speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        client, _ = await open_stream(app, "ws")
        parts = chunks(speech)
        first_result_at = None
        reader = asyncio.create_task(client.recv())
        for i, part in enumerate(parts):
            await client.send_audio(part)
            await asyncio.sleep(0.02)
            if reader.done() and first_result_at is None:
                first_result_at = i
        msg = await reader
        assert msg["type"] == "result" and not msg["is_final"]
        await client.send({"type": "close"})
        rest = await client.collect()
        assert first_result_at is not None and first_result_at < len(parts) - 1
        assert len(finals([msg] + rest)) == 1 and rest[-1]["is_final"]


async def test_eight_concurrent_streams_match_single_runs(engine_factory, speech, short_speech):
    engine, model = engine_factory(8)
    async with running_server(engine, model) as app:
        clips = _clips(speech, short_speech, 8)
        singles = [await transcribe_over(app, "tcp", clip) for clip in clips]
        await settle(app)
        transports = ["ws", "tcp"] * 4
        together = await asyncio.gather(*(transcribe_over(app, t, clip) for t, clip in zip(transports, clips)))
        for alone, mixed in zip(singles, together):
            assert tokens_of(mixed) == tokens_of(alone)
            assert finals(mixed)[0]["text"] == finals(alone)[0]["text"]
            assert mixed[-1]["is_final"] and len(finals(mixed)) == 1
        assert len({tuple(tokens_of(s)) for s in singles}) > 1  # the clips really differ


async def test_shutdown_delivers_in_flight_finals(engine_factory, short_speech):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        clients = [await open_stream(app, t) for t in ("ws", "tcp")]
        for client, _ in clients:
            await client.send_audio(short_speech)
        await app.stop(drain_seconds=20)
        for client, _ in clients:
            msgs = await client.collect()
            errors = [m for m in msgs if m["type"] == "error"]
            assert [(e["code"], e["fatal"]) for e in errors] == [("shutting_down", True)]
            assert msgs[-1]["is_final"]
        assert not app.ctx.sessions


async def test_eou_events_are_well_formed(engine_factory, speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        msgs = await transcribe_over(app, "ws", speech)
        for m in msgs:
            if m["type"] == "eou":
                assert {"stream_id", "utterance", "text", "audio_ms"} <= m.keys()
        utterances = [m["utterance"] for m in msgs if m["type"] == "result"]
        assert utterances == sorted(utterances)
