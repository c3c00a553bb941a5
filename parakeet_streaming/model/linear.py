"""Linear layers through oneDNN with weights prepacked once, on CPU.

PyTorch's CPU `F.linear` runs float32 through MKL's sgemm, which on AMD processors is about 2.5x
slower than oneDNN for the few rows of a streaming step (bench/linear.py: 32 x 512 @ 512 x 2048,
440 us vs 168 us on this project's Zen 4 machines); in bfloat16, where PyTorch already calls oneDNN,
the prepacked weight is still 1.3-2x faster per call. The same math as
`F.linear` (float32 results differ by rounding, ~1e-6); everything else falls back to `F.linear`:
other devices and dtypes, autograd, or a PyTorch build without oneDNN.

A packed copy lives next to the weight, so packed modules hold their weights twice (docs/performance.md).
It is rebuilt when the weight changes (in place, by `.to()` or by assignment).
"""
from __future__ import annotations

import os
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PACKED_DTYPES = (torch.float32, torch.bfloat16)
ROWS_HINT = 32  # oneDNN picks its weight layout for about this many rows; any row count works

# PARAKEET_PACKED_LINEAR=0 turns packing off (for A/B benchmarks and debugging).
enabled = os.environ.get("PARAKEET_PACKED_LINEAR", "1") != "0"

# owner module -> {name: (weight, data_ptr, version, packed)}; weak, so models are freed as usual.
_cache: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Any, ...]]]" = weakref.WeakKeyDictionary()
_available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(owner: nn.Module, name: str, x: Tensor, weight: Tensor, bias: Tensor | None,
           silu: bool = False) -> Tensor:
    """`F.linear(x, weight.flatten(1), bias)`, then SiLU if `silu`, with `weight` (a parameter of
    `owner`, cached under `name`) prepacked for oneDNN when that applies; there the SiLU is the
    GEMM's post-op (one pass over the output fewer; bfloat16 rounds once instead of twice)."""
    if _packable(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, _packed(owner, name, weight), bias,
                                                  "swish" if silu else "none", [], "")
    y = F.linear(x, weight.view(weight.size(0), -1), bias)
    return F.silu(y) if silu else y


def packed_bytes(model: nn.Module) -> int:
    """Bytes of the packed copies held for the modules of `model` (built on first use)."""
    owners = set(model.modules())
    return sum(entry[3].numel() * entry[3].element_size()
               for owner, entries in list(_cache.items()) if owner in owners for entry in entries.values())


def _packable(x: Tensor, weight: Tensor) -> bool:
    return (enabled and _available and x.device.type == "cpu" and x.dtype == weight.dtype
            and x.dtype in PACKED_DTYPES and not (torch.is_grad_enabled() and weight.requires_grad))


def _packed(owner: nn.Module, name: str, weight: Tensor) -> Tensor:
    entries = _cache.setdefault(owner, {})
    hit = entries.get(name)
    if hit is not None and hit[0] is weight and hit[1] == weight.data_ptr() and hit[2] == weight._version:
        return hit[3]
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().view(weight.size(0), -1), ROWS_HINT)
    entries[name] = (weight, weight.data_ptr(), weight._version, packed)
    return packed


class Linear(nn.Linear):
    """`nn.Linear` (same parameters and state_dict keys) whose forward uses `linear` above."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(self, "weight", x, self.weight, self.bias)
