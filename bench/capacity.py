"""Served capacity: the largest number of real-time streams a server holds within the latency budget.

    python bench/capacity.py --start-server "--model-size small --load-format dummy --dtype bfloat16"
    python bench/capacity.py --start-server "--model-size large --load-format dummy --att-context-size 70,1"

Runs bench/load.py's streams (WebSocket, real-time pace, the client on this machine) at N = 1, 2, 4,
8, 12, 16, 24, 32, 48, 64, ... and stops after two levels in a row overload. A level passes when
every round has no failed stream, p95 lag <= --lag-budget-ms and p95 final <= --final-budget-ms.
Per level and round it prints those figures, the server's mean step and batch (from /metrics), and
the server process's CPU use over the level (100% = one core), read from /proc.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

from load import pct, pseudo_speech, run_level, server_figures, start_server


def ladder(limit: int) -> list[int]:
    levels, n = [], 1
    while n <= limit:
        levels.append(n)
        n = n * 2 if n < 8 else n + n // 2 if n % 3 else n + n // 3
    return levels


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--start-server", metavar="FLAGS", required=True, help="`parakeet-server serve` flags")
    ap.add_argument("--max-streams", type=int, default=128, help="the ladder's top and the server's slots")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--lag-budget-ms", type=float, default=300.0)
    ap.add_argument("--final-budget-ms", type=float, default=400.0)
    args = ap.parse_args()
    audio = pseudo_speech(args.seconds, seed=3)
    proc, url, http_url = start_server(args.start_server, args.max_streams)
    print(f"{'streams':>8}{'round':>6}{'p95 lag':>10}{'p95 final':>11}{'failed':>8}{'step':>9}{'batch':>7}"
          f"{'srv CPU':>9}  verdict")
    capacity, overloaded_in_a_row = 0, 0
    try:
        for n in ladder(args.max_streams):
            passed = True
            for rnd in range(1, args.rounds + 1):
                before, cpu0, t0 = server_figures(http_url), cpu_seconds(proc.pid), time.monotonic()
                results = asyncio.run(run_level(url, n, audio, args.packet_ms))
                cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
                server = server_figures(http_url).minus(before)
                ok = [r for r in results if r.error is None]
                lag = pct([x for r in ok for x in r.lags], 95)
                final = pct([r.final_latency for r in ok if r.final_latency is not None], 95)
                failed = len(results) - len(ok)
                good = failed == 0 and lag <= args.lag_budget_ms and final <= args.final_budget_ms
                passed = passed and good
                step = server.step_seconds * 1000 / server.steps if server.steps else float("nan")
                batch = server.stepped / server.steps if server.steps else float("nan")
                print(f"{n:>8}{rnd:>6}{lag:>8.0f}ms{final:>9.0f}ms{failed:>8}{step:>7.1f}ms{batch:>7.1f}"
                      f"{cpu:>8.0f}%  {'ok' if good else 'over'}", flush=True)
                if not good:
                    break  # one failed round decides the level
            if passed:
                capacity, overloaded_in_a_row = n, 0
            else:
                overloaded_in_a_row += 1
                if overloaded_in_a_row == 2:
                    break
        print(f"capacity: {capacity} streams (p95 lag <= {args.lag_budget_ms:.0f} ms, p95 final <= "
              f"{args.final_budget_ms:.0f} ms, 0 failed, {args.rounds} rounds) with {args.start_server}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


if __name__ == "__main__":
    main()
