"""Where a served step's time goes: py-spy on the running server under bench/load.py's streams.

    python bench/profile_served.py --start-server "--model-size small --load-format dummy" --streams 16

Starts a server, runs N real-time WebSocket streams, and while they run records the server with
py-spy (`pip install py-spy`) for --seconds: a flame graph (SVG) and a raw "collapsed" profile per
mode under --out, then prints the share of samples per thread and the top frames. Modes: `--gil`
(only samples where a thread holds the GIL: who keeps the interpreter busy) and wall time with idle
threads included (where each thread waits). Also prints the level's load figures and CPU use.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import subprocess
import threading
import time

from capacity import cpu_seconds
from load import pct, pseudo_speech, run_level, server_figures, start_server


def record(pid: int, seconds: float, path: str, extra: list[str]) -> None:
    cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
           "--format", "raw", "--output", path, "--threads", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: str, top: int) -> None:
    """py-spy's raw format: one line per unique stack, frames joined by ';', then a count."""
    threads: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            threads[frames[0]] += n
            leaves[frames[-1]] += n
    print(f"  {total} samples")
    for name, n in threads.most_common(8):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("  top frames (self):")
    for name, n in leaves.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start-server", metavar="FLAGS", required=True)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12.0, help="py-spy recording length")
    ap.add_argument("--audio-seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--modes", default="gil,idle", help="comma list of gil, idle, native")
    ap.add_argument("--out", default="/tmp/parakeet-profile")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    audio = pseudo_speech(args.audio_seconds, seed=3)
    proc, url, http_url = start_server(args.start_server, max(args.streams, 1))
    try:
        for mode in args.modes.split(","):
            flags = {"gil": ["--gil"], "idle": ["--idle", "--nonblocking"], "native": ["--native"]}[mode]
            path = os.path.join(args.out, f"{mode}.txt")
            before, cpu0, t0 = server_figures(http_url), cpu_seconds(proc.pid), time.monotonic()
            spy = threading.Thread(target=lambda: (time.sleep(3), record(proc.pid, args.seconds, path, flags)))
            spy.start()
            results = asyncio.run(run_level(url, args.streams, audio, args.packet_ms))
            spy.join()
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
            server = server_figures(http_url).minus(before)
            lags = [x for r in results for x in r.lags]
            finals = [r.final_latency for r in results if r.final_latency is not None]
            step_ms = server.step_seconds / max(server.steps, 1) * 1000
            print(f"# mode {mode}: N={args.streams} p95 lag {pct(lags, 95):.0f} ms, p95 final "
                  f"{pct(finals, 95):.0f} ms, failed {sum(r.error is not None for r in results)}, server step "
                  f"{step_ms:.0f} ms, batch {server.stepped / max(server.steps, 1):.1f}, server CPU {cpu:.0f}%")
            summarize(path, args.top)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
