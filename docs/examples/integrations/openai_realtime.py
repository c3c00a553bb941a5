#!/usr/bin/env python3
"""Transcribe a WAV file with the `openai` package's Realtime client in a transcription session,
pointed at parakeet-server by `websocket_base_url`.

    pip install openai soxr numpy
    python openai_realtime.py speech.wav --url ws://localhost:8000/v1

The file must be 16-bit PCM mono; it is resampled to the 24 kHz `audio/pcm` the Realtime API
takes if needed. The server's VAD ends each turn (`turn_detection: server_vad`); a commit at the
end closes the last one. Prints `delta: <text>` as text arrives, `turn: <transcript>` per turn, and
`final: <every turn joined>` last.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import wave

import numpy as np
import soxr
from openai import AsyncOpenAI

RATE = 24000


def read_24k(path: str) -> bytes:
    with wave.open(path, "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    if rate == RATE:
        return pcm
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    out = soxr.resample(samples, rate, RATE)
    return np.clip(np.round(out * 32768), -32768, 32767).astype("<i2").tobytes()


async def main(args: argparse.Namespace) -> None:
    pcm = read_24k(args.wav)
    client = AsyncOpenAI(api_key=args.api_key, websocket_base_url=args.url)
    turns: list[str] = []
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await conn.session.update(session={"type": "transcription", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": RATE}, "transcription": {"model": "parakeet"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        step = RATE // 10 * 2  # 100 ms of audio per event
        for i in range(0, len(pcm), step):
            await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i:i + step]).decode())
        await conn.input_audio_buffer.commit()  # whatever the VAD has not closed yet
        by_vad: set[str] = set()  # turns the server's VAD closed
        async for event in conn:
            if event.type == "error":
                raise SystemExit(f"error: {event.error.message}")
            if event.type == "conversation.item.input_audio_transcription.delta" and event.delta:
                print(f"delta: {event.delta}", flush=True)
            elif event.type == "input_audio_buffer.speech_stopped":
                by_vad.add(event.item_id)
            elif event.type == "conversation.item.input_audio_transcription.completed":
                if event.transcript:
                    turns.append(event.transcript)
                    print(f"turn: {event.transcript}", flush=True)
                if event.item_id not in by_vad:
                    break  # the turn our commit closed: the file is done
    print(f"final: {' '.join(turns)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://localhost:8000/v1", help="websocket_base_url: the WebSocket port + /v1")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    asyncio.run(main(parser.parse_args()))
