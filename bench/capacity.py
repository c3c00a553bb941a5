"""Served capacity: the largest number of real-time streams a server holds within the latency budget.

    python bench/capacity.py --start-server "--model-size small --load-format dummy --dtype bfloat16"
    python bench/capacity.py --start-server "--model-size large --load-format dummy --att-context-size 70,1"
    python bench/capacity.py --start-server "..." --levels 16,24,32,48 --isolated

Runs bench/load.py's streams (WebSocket, real-time pace, the client on this machine) at N = 1, 2, 4,
8, 12, 16, 24, 32, 48, 64, ... and stops after two levels in a row overload. A level passes when
every round has no failed stream, p95 lag <= --lag-budget-ms and p95 final <= --final-budget-ms.
Per level and round it prints those figures, the server's mean step and batch (from /metrics), and
the CPU use over the level (100% = one core, read from /proc) of the server process and of the load
client (this process).

`--isolated`: once the server has stopped, the same model (flags parsed as the server parses them)
is timed in this process at each level's mean batch (bench/model_step.py's steady-state steps), and
the served step is printed next to it as a ratio: what serving adds to a step of the same size.
"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import signal
import statistics
import time

import torch

from load import BINARY_HELP, pct, pseudo_speech, run_level, server_figures, start_server
from model_step import time_steps


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
    ap.add_argument("--levels", help="an explicit ladder, e.g. 32,64,128 (default: 1, 2, 4, 8, 12, ... up to "
                    "--max-streams)")
    ap.add_argument("--isolated", action="store_true", help="then time the same steps alone (see above)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--packet-ms", type=int, default=80)
    ap.add_argument("--binary", action="store_true", help=BINARY_HELP)
    ap.add_argument("--lag-budget-ms", type=float, default=300.0)
    ap.add_argument("--final-budget-ms", type=float, default=400.0)
    args = ap.parse_args()
    audio = pseudo_speech(args.seconds, seed=3)
    levels = [int(n) for n in args.levels.split(",")] if args.levels else ladder(args.max_streams)
    proc, url, http_url = start_server(args.start_server, max(args.max_streams, *levels))
    print(f"{'streams':>8}{'round':>6}{'p95 lag':>10}{'p95 final':>11}{'failed':>8}{'step':>9}{'batch':>7}"
          f"{'srv CPU':>9}{'client':>8}  verdict")
    capacity, overloaded_in_a_row = 0, 0
    served: list[tuple[int, int, float, float]] = []  # (streams, round, mean step ms, mean batch)
    try:
        for n in levels:
            passed = True
            for rnd in range(1, args.rounds + 1):
                before, t0 = server_figures(http_url), time.monotonic()
                cpu0, client0 = cpu_seconds(proc.pid), cpu_seconds(os.getpid())
                results = asyncio.run(run_level(url, n, audio, args.packet_ms, args.binary))
                elapsed = time.monotonic() - t0
                cpu = (cpu_seconds(proc.pid) - cpu0) / elapsed * 100
                client = (cpu_seconds(os.getpid()) - client0) / elapsed * 100
                server = server_figures(http_url).minus(before)
                ok = [r for r in results if r.error is None]
                lag = pct([x for r in ok for x in r.lags], 95)
                final = pct([r.final_latency for r in ok if r.final_latency is not None], 95)
                failed = len(results) - len(ok)
                good = failed == 0 and lag <= args.lag_budget_ms and final <= args.final_budget_ms
                passed = passed and good
                step = server.step_seconds * 1000 / server.steps if server.steps else float("nan")
                batch = server.stepped / server.steps if server.steps else float("nan")
                served.append((n, rnd, step, batch))
                print(f"{n:>8}{rnd:>6}{lag:>8.0f}ms{final:>9.0f}ms{failed:>8}{step:>7.1f}ms{batch:>7.1f}"
                      f"{cpu:>8.0f}%{client:>7.0f}%  {'ok' if good else 'over'}", flush=True)
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
    if args.isolated:
        compare_isolated(args.start_server, served)


def compare_isolated(flags: str, served: list[tuple[int, int, float, float]], repeats: int = 20) -> None:
    """Each level's served mean step next to the same model's isolated step at its mean batch."""
    from parakeet_streaming.cli import config_from_args, parse_args
    from parakeet_streaming.engine.runner import Runner
    from parakeet_streaming.server.app import load

    config = config_from_args(parse_args(["serve", *shlex.split(flags)], {}))
    if config.threads:
        torch.set_num_threads(config.threads)
    rows = [row for row in served if not math.isnan(row[3])]  # a round without a step has no batch
    if not rows:
        return
    model = load(config)
    runner = Runner(model, max(round(batch) for *_, batch in rows) or 1, config.device)
    print(f"{'streams':>8}{'round':>6}{'batch':>7}{'served':>10}{'isolated':>10}{'ratio':>7}")
    for n, rnd, step, batch in rows:
        b = max(round(batch), 1)
        alone = statistics.median(time_steps(runner, b, repeats)) * 1000
        print(f"{n:>8}{rnd:>6}{batch:>7.1f}{step:>8.1f}ms{alone:>8.1f}ms{step / alone:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
