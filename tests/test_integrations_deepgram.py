"""Deepgram live (`/v1/listen`) on a real server (tiny random-weight model): over a plain WebSocket,
and with the real deepgram-sdk (7.x, the `integrations` extra) pointed at the server."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from integration_helpers import RATE, native_text, pcm16, same_words, two_utterances  # noqa: F401
from server_helpers import engine_factory, recv_until_closed, running_server, settle  # noqa: F401
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

TIMEOUT = 30


async def listen(app, query: str, frames: list[bytes | str], headers: dict | None = None) -> tuple[list[dict], int]:
    """Send `frames` (bytes: audio, str: a control message) then read until the server closes:
    (messages, close code)."""
    url = f"ws://127.0.0.1:{app.ports['ws']}/v1/listen?{query}"
    async with connect(url, additional_headers=headers or {}, max_size=None) as ws:
        for frame in frames:
            await ws.send(frame)
        msgs = await recv_until_closed(ws, TIMEOUT)
        return msgs, ws.close_code


def chunked(samples: np.ndarray, n: int = 3200) -> list[bytes]:
    data = pcm16(samples)
    return [data[i:i + n] for i in range(0, len(data), n)]  # 100 ms, cut at any byte


def transcript_of(msgs: list[dict]) -> str:
    return " ".join(m["channel"]["alternatives"][0]["transcript"] for m in msgs
                    if m["type"] == "Results" and m["is_final"] and m["channel"]["alternatives"][0]["transcript"])


async def test_finals_equal_the_native_transcript(engine_factory, two_utterances):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances)
        assert expected
        msgs, code = await listen(app, "encoding=linear16&sample_rate=16000&interim_results=true&punctuate=true"
                                  "&endpointing=300&utterance_end_ms=1000&vad_events=true",
                                  [*chunked(two_utterances), '{"type":"CloseStream"}'])
        assert code == 1000 and msgs[-1]["type"] == "Metadata"
        assert abs(msgs[-1]["duration"] - len(two_utterances) / RATE) < 0.01
        assert same_words(transcript_of(msgs), expected)
        results = [m for m in msgs if m["type"] == "Results"]
        assert any(not m["is_final"] for m in results) and any(m["speech_final"] for m in results)
        kinds = {m["type"] for m in msgs}
        assert {"SpeechStarted", "UtteranceEnd"} <= kinds
        finals = [m for m in results if m["is_final"]]
        for a, b in zip(finals, finals[1:]):  # final segments tile the audio
            assert b["start"] == pytest.approx(a["start"] + a["duration"], abs=0.002)
        words = [w for m in finals for w in m["channel"]["alternatives"][0]["words"]]
        assert words and all(w["start"] <= w["end"] for w in words)
        assert [w["start"] for w in words] == sorted(w["start"] for w in words)
        await settle(app)


async def test_finalize_answers_from_finalize_and_the_stream_goes_on(engine_factory, two_utterances):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        half = len(two_utterances) // 2
        frames = [*chunked(two_utterances[:half]), '{"type":"KeepAlive"}', '{"type":"Finalize"}',
                  *chunked(two_utterances[half:]), '{"type":"Finalize"}', '{"type":"CloseStream"}']
        msgs, code = await listen(app, "encoding=linear16&sample_rate=16000&punctuate=true", frames)
        answers = [m for m in msgs if m.get("from_finalize")]
        assert code == 1000 and len(answers) == 2 and all(m["is_final"] for m in answers)
        assert not any(m["type"] == "Error" for m in msgs)
        assert msgs[-1]["type"] == "Metadata"


async def test_mulaw_8k(engine_factory, two_utterances):
    from parakeet_streaming import audio

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        at8k = audio.resample(two_utterances, RATE, 8000)
        ints = np.clip(np.round(at8k * 32768), -32768, 32767).astype(np.int32)
        # G.711 mu-law encode (the server's decoder is checked against the table in test_audio)
        sign = (ints < 0)
        mag = np.minimum(np.abs(ints), 32635) + 0x84
        exp = np.floor(np.log2(mag)).astype(np.int32) - 7
        mant = (mag >> (exp + 3)) & 0x0F
        ulaw = (~((sign << 7) | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()
        msgs, code = await listen(app, "encoding=mulaw&sample_rate=8000&punctuate=true",
                                  [ulaw[i:i + 800] for i in range(0, len(ulaw), 800)] + ['{"type":"CloseStream"}'])
        assert code == 1000 and transcript_of(msgs)  # decoded as speech: the tiny model emits text
        assert abs(msgs[-1]["duration"] - len(at8k) / 8000) < 0.01


async def refused(app, query: str, headers: dict | None = None):
    """The HTTP response that refused the upgrade."""
    url = f"ws://127.0.0.1:{app.ports['ws']}/v1/listen?{query}"
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, additional_headers=headers or {}):
            pass
    return info.value.response


@pytest.mark.parametrize("query, words", [
    ("encoding=opus&sample_rate=48000", "Unsupported encoding"),
    ("encoding=linear16", "sample_rate is required"),
    ("encoding=linear16&sample_rate=16000&channels=2", "channels=2"),
    ("interim_results=maybe", "interim_results"),
])
async def test_bad_parameters_are_refused_with_http_400(engine_factory, query, words):
    """As Deepgram: HTTP 400 before the upgrade, the reason in `dg-error` and a JSON body."""
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        response = await refused(app, query)
        assert response.status_code == 400 and words in response.headers["dg-error"]
        body = json.loads(response.body)
        assert body["err_code"] == "Bad Request" and words in body["err_msg"] and body["request_id"]
        assert engine.num_active == 0 and not app.ctx.sessions
        msgs, code = await listen(app, "encoding=linear16&sample_rate=16000",  # the server is fine
                                  [pcm16(np.zeros(1600, np.float32)), '{"type":"CloseStream"}'])
        assert code == 1000 and msgs[-1]["type"] == "Metadata"


async def test_bad_messages_are_errors_and_nothing_is_lost(engine_factory, two_utterances):
    """A malformed text message gets Deepgram's Error; the stream, and a neighbour, lose nothing."""
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        clean = listen(app, "encoding=linear16&sample_rate=16000&punctuate=true",
                       [*chunked(two_utterances), '{"type":"CloseStream"}'])
        frames = chunked(two_utterances)
        noisy = listen(app, "encoding=linear16&sample_rate=16000&punctuate=true",
                       [frames[0], "not json", '{"type":"Speak"}', *frames[1:], '{"type":"CloseStream"}'])
        (good, _), (bad, code) = await asyncio.gather(clean, noisy)
        errors = [m for m in bad if m["type"] == "Error"]
        assert [e["variant"] for e in errors] == ["SchemaError", "SchemaError"] and code == 1000
        assert transcript_of(bad) == transcript_of(good) and transcript_of(good)


async def test_token_auth(engine_factory, two_utterances):
    engine, model = engine_factory(2)
    async with running_server(engine, model, api_keys=["sekrit"]) as app:
        msgs, code = await listen(app, "encoding=linear16&sample_rate=16000", [*chunked(two_utterances[:8000]),
                                  '{"type":"CloseStream"}'], headers={"Authorization": "Token sekrit"})
        assert code == 1000 and msgs[-1]["type"] == "Metadata"
        for headers in ({"Authorization": "Token wrong"}, {}):
            response = await refused(app, "encoding=linear16&sample_rate=16000", headers)
            assert response.status_code == 401 and json.loads(response.body)["err_code"] == "INVALID_AUTH"


# --- deepgram-sdk ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_deepgram_sdk_live(engine_factory, two_utterances):
    deepgram = pytest.importorskip("deepgram", reason="the integrations extra is not installed")
    from deepgram.core.events import EventType
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances)
        port = app.ports["ws"]
        env = deepgram.DeepgramClientEnvironment(base=f"http://127.0.0.1:{port}", production=f"ws://127.0.0.1:{port}",
                                                 agent=f"ws://127.0.0.1:{port}", agent_rest=f"http://127.0.0.1:{port}")
        client = deepgram.AsyncDeepgramClient(api_key="unused", environment=env)
        got: list = []
        async with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000,
                                            interim_results=True, punctuate=True, endpointing=300) as conn:
            conn.on(EventType.MESSAGE, got.append)
            listener = asyncio.create_task(conn.start_listening())
            data = chunked(two_utterances)
            for i, frame in enumerate(data):
                await conn.send_media(frame)
                if i == 3:
                    await conn.send_keep_alive()
            await conn.send_finalize()
            await conn.send_close_stream()
            await asyncio.wait_for(listener, TIMEOUT)
        results = [m for m in got if isinstance(m, ListenV1Results)]
        finals = [r.channel.alternatives[0].transcript for r in results if r.is_final]
        assert any(not r.is_final for r in results)  # interim results
        assert any(r.from_finalize for r in results)  # the Finalize answer
        assert same_words(" ".join(f for f in finals if f), expected)
        assert isinstance(got[-1], ListenV1Metadata) and got[-1].duration == pytest.approx(len(two_utterances) / RATE,
                                                                                           abs=0.01)


@pytest.mark.slow
async def test_deepgram_sdk_sees_http_errors(engine_factory):
    deepgram = pytest.importorskip("deepgram", reason="the integrations extra is not installed")
    from deepgram.core.api_error import ApiError

    engine, model = engine_factory(2)
    async with running_server(engine, model, api_keys=["sekrit"]) as app:
        port = app.ports["ws"]
        env = deepgram.DeepgramClientEnvironment(base=f"http://127.0.0.1:{port}", production=f"ws://127.0.0.1:{port}",
                                                 agent=f"ws://127.0.0.1:{port}", agent_rest=f"http://127.0.0.1:{port}")
        for key, kwargs, status in (("sekrit", {"encoding": "opus", "sample_rate": 48000}, 400),
                                    ("wrong", {"encoding": "linear16", "sample_rate": 16000}, 401)):
            client = deepgram.AsyncDeepgramClient(api_key=key, environment=env)
            with pytest.raises(ApiError) as info:
                async with client.listen.v1.connect(model="nova-3", **kwargs):
                    pass
            assert info.value.status_code == status
