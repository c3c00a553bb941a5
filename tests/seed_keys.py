"""The seed project's safetensors key names, written by tests (model/loader.py reads them)."""
from __future__ import annotations

import torch


def to_seed_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NeMo names -> the seed's: q, k, v fused into qkv, `predictor.`/`joiner.` prefixes, no `.lstm` level."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("preprocessor."):
            continue
        if key.endswith("self_attn.linear_q.weight"):
            stem = key.removesuffix("linear_q.weight")
            out[stem + "qkv.weight"] = torch.cat(
                [state[stem + f"linear_{p}.weight"] for p in "qkv"], dim=0
            ).contiguous()
            continue
        if key.endswith(("self_attn.linear_k.weight", "self_attn.linear_v.weight")):
            continue
        if key.startswith("decoder."):
            key = "predictor." + key.removeprefix("decoder.").replace("dec_rnn.lstm.", "dec_rnn.")
        elif key.startswith("joint."):
            key = "joiner." + key.removeprefix("joint.")
        out[key] = value.contiguous()
    return out
