#!/usr/bin/env python3
"""Stream a WAV file with word timestamps on, optionally flushing part way, and print the words.

    pip install websockets
    python timestamps.py speech.wav --url ws://localhost:8000 [--flush-at 1.5] [--speed 1]

Timestamps are asked for with `?timestamps=true` in the URL (over TCP: send
`{"type":"config","timestamps":true}` first). Output: `word <start_ms>-<end_ms> <confidence> <word>`
for every word as it completes, `flushed: <text>` when the answer to the flush arrives, and
`final: <transcript>` last.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import wave

from websockets.asyncio.client import connect


async def send(ws, pcm: bytes, rate: int, args: argparse.Namespace) -> None:
    step = rate // 10 * 2  # 100 ms of 16-bit samples
    flush_at = int(args.flush_at * rate) * 2 if args.flush_at else -1
    start = time.monotonic()
    for offset in range(0, len(pcm), step):
        if offset <= flush_at < offset + step:  # split the chunk at the flush point
            await ws.send(pcm[offset:flush_at])
            await ws.send(json.dumps({"type": "flush"}))
            await ws.send(pcm[flush_at:offset + step])
        else:
            await ws.send(pcm[offset:offset + step])
        if args.speed > 0:
            await asyncio.sleep(max(0.0, start + (offset + step) / 2 / rate / args.speed - time.monotonic()))
    await ws.send(json.dumps({"type": "close"}))


async def main(args: argparse.Namespace) -> int:
    with wave.open(args.wav, "rb") as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    async with connect(f"{args.url}/?timestamps=true&sample_rate={rate}", max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":
            print(f"error: {hello}", file=sys.stderr)
            return 1
        sender = asyncio.create_task(send(ws, pcm, rate, args))
        async for raw in ws:
            msg = json.loads(raw)
            for w in msg.get("words", []):  # completed words: in results, and in eou events
                print(f"word {w['start_ms']}-{w['end_ms']} {w['confidence']:.2f} {w['word']}", flush=True)
            if msg.get("flushed"):
                print(f"flushed: {msg['text']}", flush=True)
            elif msg["type"] == "result" and msg["is_final"]:
                print(f"final: {msg['text']}", flush=True)
                await sender
                return 0
    return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav")
    parser.add_argument("--url", default="ws://localhost:8000")
    parser.add_argument("--flush-at", type=float, default=0.0, help="send a flush after this many seconds of audio")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    sys.exit(asyncio.run(main(parser.parse_args())))
