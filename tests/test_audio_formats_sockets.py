"""Audio formats over real sockets: binary WebSocket frames, mulaw at 8 kHz, sample rates declared by
query parameter or on audio messages, resampled by soxr. Each path must give the same tokens as the
equivalent reference stream, and a wrong rate must show."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from server_helpers import (WsClient, chunks, engine_factory, finals, open_stream, pcm16,  # noqa: F401
                            running_server, tokens_of)

from parakeet_streaming.audio import Resampler, decode, resample


@pytest.fixture
async def app(engine_factory):
    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        yield app


def mulaw_encode(x: np.ndarray) -> bytes:
    """G.711 u-law encoder (the textbook segment search), for making telephony test audio."""
    ints = np.clip(np.round(x * 32768), -32768, 32767).astype(np.int32)
    sign = np.where(ints < 0, 0x80, 0)
    mag = np.minimum(np.abs(ints), 32635) + 0x84
    exponent = np.floor(np.log2(mag >> 7 | 1)).astype(np.int32).clip(0, 7)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


async def send_all(client, frames: list, final_msg: dict | None = None) -> list[dict]:
    for frame in frames:
        await client.send(frame)
    await client.send(final_msg or {"type": "close"})
    return await client.collect()


def reference_16k(parts: list[np.ndarray], rate: int) -> list[np.ndarray]:
    """What the server should feed the model: each part through one streaming soxr resampler."""
    r = Resampler(rate, 16000)
    out = [r.push(p) for p in parts]
    out[-1] = np.concatenate([out[-1], r.flush()])
    return out


async def f32_tokens(app, parts: list[np.ndarray]) -> list[dict]:
    client = await WsClient.open(app, "/?encoding=f32")
    assert (await client.recv())["type"] == "hello"
    return await send_all(client, [p.astype("<f4").tobytes() for p in parts])


async def test_mulaw_8k_binary_frames_and_json_messages_agree(app, short_speech):
    low = resample(short_speech, 16000, 8000)
    payloads = [mulaw_encode(p) for p in chunks(low, 1600)]
    client = await WsClient.open(app, "/?encoding=mulaw&sample_rate=8000")
    hello = await client.recv()
    assert hello["sample_rate"] == 8000 and "mulaw" in hello["encodings"]
    binary = await send_all(client, payloads)
    tcp, _ = await open_stream(app, "tcp")
    json_msgs = [{"type": "audio", "encoding": "mulaw", "sample_rate": 8000,
                  "data": base64.b64encode(p).decode()} for p in payloads]
    over_tcp = await send_all(tcp, json_msgs)
    reference = await f32_tokens(app, reference_16k([decode(p, "mulaw") for p in payloads], 8000))
    for msgs in (binary, over_tcp):
        assert not [m for m in msgs if m["type"] == "error"] and msgs[-1]["is_final"]
        assert tokens_of(msgs) == tokens_of(reference)
        assert finals(msgs)[0]["text"] == finals(reference)[0]["text"]
        assert abs(msgs[-1]["audio_ms"] - len(short_speech) * 1000 // 16000) <= 20
    assert tokens_of(reference)  # the comparison is about something


@pytest.mark.parametrize("rate", [8000, 44100])
async def test_declared_rate_is_resampled(app, short_speech, rate):
    audio = resample(short_speech, 16000, rate)
    parts = chunks(audio, rate // 10)
    client = await WsClient.open(app, f"/?sample_rate={rate}")
    assert (await client.recv())["sample_rate"] == rate
    declared = await send_all(client, [pcm16(p) for p in parts])
    quantized = [np.frombuffer(pcm16(p), "<i2").astype(np.float32) / 32768 for p in parts]
    reference = await f32_tokens(app, reference_16k(quantized, rate))
    assert tokens_of(declared) == tokens_of(reference)
    assert abs(declared[-1]["audio_ms"] - len(short_speech) * 1000 // 16000) <= 20
    # the same bytes taken as 16 kHz are a different (and twice/half as long) signal
    client = await WsClient.open(app, "/")
    await client.recv()
    undeclared = await send_all(client, [pcm16(p) for p in parts])
    assert abs(undeclared[-1]["audio_ms"] - len(audio) * 1000 // 16000) <= 20


async def test_rate_change_mid_stream_on_an_audio_message(app, short_speech):
    """First half at 16 kHz, then `sample_rate: 8000` on a message: the audio clock adds up."""
    half = len(short_speech) // 2
    first, second = short_speech[:half], resample(short_speech[half:], 16000, 8000)
    tcp, hello = await open_stream(app, "tcp")
    assert hello["sample_rate"] == 16000
    msgs = [{"type": "audio", "data": base64.b64encode(pcm16(p)).decode()} for p in chunks(first)]
    msgs += [{"type": "audio", "sample_rate": 8000, "data": base64.b64encode(pcm16(p)).decode()}
             for p in chunks(second, 1280)]
    out = await send_all(tcp, msgs)
    assert not [m for m in out if m["type"] == "error"] and out[-1]["is_final"]
    assert abs(out[-1]["audio_ms"] - len(short_speech) * 1000 // 16000) <= 20
