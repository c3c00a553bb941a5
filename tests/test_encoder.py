"""model/encoder.py: its hand-written ops compute what the plain PyTorch ops do."""
from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_subsampling_relu_is_relu(dtype: torch.dtype) -> None:
    """The in-place ReLU of the subsampling (bfloat16 through its int16 view) equals torch.relu,
    signed zeros, infinities and subnormals included."""
    from parakeet_streaming.model.encoder import _relu_

    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 1e-40, -1e-40, 3.5, -3.5])
    x = torch.cat([torch.randn(4096) * 10, special]).to(dtype)
    expected = torch.relu(x)
    out = _relu_(x)
    assert out is x and torch.equal(out, expected)
    assert not (out < 0).any() and (out.view(-1)[:4096] > 0).sum() > 1000
