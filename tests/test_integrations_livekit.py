"""LiveKit Agents' Deepgram and OpenAI (realtime) STT plugins pointed at a real server by `base_url`,
driven through their `stream()` API with `rtc.AudioFrame`s from a WAV file (no LiveKit server):
INTERIM / FINAL_TRANSCRIPT and END_OF_SPEECH events, finals equal to the native transcript."""
from __future__ import annotations

import asyncio
import wave

import pytest
from integration_helpers import (RATE, RATE_24K, native_text, same_words, two_utterances,  # noqa: F401
                                 two_utterances_24k, write_wav)
from server_helpers import engine_factory, running_server  # noqa: F401

pytest.importorskip("livekit.agents", reason="the integrations extra is not installed")
pytest.importorskip("livekit.plugins.deepgram", reason="the integrations extra is not installed")

from livekit import rtc  # noqa: E402
from livekit.agents import stt as agents_stt  # noqa: E402
from livekit.agents import utils  # noqa: E402

pytestmark = pytest.mark.slow
TIMEOUT = 60
Kind = agents_stt.SpeechEventType


def wav_frames(path, ms: int = 10) -> list[rtc.AudioFrame]:
    """The WAV file as a LiveKit track would deliver it: 10 ms AudioFrames."""
    with wave.open(str(path)) as w:
        rate, data = w.getframerate(), w.readframes(w.getnframes())
    n = rate * ms // 1000
    return [rtc.AudioFrame(data=data[i:i + 2 * n], sample_rate=rate, num_channels=1,
                           samples_per_channel=len(data[i:i + 2 * n]) // 2) for i in range(0, len(data), 2 * n)]


def finals(events: list) -> str:
    return " ".join(e.alternatives[0].text for e in events if e.type == Kind.FINAL_TRANSCRIPT)


async def collect(stream, frames: list[rtc.AudioFrame], expected: str, end_input: bool) -> list:
    """Push the frames, then read events until the stream ends or its finals hold `expected`."""
    for frame in frames:
        stream.push_frame(frame)
    if end_input:
        stream.end_input()
    events: list = []

    async def read() -> None:
        async for event in stream:
            events.append(event)
            if not end_input and same_words(finals(events), expected):
                return  # the server's VAD closed the last turn (the plugin never commits itself)

    try:
        await asyncio.wait_for(read(), TIMEOUT)
    finally:
        await stream.aclose()
    return events


@pytest.mark.parametrize("endpointing_ms", [25, 300])  # 25: the plugin's default
async def test_deepgram_plugin_stream(engine_factory, two_utterances, tmp_path, endpointing_ms):
    from livekit.plugins import deepgram

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances)
        frames = wav_frames(write_wav(tmp_path / "speech.wav", two_utterances, RATE))
        async with utils.http_context.open():
            stt = deepgram.STT(base_url=f"http://127.0.0.1:{app.ports['ws']}/v1/listen", api_key="unused",
                               sample_rate=RATE, endpointing_ms=endpointing_ms)
            # end_input: the plugin sends Finalize then CloseStream, and the server closes when done
            events = await collect(stt.stream(), frames, expected, end_input=True)
        kinds = [e.type for e in events]
        assert Kind.INTERIM_TRANSCRIPT in kinds and Kind.END_OF_SPEECH in kinds
        assert same_words(finals(events), expected) and expected
        assert sum(k == Kind.FINAL_TRANSCRIPT for k in kinds) >= 2
        words = [w for e in events if e.type == Kind.FINAL_TRANSCRIPT for w in e.alternatives[0].words or []]
        assert words and all(w.start_time <= w.end_time for w in words)


async def test_openai_realtime_plugin_stream(engine_factory, two_utterances_24k, tmp_path):
    pytest.importorskip("livekit.plugins.openai")
    from livekit.plugins import openai

    engine, model = engine_factory(4)
    async with running_server(engine, model) as app:
        expected = await native_text(app, two_utterances_24k, RATE_24K)
        frames = wav_frames(write_wav(tmp_path / "speech24k.wav", two_utterances_24k, RATE_24K))
        async with utils.http_context.open():
            stt = openai.STT(model="gpt-4o-transcribe", use_realtime=True, api_key="unused",
                             base_url=f"http://127.0.0.1:{app.ports['ws']}/v1")
            try:
                # server VAD ends each turn (the plugin's default: silence_duration_ms 350)
                events = await collect(stt.stream(), frames, expected, end_input=False)
            finally:
                await stt.aclose()
        kinds = [e.type for e in events]
        assert {Kind.START_OF_SPEECH, Kind.INTERIM_TRANSCRIPT, Kind.END_OF_SPEECH} <= set(kinds)
        assert sum(k == Kind.FINAL_TRANSCRIPT for k in kinds) >= 2
        assert same_words(finals(events), expected) and expected
