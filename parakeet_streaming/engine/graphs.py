"""A step function at bucketed batch sizes, replayed as CUDA graphs.

A CUDA graph replays recorded kernels on fixed addresses and shapes, so one graph serves one batch
size of one input shape. `BucketedGraphs` keeps one per bucket (1, 2, 3, 4, 6, 8, 12, 16, 24, ...:
powers of two and 1.5x between, so padding wastes less than a third), each with static input buffers:
a batch of B rows is copied into the smallest bucket >= B, the rest of the rows point at a scratch
slot that no stream owns (engine/slots.py `scratch_slots`), so the padding rows' writes to the
encoder state land there and never in a real slot; their outputs are dropped.

The function must read nothing back to the host and allocate no tensor that outlives it (the
runner's steady-state encoder step: engine/runner.py). Graphs are captured on a bucket's first use
(a warm-up run on the scratch slot, then the capture), or all at once by `prepare()`; a capture
that fails leaves that bucket eager. With `capture=False` (any device, and what the CPU tests run) the same padded path
runs eagerly.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

log = logging.getLogger(__name__)

StepFn = Callable[[Tensor, Tensor], Tensor]  # (x (B, *row_shape), slots (B,)) -> output (B, ...)


def buckets(max_batch: int) -> list[int]:
    """Batch sizes to capture, up to the first one >= max_batch."""
    sizes, n = [1, 2, 3], 4
    while sizes[-1] < max_batch:
        sizes += [n, n + n // 2]
        n *= 2
    return sizes[: bisect.bisect_left(sizes, max_batch) + 1]


def bucket_for(n: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds n rows."""
    i = bisect.bisect_left(sizes, n)
    if n < 1 or i == len(sizes):
        raise ValueError(f"{n} rows do not fit the buckets {list(sizes)}")
    return sizes[i]


def pad_slots(slots: Sequence[int], bucket: int, scratch: int) -> list[int]:
    """The slots of a padded batch: the real ones first, then the scratch slot."""
    if len(slots) > bucket:
        raise ValueError(f"{len(slots)} slots do not fit a bucket of {bucket}")
    return list(slots) + [scratch] * (bucket - len(slots))


@dataclass
class _Bucket:
    x: Tensor  # static input (bucket, *row_shape)
    slots: Tensor  # static (bucket,) int64
    out: Tensor | None = None  # static output (after capture)
    graph: "torch.cuda.CUDAGraph | None" = None
    eager: bool = False  # capture failed or is off: run fn on the static buffers


class BucketedGraphs:
    def __init__(self, fn: StepFn, row_shape: Sequence[int], dtype: torch.dtype, device: torch.device,
                 max_batch: int, scratch: int, capture: bool) -> None:
        self.fn, self.row_shape, self.dtype, self.device = fn, tuple(row_shape), dtype, device
        self.sizes = buckets(max_batch)
        self.scratch = scratch
        self.capture = capture and device.type == "cuda"
        self._buckets: dict[int, _Bucket] = {}

    def __call__(self, x: Tensor, slots: Tensor) -> Tensor:
        """fn on the rows of x (B, *row_shape) for `slots` (B,) device int64, padded to its bucket."""
        b = x.size(0)
        if tuple(x.shape[1:]) != self.row_shape:
            raise ValueError(f"rows of shape {tuple(x.shape[1:])}, the graphs take {self.row_shape}")
        entry = self._bucket(bucket_for(b, self.sizes))
        entry.x[:b].copy_(x)
        entry.x[b:].zero_()
        entry.slots[:b].copy_(slots)
        entry.slots[b:].fill_(self.scratch)
        if entry.eager:
            return self.fn(entry.x, entry.slots)[:b]
        assert entry.graph is not None and entry.out is not None
        entry.graph.replay()
        return entry.out[:b].clone()  # the static output is overwritten by the next replay

    def prepare(self, sizes: Sequence[int] | None = None) -> list[int]:
        """Build (and on CUDA capture) the buckets now instead of on first use, e.g. at start-up;
        touches only the scratch slot. Returns the buckets that replay a graph."""
        for n in self.sizes if sizes is None else sizes:
            self._bucket(bucket_for(n, self.sizes))
        return self.captured()

    def captured(self) -> list[int]:
        """Buckets that replay a graph (the rest run eagerly)."""
        return sorted(n for n, e in self._buckets.items() if e.graph is not None)

    def _bucket(self, n: int) -> _Bucket:
        entry = self._buckets.get(n)
        if entry is None:
            entry = _Bucket(torch.zeros(n, *self.row_shape, dtype=self.dtype, device=self.device),
                            torch.full((n,), self.scratch, dtype=torch.long, device=self.device))
            entry.eager = not (self.capture and self._capture(entry))
            self._buckets[n] = entry
        return entry

    def _capture(self, entry: _Bucket) -> bool:
        """Warm up on the scratch slot (caches that fn fills on first use), then record fn."""
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self.fn(entry.x, entry.slots)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                entry.out = self.fn(entry.x, entry.slots)
            entry.graph = graph
            return True
        except Exception as exc:  # an op that cannot be captured: this bucket stays eager
            log.warning("CUDA graph capture failed for batch %d, running it eagerly: %s", entry.x.size(0), exc)
            entry.out, entry.graph = None, None
            return False
