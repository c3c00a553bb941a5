"""Load test: N concurrent streams sent at real-time pace over WebSocket.

    python bench/load.py --streams 1,8,16,32 [--url ws://127.0.0.1:8000] [--seconds 20]
    python bench/load.py --start-server "--model-size small --load-format dummy" --streams 1,8,16,32

For every result message: lag = (wall time since the stream's first audio) - audio_ms / 1000, i.e.
how far the transcript trails the speaker. Finalization latency = time from the final audio message
to the final result. Prints p50/p95 of both per N, failures, and the largest N whose p95 lag stays
within --lag-budget-ms (300 by default), with the server's mean step time and batch size over the
level (from its /metrics). Client and server share this machine's cores; the numbers
include the client's own cost.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import websockets

from parakeet_streaming.model.loader import pseudo_speech

RATE = 16000


@dataclass
class StreamStats:
    lags: list[float] = field(default_factory=list)
    final_latency: float | None = None
    error: str | None = None


async def one_stream(url: str, audio: np.ndarray, packet_ms: int, start_delay: float) -> StreamStats:
    stats = StreamStats()
    await asyncio.sleep(start_delay)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = RATE * packet_ms // 1000 * 2
    try:
        async with websockets.connect(url, max_size=None) as ws:
            hello = json.loads(await ws.recv())
            if hello.get("type") != "hello":
                raise RuntimeError(f"expected hello, got {hello}")
            t0 = time.perf_counter()
            final_sent: list[float] = []

            async def reader() -> None:
                async for raw in ws:
                    msg = json.loads(raw)
                    now = time.perf_counter()
                    if msg["type"] == "error":
                        raise RuntimeError(msg.get("message"))
                    if msg["type"] != "result":
                        continue
                    if msg.get("is_final"):
                        stats.final_latency = now - final_sent[0]
                        return
                    stats.lags.append((now - t0) - msg.get("audio_ms", 0) / 1000)

            read_task = asyncio.create_task(reader())
            for i, off in enumerate(range(0, len(pcm), step)):
                due = t0 + i * packet_ms / 1000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                data = base64.b64encode(pcm[off:off + step]).decode()
                await ws.send(json.dumps({"type": "audio", "data": data, "encoding": "pcm16", "final": False}))
            await asyncio.sleep(max(0.0, t0 + len(audio) / RATE - time.perf_counter()))
            final_sent.append(time.perf_counter())
            await ws.send(json.dumps({"type": "audio", "data": "", "final": True}))
            await asyncio.wait_for(read_task, timeout=60)
            if stats.final_latency is None:
                raise RuntimeError("connection closed without a final result")
    except Exception as exc:  # a failed stream is counted, not fatal to the run
        stats.error = f"{type(exc).__name__}: {exc}"
    return stats


async def run_level(url: str, n: int, audio: np.ndarray, packet_ms: int) -> list[StreamStats]:
    rng = random.Random(n)
    tasks = [one_stream(url, audio, packet_ms, rng.uniform(0, 1.0)) for _ in range(n)]
    return await asyncio.gather(*tasks)


def _mean(total: float, count: float) -> float:
    return total / count if count else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_steps(http_url: str | None) -> tuple[float, float, float]:
    """(steps, step seconds, streams stepped) so far, from the server's /metrics; zeros without it."""
    if http_url is None:
        return 0.0, 0.0, 0.0
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("parakeet_step_duration_seconds_count", "parakeet_step_duration_seconds_sum",
                    "parakeet_batch_size_sum"):
            values[name] = float(value)
    return (values.get("parakeet_step_duration_seconds_count", 0.0),
            values.get("parakeet_step_duration_seconds_sum", 0.0), values.get("parakeet_batch_size_sum", 0.0))


def start_server(flags: str, max_streams: int) -> tuple[subprocess.Popen, str, str]:
    ws_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "parakeet_streaming.cli", "serve", "--host", "127.0.0.1",
           "--port", str(free_port()), "--ws-port", str(ws_port), "--status-port", str(free_port()),
           "--http-port", str(http_port),
           "--max-num-streams", str(max_streams), *shlex.split(flags)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("parakeet-server:"):
            print(f"# server up in {time.perf_counter() - started:.1f} s: {line.strip()}")
            return proc, f"ws://127.0.0.1:{ws_port}", f"http://127.0.0.1:{http_port}"
    raise RuntimeError("server exited before it was ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="ws://127.0.0.1:8000")
    ap.add_argument("--streams", default="1,8,16,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--lag-budget-ms", type=float, default=300.0)
    ap.add_argument("--start-server", metavar="FLAGS", help="start `parakeet-server serve FLAGS` for the run")
    ap.add_argument("--http-url", help="the server's HTTP port, for step figures from /metrics "
                    "(known when --start-server is used)")
    args = ap.parse_args()
    levels = [int(n) for n in args.streams.split(",")]
    audio = pseudo_speech(args.seconds, seed=3)
    proc = None
    url, http_url = args.url, args.http_url
    if args.start_server is not None:
        proc, url, http_url = start_server(args.start_server, max(levels))
    try:
        print(f"{'streams':>8}{'p50 lag':>10}{'p95 lag':>10}{'p50 final':>11}{'p95 final':>11}{'failed':>8}"
              f"{'step':>9}{'batch':>7}")
        best = 0
        for n in levels:
            before = server_steps(http_url)
            results = asyncio.run(run_level(url, n, audio, args.packet_ms))
            steps, seconds, stepped = (b - a for a, b in zip(before, server_steps(http_url)))
            ok = [r for r in results if r.error is None]
            lags = [x for r in ok for x in r.lags]
            finals = [r.final_latency for r in ok if r.final_latency is not None]
            failed = len(results) - len(ok)
            print(f"{n:>8}{pct(lags, 50):>8.0f}ms{pct(lags, 95):>8.0f}ms{pct(finals, 50):>9.0f}ms"
                  f"{pct(finals, 95):>9.0f}ms{failed:>8}{_mean(seconds * 1000, steps):>7.1f}ms"
                  f"{_mean(stepped, steps):>7.1f}", flush=True)
            for r in results:
                if r.error:
                    print(f"#   failure: {r.error}")
            if failed == 0 and pct(lags, 95) <= args.lag_budget_ms:
                best = max(best, n)
        print(f"largest N with p95 lag <= {args.lag_budget_ms:.0f} ms and no failures: {best}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
