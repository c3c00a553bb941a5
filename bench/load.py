"""Load test: N concurrent streams sent at real-time pace over WebSocket.

    python bench/load.py --streams 1,8,16,32 [--url ws://127.0.0.1:8000] [--seconds 20]
    python bench/load.py --start-server "--model-size small --load-format dummy" --streams 1,8,16,32

For every result message: lag = (wall time since the stream's first audio) - audio_ms / 1000, i.e.
how far the transcript trails the speaker. Finalization latency = time from the final audio message
to the final result. Prints p50/p95 of both per N, failures, and the largest N whose p95 lag stays
within --lag-budget-ms (300 by default). From the server's /metrics over each level: its mean step
time and batch size, and "srv" p50/p95, the server's decode lag (audio arrival at the engine to the
end of the step that decoded it, for every step, with or without new tokens; interpolated within
histogram buckets). Client and server share this machine's cores; the numbers
include the client's own cost. Audio goes as base64 in JSON messages, or with `--binary` as binary
frames of raw pcm16 (what this project's client sends), which costs both sides less.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
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


BINARY_HELP = ("send audio as binary WebSocket frames of raw pcm16, as parakeet_streaming.client does with "
               "protocol-2 servers (default: base64 in JSON text messages, the seed protocol)")


@dataclass
class StreamStats:
    lags: list[float] = field(default_factory=list)
    final_latency: float | None = None
    error: str | None = None


async def one_stream(url: str, audio: np.ndarray, packet_ms: int, start_delay: float,
                     binary: bool = False) -> StreamStats:
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
                if binary:  # raw pcm16, as parakeet_streaming.client sends to protocol-2 servers
                    await ws.send(pcm[off:off + step])
                else:
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


async def run_level(url: str, n: int, audio: np.ndarray, packet_ms: int,
                    binary: bool = False) -> list[StreamStats]:
    rng = random.Random(n)
    tasks = [one_stream(url, audio, packet_ms, rng.uniform(0, 1.0), binary) for _ in range(n)]
    return await asyncio.gather(*tasks)


def _mean(total: float, count: float) -> float:
    return total / count if count else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerFigures:
    """Counters from the server's /metrics (all zero without an HTTP URL); levels subtract two."""

    steps: float = 0.0
    step_seconds: float = 0.0
    stepped: float = 0.0  # streams summed over steps
    lag_buckets: dict[float, float] = field(default_factory=dict)  # decode lag: upper bound -> cumulative count

    def minus(self, other: "ServerFigures") -> "ServerFigures":
        return ServerFigures(self.steps - other.steps, self.step_seconds - other.step_seconds,
                             self.stepped - other.stepped,
                             {le: n - other.lag_buckets.get(le, 0.0) for le, n in self.lag_buckets.items()})

    def lag_quantile(self, q: float) -> float:
        """Decode lag quantile in ms, interpolated within its histogram bucket."""
        bounds = sorted(self.lag_buckets)
        total = self.lag_buckets.get(math.inf, 0.0)
        if total <= 0:
            return float("nan")
        lower, below = 0.0, 0.0
        for le in bounds:
            count = self.lag_buckets[le]
            if count >= q * total:
                if math.isinf(le):
                    return lower * 1000
                return (lower + (le - lower) * (q * total - below) / max(count - below, 1e-9)) * 1000
            lower, below = le, count
        return float("nan")


def server_figures(http_url: str | None) -> ServerFigures:
    if http_url is None:
        return ServerFigures()
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    fig = ServerFigures()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == "parakeet_step_duration_seconds_count":
            fig.steps = float(value)
        elif name == "parakeet_step_duration_seconds_sum":
            fig.step_seconds = float(value)
        elif name == "parakeet_batch_size_sum":
            fig.stepped = float(value)
        elif name.startswith("parakeet_decode_lag_seconds_bucket{"):
            le = name.split('le="')[1].split('"')[0]
            fig.lag_buckets[float(le)] = float(value)
    return fig


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
            http_url = f"http://127.0.0.1:{http_port}"
            wait_ready(http_url, proc)  # the banner comes before the warm-up step; streams wait for ready
            print(f"# server ready in {time.perf_counter() - started:.1f} s: {line.strip()}")
            return proc, f"ws://127.0.0.1:{ws_port}", http_url
    raise RuntimeError("server exited before it was ready")


def wait_ready(http_url: str, proc: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{http_url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:  # 503 while loading or warming up, or not listening yet
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="ws://127.0.0.1:8000")
    ap.add_argument("--streams", default="1,8,16,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--lag-budget-ms", type=float, default=300.0)
    ap.add_argument("--binary", action="store_true", help=BINARY_HELP)
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
              f"{'step':>9}{'batch':>7}{'srv p50':>9}{'srv p95':>9}")
        best = 0
        for n in levels:
            before = server_figures(http_url)
            results = asyncio.run(run_level(url, n, audio, args.packet_ms, args.binary))
            server = server_figures(http_url).minus(before)
            ok = [r for r in results if r.error is None]
            lags = [x for r in ok for x in r.lags]
            finals = [r.final_latency for r in ok if r.final_latency is not None]
            failed = len(results) - len(ok)
            print(f"{n:>8}{pct(lags, 50):>8.0f}ms{pct(lags, 95):>8.0f}ms{pct(finals, 50):>9.0f}ms"
                  f"{pct(finals, 95):>9.0f}ms{failed:>8}{_mean(server.step_seconds * 1000, server.steps):>7.1f}ms"
                  f"{_mean(server.stepped, server.steps):>7.1f}{server.lag_quantile(0.5):>7.0f}ms"
                  f"{server.lag_quantile(0.95):>7.0f}ms", flush=True)
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
