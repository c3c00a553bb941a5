"""model/linear.py: packed oneDNN linears compute F.linear, and follow their weights when they change."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from parakeet_streaming.model import linear as packed_linear
from parakeet_streaming.model.linear import Linear, linear, packed_bytes

needs_onednn = pytest.mark.skipif(not packed_linear._available, reason="PyTorch built without oneDNN")


def reference(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())


@needs_onednn
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_f_linear(dtype: torch.dtype, tol: float, bias: bool) -> None:
    torch.manual_seed(0)
    layer = Linear(96, 160, bias=bias).to(dtype)
    x = torch.randn(3, 5, 96).to(dtype)
    with torch.inference_mode():
        y = layer(x)
        strided = layer(torch.randn(5, 3, 96).to(dtype).transpose(0, 1))  # a non-contiguous input
    assert y.shape == (3, 5, 160) and y.dtype == dtype and strided.shape == (3, 5, 160)
    assert packed_bytes(layer) > 0  # the packed path ran
    assert (y.double() - reference(layer, x)).abs().max() < tol


@needs_onednn
def test_follows_in_place_and_reassigned_weights() -> None:
    torch.manual_seed(1)
    layer = Linear(64, 32)
    x = torch.randn(4, 64)
    with torch.inference_mode():
        before = layer(x)
    with torch.no_grad():
        layer.weight.mul_(-2.0)  # e.g. load_state_dict copies in place
    with torch.inference_mode():
        after = layer(x)
    assert not torch.allclose(after, before)
    assert torch.allclose(after, reference(layer, x).float(), atol=1e-5)
    layer.weight = torch.nn.Parameter(torch.randn(32, 64))
    with torch.inference_mode():
        assert torch.allclose(layer(x), reference(layer, x).float(), atol=1e-5)
    layer.to(torch.bfloat16)  # .to swaps the data under the same Parameter
    with torch.inference_mode():
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert (y.double() - reference(layer, x.bfloat16())).abs().max() < 0.1


def test_conv_weights_are_flattened() -> None:
    """A 1x1 Conv1d's (out, in, 1) weight is used as the (out, in) matrix."""
    torch.manual_seed(2)
    conv = torch.nn.Conv1d(48, 96, 1)
    x = torch.randn(2, 7, 48)
    with torch.inference_mode():
        y = linear(conv, "weight", x, conv.weight, conv.bias)
        expected = conv(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(y, expected, atol=1e-5)


def test_falls_back_when_packing_does_not_apply() -> None:
    """Autograd and float16 take plain F.linear (same result, and gradients flow)."""
    torch.manual_seed(3)
    layer = Linear(32, 16)
    x = torch.randn(2, 32, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    assert packed_bytes(layer) == 0
    half = Linear(32, 16).half()
    with torch.inference_mode():
        y = half(x.detach().half())
    assert y.dtype == torch.float16 and packed_bytes(half) == 0


def test_switch_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_linear, "enabled", False)
    layer = Linear(32, 16)
    with torch.inference_mode():
        y = layer(torch.ones(1, 32))
    assert packed_bytes(layer) == 0
    assert torch.allclose(y, reference(layer, torch.ones(1, 32)).float(), atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_silu_is_f_silu_of_f_linear(dtype: torch.dtype, tol: float) -> None:
    """`silu=True` (a oneDNN post-op when packed, F.silu after F.linear otherwise) is SiLU of the linear."""
    torch.manual_seed(4)
    layer = Linear(64, 128).to(dtype)
    x = torch.randn(6, 64).to(dtype)
    expected = F.silu(reference(layer, x))
    with torch.inference_mode():
        fused = linear(layer, "weight", x, layer.weight, layer.bias, silu=True)
        plain = layer(x)
    assert fused.dtype == dtype and (fused.double() - expected).abs().max() < tol
    assert (plain.double() - expected).abs().max() > 10 * tol  # SiLU was applied, not a plain linear
    packed_linear.enabled = False
    try:
        with torch.inference_mode():
            fallback = linear(layer, "weight", x, layer.weight, layer.bias, silu=True)
    finally:
        packed_linear.enabled = True
    assert (fallback.double() - expected).abs().max() < tol
