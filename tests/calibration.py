"""Calibration for the tests' tiny random models (conftest.make_tiny_model and friends): random
weights alone emit `max_symbols` tokens on every frame; this shifts the joint so that they decode
like a real model. Test scaffolding only: `--load-format dummy` has its own design (model/dummy.py)."""
from __future__ import annotations

import numpy as np
import torch

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.dummy import eou_partner, swap_tokens, tokens_per_frame


@torch.no_grad()
def calibrate_joint_bias(model: ASRModel, samples: np.ndarray, emit_rate: float = 0.3,
                         eou_rate: float = 0.08) -> None:
    """Shift the joint's output bias so random weights decode like a real model: blank wins on
    most frames (about `emit_rate` of frames emit), and `<EOU>` is sometimes the emitted token."""
    frames = streamed_encoder_frames(model, samples)
    _spread_encoder_projection(model, frames)
    bias = model.joint.joint_net[2].bias
    blank, eou = model.tokenizer.blank_id, model.tokenizer.eou_id
    # The largest blank boost that still leaves greedy decoding of the calibration audio emitting
    # at least emit_rate tokens per frame (random weights switch sharply from "always" to "never").
    enc_out = frames.unsqueeze(0)
    length = torch.tensor([enc_out.size(1)])
    base = float(bias[blank])

    def rate(shift: float) -> float:
        bias[blank] = base + shift
        return tokens_per_frame(model, enc_out, length)

    lo, hi = 0.0, 1.0
    while rate(hi) >= emit_rate and hi < 1e4:
        lo, hi = hi, hi * 2
    for _ in range(10):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) >= emit_rate else (lo, mid)
    bias[blank] = base + lo
    if eou is not None:
        partner = eou_partner(model, enc_out, length, eou, eou_rate)
        if partner is not None:
            swap_tokens(model, partner, eou)


def streamed_encoder_frames(model: ASRModel, samples: np.ndarray) -> torch.Tensor:
    """The encoder output of `samples` as the engine streams it through one slot, as (T, D)."""
    frames: list[torch.Tensor] = []

    def keep(_module, args, out) -> None:
        frames.append(out[0, : int(args[1][0])].clone())

    hook = model.encoder.register_forward_hook(keep)
    try:
        runner = Runner(model, 1)
        runner.open(0)
        runner.push(0, samples)
        runner.finish(0)
        while runner.ready(0):
            runner.step([0])
    finally:
        hook.remove()
    return torch.cat(frames)


def _spread_encoder_projection(model: ASRModel, enc: torch.Tensor, gain: float = 20.0) -> None:
    """Random encoders give frames that differ little from each other, so one token wins everywhere.
    Centre the joint's encoder projection on the calibration audio and scale it to `gain` times the
    spread of the predictor projection, so that which token wins depends on the frame."""
    proj = model.joint.enc
    f = enc.float() @ proj.weight.float().T
    labels = torch.arange(model.tokenizer.blank_id + 1)
    cfg = model.config.decoder
    zeros = torch.zeros(cfg.pred_rnn_layers, labels.numel(), cfg.pred_hidden)
    g = model.joint.pred(model.decoder.step(labels, zeros, zeros)[0]).float()
    scale = gain * float(g.std(0).mean()) / max(float(f.std(0).mean()), 1e-6)
    proj.weight.mul_(scale)
    proj.bias.copy_(-(f.mean(0) * scale))
