"""What other busy work costs a model step: steps alone, then beside work done part time.

    python bench/interference.py [--dtype bfloat16] [--batch 48] [--work-us 150] [--period-us 1100]
        [--runs alone,python,gil-free,process]

Times bench/model_step.py's steady-state steps of the small model ([70,1]) in turn: alone
(`alone`); beside a thread doing Python work that holds the GIL (JSON and base64 of an audio
message, as the server's event loop does) for --work-us every --period-us (`python`); beside a
thread doing as much work that releases the GIL, sha256 of 16 KiB blocks (`gil-free`); beside another
process doing the Python work, where transports in a process of their own would put it (`process`).
Prints each median and the other side's CPU share. docs/performance.md ("Why the event loop costs
the step up to twice its share") reads the result.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import statistics
import threading
import time

import torch

from model_step import steady_step_times
from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.loader import load_model

_MESSAGE = json.dumps({"type": "audio", "data": base64.b64encode(os.urandom(2560)).decode()})
_BLOCK = os.urandom(16384)


def python_work() -> None:
    base64.b64decode(json.loads(_MESSAGE)["data"])
    json.dumps({"type": "result", "text": "x" * 50})


def gil_free_work() -> None:
    hashlib.sha256(_BLOCK).digest()


class PartTimeThread(threading.Thread):
    """Runs `work` in a loop for `work_s`, then sleeps out the rest of `period_s`, until stopped."""

    def __init__(self, work, work_s: float, period_s: float) -> None:
        super().__init__(daemon=True)
        self.work, self.work_s, self.period_s = work, work_s, period_s
        self.busy_s, self.stopped = 0.0, threading.Event()

    def run(self) -> None:
        torch.set_num_threads(1)
        while not self.stopped.is_set():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < self.work_s:
                self.work()
            self.busy_s += time.perf_counter() - t0
            time.sleep(max(0.0, self.period_s - (time.perf_counter() - t0)))


def _work_elsewhere(work_s: float, period_s: float, stop, busy) -> None:  # a child process
    thread = PartTimeThread(python_work, work_s, period_s)
    thread.stopped = stop
    thread.run()
    busy.value = thread.busy_s


class PartTimeProcess:
    """PartTimeThread's Python work in a child process (same start/stopped/join/busy_s surface)."""

    def __init__(self, work_s: float, period_s: float) -> None:
        self.stopped, self._busy = multiprocessing.Event(), multiprocessing.Value("d", 0.0)
        self._proc = multiprocessing.Process(target=_work_elsewhere, args=(work_s, period_s, self.stopped, self._busy))

    def start(self) -> None:
        self._proc.start()

    def join(self) -> None:
        self._proc.join()

    @property
    def busy_s(self) -> float:
        return self._busy.value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--work-us", type=float, default=150.0)
    ap.add_argument("--period-us", type=float, default=1100.0)
    ap.add_argument("--runs", default="alone,python,gil-free,process", help="which, in this order (repeats allowed)")
    args = ap.parse_args()
    model = load_model("small", load_format="dummy", dtype=args.dtype)
    model.set_att_context_size((70, 1))
    runner = Runner(model, args.batch)
    slots = list(range(args.batch))
    for s in slots:
        runner.open(s)
    print(f"small [70,1] {args.dtype}, batch {args.batch}, {torch.get_num_threads()} threads")
    work_s, period_s = args.work_us / 1e6, args.period_us / 1e6
    others = {"alone": lambda: None, "python": lambda: PartTimeThread(python_work, work_s, period_s),
              "gil-free": lambda: PartTimeThread(gil_free_work, work_s, period_s),
              "process": lambda: PartTimeProcess(work_s, period_s)}
    for name in args.runs.split(","):
        other = others[name]()
        if other is not None:
            other.start()
        t0 = time.perf_counter()
        times = steady_step_times(runner, slots, args.steps)
        wall = time.perf_counter() - t0
        share = 0.0
        if other is not None:
            other.stopped.set()
            other.join()
            share = other.busy_s / wall * 100
        print(f"{name:<9} step median {statistics.median(times) * 1000:7.1f} ms   the other side "
              f"{share:3.0f}% of a core", flush=True)


if __name__ == "__main__":
    main()
