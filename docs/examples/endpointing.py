#!/usr/bin/env python3
"""Stream a WAV file and print each utterance as the server ends it (model <EOU> or silence).

    pip install websockets
    parakeet-server serve --model-size large                        # silence endpointing at 500 ms
    parakeet-server serve --model-size small --endpoint-silence-ms 800   # <EOU> and silence
    python endpointing.py speech.wav --url ws://localhost:8000 [--speed 1]

The file must be 16-bit PCM mono; its rate goes in the URL (`?sample_rate=`), the audio as binary
frames at real-time pace (`--speed 0`: as fast as possible). Output: one line per `eou` event,
`eou <n> (<reason>) at <ms> ms: <text>`, then `final: <transcript>`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave

from websockets.asyncio.client import connect


async def send(ws, pcm: bytes, rate: int, speed: float) -> None:
    step = rate // 10 * 2  # 100 ms of 16-bit samples
    start = time.monotonic()
    for offset in range(0, len(pcm), step):
        await ws.send(pcm[offset:offset + step])
        if speed > 0:
            await asyncio.sleep(max(0.0, start + (offset + step) / 2 / rate / speed - time.monotonic()))
    await ws.send(json.dumps({"type": "close"}))


async def main(args: argparse.Namespace) -> int:
    with wave.open(args.wav, "rb") as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    async with connect(f"{args.url}/?sample_rate={rate}", max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":
            print(f"error: {hello}", file=sys.stderr)
            return 1
        sender = asyncio.create_task(send(ws, pcm, rate, args.speed))
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "eou":
                print(f"eou {msg['utterance']} ({msg['reason']}) at {msg['audio_ms']} ms: {msg['text']}", flush=True)
            elif msg["type"] == "result" and msg["is_final"]:
                print(f"final: {msg['text']}", flush=True)
                await sender
                return 0
    return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--speed", type=float, default=1.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
