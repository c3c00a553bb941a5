"""Host <-> device copies of a step's small tensors.

On CUDA they go through pinned (page-locked) host memory, so a copy is one DMA that can be queued
behind the step's kernels (non_blocking) instead of a staging copy through pageable memory; PyTorch's
caching host allocator keeps the pinned blocks for reuse. On CPU both directions are free: tensors
pass through as they are.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def pinned(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A host tensor to stage copies to or from `device`: page-locked when it is a CUDA device."""
    return torch.empty(tuple(shape), dtype=dtype, pin_memory=device.type == "cuda")


def to_device(rows: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """Small integer rows (all of one length) as one int64 tensor on `device`, in one copy."""
    host = torch.from_numpy(np.asarray(rows, dtype=np.int64).reshape(len(rows), -1))
    if device.type != "cuda":
        return host.to(device)
    staged = pinned(host.shape, torch.long, device)
    staged.copy_(host)
    return staged.to(device, non_blocking=True)


def to_host(*tensors: Tensor) -> list[Tensor]:
    """Device tensors on the host, waiting once for all of them (one sync on CUDA)."""
    if not tensors or tensors[0].device.type != "cuda":
        return [t.cpu() for t in tensors]
    out = [pinned(t.shape, t.dtype, t.device) for t in tensors]
    for o, t in zip(out, tensors):
        o.copy_(t, non_blocking=True)
    torch.cuda.current_stream(tensors[0].device).synchronize()
    return out
