#!/usr/bin/env python3
"""Stream a WAV file to parakeet-server over raw TCP (newline-delimited JSON); standard library only.

    python stream_file_tcp.py speech.wav --host localhost --port 8765 [--speed 1]

Same messages and output as stream_file.py: `partial: ...`, `eou <n>: ...`, then `final: ...`.
The file must be 16-bit PCM mono; audio goes out in `--chunk-ms` pieces at `--speed` times real
time (0 = as fast as possible). Exit status 0 once the final result arrived.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
import wave


def read_wav(path: str) -> tuple[bytes, int]:
    """(little-endian 16-bit mono PCM bytes, sample rate)."""
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            sys.exit(f"{path}: need 16-bit mono PCM, got {8 * w.getsampwidth()}-bit, {w.getnchannels()} channels")
        return w.readframes(w.getnframes()), w.getframerate()


def line(msg: dict) -> bytes:
    return json.dumps(msg).encode("utf-8") + b"\n"


async def send_audio(writer: asyncio.StreamWriter, pcm: bytes, rate: int, server_rate: int,
                     args: argparse.Namespace) -> None:
    step = max(1, rate * args.chunk_ms // 1000) * 2  # bytes per chunk (2 bytes a sample)
    start = time.monotonic()
    for offset in range(0, len(pcm), step):
        chunk = pcm[offset:offset + step]
        msg = {"type": "audio", "data": base64.b64encode(chunk).decode("ascii"), "encoding": "pcm16",
               "final": offset + step >= len(pcm)}
        if rate != server_rate:
            msg["sample_rate"] = rate  # the server resamples
        writer.write(line(msg))
        await writer.drain()
        if args.speed > 0:  # pace by the audio clock
            sent_s = (offset + len(chunk)) / 2 / rate
            await asyncio.sleep(max(0.0, start + sent_s / args.speed - time.monotonic()))
    if not pcm:
        writer.write(line({"type": "close"}))
        await writer.drain()


async def main(args: argparse.Namespace) -> int:
    pcm, rate = read_wav(args.wav)
    # limit: the longest line we accept; results carry the whole transcript so far.
    reader, writer = await asyncio.open_connection(args.host, args.port, limit=16 * 1024 * 1024)
    sender = None
    try:
        hello = json.loads(await reader.readline() or b"{}")
        if hello.get("type") != "hello":  # e.g. {"type":"error","code":"server_full",...}
            print(f"error: {hello}", file=sys.stderr)
            return 1
        print(f"connected: stream {hello['stream_id']}, model {hello.get('model')}", file=sys.stderr)
        sender = asyncio.create_task(send_audio(writer, pcm, rate, hello["sample_rate"], args))
        text = ""
        while raw := await reader.readline():  # b"" once the server closes the connection
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
        print("connection closed before the final result", file=sys.stderr)
        return 1
    finally:
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wav", help="16-bit mono PCM WAV file")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8765, help="the server's --port (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default: %(default)s)")
    try:
        sys.exit(asyncio.run(main(parser.parse_args())))
    except (OSError, wave.Error) as exc:  # no such file, no server, not a WAV file
        sys.exit(f"error: {exc}")
