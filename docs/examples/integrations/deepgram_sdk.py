#!/usr/bin/env python3
"""Transcribe a WAV file with Deepgram's own Python SDK (deepgram-sdk 7), pointed at parakeet-server.

    pip install "deepgram-sdk>=7,<8"
    python deepgram_sdk.py speech.wav --url ws://localhost:8000

The file must be 16-bit PCM mono (any rate: it is declared as `sample_rate`). Prints
`partial: <segment so far>` for interim results, `segment: <text>` for each final segment, and
`final: <every final segment joined>` last.
"""
from __future__ import annotations

import argparse
import asyncio
import wave

from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.events import EventType
from deepgram.listen.v1.types import ListenV1Results


async def main(args: argparse.Namespace) -> None:
    with wave.open(args.wav, "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    http = args.url.replace("ws", "http", 1)
    env = DeepgramClientEnvironment(base=http, production=args.url, agent=args.url, agent_rest=http)
    client = AsyncDeepgramClient(api_key=args.api_key, environment=env)
    segments: list[str] = []

    def on_message(msg) -> None:
        if not isinstance(msg, ListenV1Results):
            return
        text = msg.channel.alternatives[0].transcript
        if msg.is_final and text:
            segments.append(text)
            print(f"segment: {text}", flush=True)
        elif text:
            print(f"partial: {text}", flush=True)

    async with client.listen.v1.connect(model="parakeet", encoding="linear16", sample_rate=rate,
                                        interim_results=True, punctuate=True, endpointing=300) as conn:
        conn.on(EventType.MESSAGE, on_message)
        listening = asyncio.create_task(conn.start_listening())
        step = rate // 10 * 2  # 100 ms of audio per message
        for i in range(0, len(pcm), step):
            await conn.send_media(pcm[i:i + step])
        await conn.send_close_stream()  # the server sends the last results and Metadata, then closes
        await listening
    print(f"final: {' '.join(segments)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://localhost:8000", help="the server's WebSocket port")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    asyncio.run(main(parser.parse_args()))
