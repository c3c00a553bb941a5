#!/usr/bin/env python3
"""Stream a WAV file to parakeet-server over WebSocket and print the transcript as it comes.

    pip install websockets
    python stream_file.py speech.wav --url ws://localhost:8000 [--speed 1] [--binary]

The file must be 16-bit PCM mono (any sample rate; if it differs from the rate the server announces
in `hello`, the audio messages declare it and the server resamples). Audio goes out in `--chunk-ms`
pieces at real-time pace; `--speed 4` sends four times faster, `--speed 0` as fast as possible.

Output: `partial: <text so far>` whenever the text changes, `eou <n>: <utterance>` when the model ends an
utterance, and `final: <transcript>` last. Exit status 0 once the final result arrived.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import wave

from websockets.asyncio.client import connect  # websockets >= 13
from websockets.exceptions import WebSocketException


def read_wav(path: str) -> tuple[bytes, int]:
    """(little-endian 16-bit mono PCM bytes, sample rate)."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            sys.exit(f"{path}: need 16-bit mono PCM, got {8 * w.getsampwidth()}-bit, {w.getnchannels()} channels")
        return w.readframes(w.getnframes()), w.getframerate()


async def send_audio(ws, pcm: bytes, rate: int, server_rate: int, args: argparse.Namespace) -> None:
    step = max(1, rate * args.chunk_ms // 1000) * 2  # bytes per chunk (2 bytes a sample)
    start = time.monotonic()
    for offset in range(0, len(pcm), step):
        chunk = pcm[offset:offset + step]
        if args.binary:  # raw bytes in the stream's encoding (pcm16 unless the URL says otherwise)
            await ws.send(chunk)
        else:
            msg = {"type": "audio", "data": base64.b64encode(chunk).decode("ascii"), "encoding": "pcm16",
                   "final": offset + step >= len(pcm)}
            if rate != server_rate:
                msg["sample_rate"] = rate
            await ws.send(json.dumps(msg))
        if args.speed > 0:  # pace by the audio clock: chunk n goes out at n * chunk_ms / speed
            sent_s = (offset + len(chunk)) / 2 / rate
            await asyncio.sleep(max(0.0, start + sent_s / args.speed - time.monotonic()))
    if args.binary or not pcm:
        await ws.send(json.dumps({"type": "close"}))  # same as a final audio message without data


async def main(args: argparse.Namespace) -> int:
    pcm, rate = read_wav(args.wav)
    url = args.url
    if args.binary:  # binary frames carry no fields: declare the rate for the whole connection
        url += ("&" if "?" in url else "?") + f"sample_rate={rate}"
    async with connect(url, max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if hello["type"] != "hello":  # e.g. {"type":"error","code":"server_full",...}
            print(f"error: {hello}", file=sys.stderr)
            return 1
        print(f"connected: stream {hello['stream_id']}, model {hello.get('model')}", file=sys.stderr)
        sender = asyncio.create_task(send_audio(ws, pcm, rate, hello["sample_rate"], args))
        text = ""
        try:
            async for raw in ws:  # ends when the server closes the connection
                msg = json.loads(raw)
                if msg["type"] == "result" and msg["is_final"]:
                    print(f"final: {msg['text']}", flush=True)
                    return 0
                if msg["type"] == "result" and msg["text"] != text:  # a result may add only an <EOU> token
                    text = msg["text"]
                    print(f"partial: {text}", flush=True)
                elif msg["type"] == "eou":
                    print(f"eou {msg['utterance']}: {msg['text']}", flush=True)
                elif msg["type"] == "error":
                    print(f"error: {msg.get('code')}: {msg['message']}", file=sys.stderr)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    print("connection closed before the final result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", help="16-bit mono PCM WAV file")
    parser.add_argument("--url", default="ws://localhost:8000", help="server WebSocket URL (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default: %(default)s)")
    parser.add_argument("--binary", action="store_true", help="send binary WebSocket frames instead of base64 JSON")
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except (OSError, wave.Error, WebSocketException) as exc:  # no such file, no server, not a WAV file
        sys.exit(f"error: {exc}")
