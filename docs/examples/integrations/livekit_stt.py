#!/usr/bin/env python3
"""Transcribe a WAV file through a LiveKit Agents STT plugin's `stream()` API (Deepgram, or OpenAI
realtime), pointed at parakeet-server by `base_url`. No LiveKit server is needed.

    pip install livekit-agents livekit-plugins-deepgram livekit-plugins-openai
    python livekit_stt.py speech.wav --plugin deepgram --url http://localhost:8000
    python livekit_stt.py speech24k.wav --plugin openai --url http://localhost:8000

The file (16-bit PCM mono) is pushed as 10 ms `rtc.AudioFrame`s. Deepgram: `end_input()` makes the
plugin send Finalize and CloseStream, and the stream ends when the server closes. OpenAI: the
server's VAD ends each turn (the file needs trailing silence for its last one); the example stops
once no event has come for `--settle` seconds. Prints `partial: <text>` per INTERIM_TRANSCRIPT,
`segment: <text>` per FINAL_TRANSCRIPT, `end of speech`, and `final: <segments joined>`.
"""
from __future__ import annotations

import argparse
import asyncio
import wave

from livekit import rtc
from livekit.agents import stt, utils


def make_stt(plugin: str, url: str, api_key: str, rate: int) -> stt.STT:
    if plugin == "deepgram":
        from livekit.plugins import deepgram

        return deepgram.STT(base_url=f"{url}/v1/listen", api_key=api_key, sample_rate=rate)
    from livekit.plugins import openai

    return openai.STT(model="gpt-4o-transcribe", use_realtime=True, base_url=f"{url}/v1", api_key=api_key)


async def main(args: argparse.Namespace) -> None:
    with wave.open(args.wav, "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    segments: list[str] = []
    async with utils.http_context.open():  # the plugins' aiohttp session, outside a LiveKit job
        engine = make_stt(args.plugin, args.url, args.api_key, rate)
        stream = engine.stream()
        step = rate // 100 * 2  # 10 ms
        for i in range(0, len(pcm), step):
            chunk = pcm[i:i + step]
            stream.push_frame(rtc.AudioFrame(data=chunk, sample_rate=rate, num_channels=1,
                                             samples_per_channel=len(chunk) // 2))
        if args.plugin == "deepgram":
            stream.end_input()

        async def read() -> None:
            async for event in stream:
                if event.type == stt.SpeechEventType.FINAL_TRANSCRIPT and event.alternatives[0].text:
                    segments.append(event.alternatives[0].text)
                    print(f"segment: {event.alternatives[0].text}", flush=True)
                elif event.type == stt.SpeechEventType.INTERIM_TRANSCRIPT:
                    print(f"partial: {event.alternatives[0].text}", flush=True)
                elif event.type == stt.SpeechEventType.END_OF_SPEECH:
                    print("end of speech", flush=True)

        reader = asyncio.create_task(read())
        while not reader.done():  # OpenAI's stream stays open: stop when it has gone quiet
            seen = len(segments)
            await asyncio.wait({reader}, timeout=args.settle)
            if args.plugin == "openai" and len(segments) == seen and segments:
                break
        await stream.aclose()
        await engine.aclose()
    print(f"final: {' '.join(segments)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--plugin", choices=("deepgram", "openai"), default="deepgram")
    parser.add_argument("--url", default="http://localhost:8000", help="the server's WebSocket port, as http://")
    parser.add_argument("--api-key", default="none", help="the server's --api-key, if it has one")
    parser.add_argument("--settle", type=float, default=3.0, help="OpenAI: seconds without a new segment before ending")
    asyncio.run(main(parser.parse_args()))
