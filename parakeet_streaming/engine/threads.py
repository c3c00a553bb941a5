"""Intra-op threads: the engine thread is the only one that runs torch ops on several cores.

PyTorch's CPU build parallelises each op with OpenMP (libgomp). Every thread that runs a parallel
op gets its own team of worker threads, kept for as long as that thread lives. Once libgomp manages
more threads than there are CPUs, it stops spinning at its barriers and puts idle workers to sleep
almost at once, so each of a step's hundreds of small ops pays a futex wake-up. A server whose event
loop thread had run one parallel op (loading the model, building the slot table) holds two teams,
and its engine steps ran far slower than the same steps on a lone thread (docs/performance.md,
"Where a served step's time goes").

So the thread that serves the transports is made serial before its first torch op
(`reserve_for_engine`), and the engine thread sets its own count when it starts (`Engine(threads=)`).
ATen reads the count once per thread, at that thread's first op, from the last value set anywhere;
a serial thread keeps 1 whatever later threads set.
"""
from __future__ import annotations

import torch


def reserve_for_engine(requested: int | None = None) -> int:
    """Make the calling thread run torch ops on one core from now on; returns the engine's intra-op
    thread count: `requested`, or what torch would have used (OMP_NUM_THREADS, else the cores)."""
    default = torch.get_num_threads()  # this thread's first read: torch's default for the process
    torch.set_num_threads(1)
    return requested or default


def use(threads: int) -> None:
    """The calling thread (the engine's, or a short-lived loader's) runs ops on `threads` cores."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
