"""Weights for `--load-format dummy` that decode like a trained model, at the real model's cost.

Random weights alone decode badly for benchmarking: a random encoder's output drifts over a long
stream, so greedy decoding swings between emitting nothing and emitting `max_symbols` tokens on
every frame. Here the random model is adjusted, without changing any shape or any amount of work:

- The residual branches of the conformer layers are damped, so the encoder output follows the
  input and stays statistically steady over the whole stream.
- The prediction network remembers its recent labels: each token has a sparse code; the LSTM
  (recurrence off; the first layer's forget gate partly open) passes the codes of the last few labels through, and
  the joint subtracts them from the frame's projection. So a token just emitted is suppressed, as a
  trained model does not repeat the sound it has just transcribed.
- The joint scores each token by its code against the frame's projection (centred, unit spread),
  and the blank logit is a threshold, searched so that about `emit_rate` tokens per frame are emitted
  in the steady part of the calibration audio.
"""
from __future__ import annotations

import numpy as np
import torch

from parakeet_streaming.model.asr import ASRModel

BRANCH_DAMPING = 0.02
CODE_SUPPORT = 8  # non-zero entries of a token's code
SUPPRESSION = 10.0  # how far a remembered label pushes its code below the frame's projection
CODE_SCALE = 0.1  # embedding scale: keeps the LSTM's tanh nearly linear
FORGET_BIAS = 2.0  # sigmoid(2) = 0.88: a label's suppression fades over the next few labels
STEADY_FROM_FRAME = 50  # the threshold is fitted on frames after the first 4 s


@torch.no_grad()
def design_decoding(model: ASRModel, samples: np.ndarray, emit_rate: float = 0.45, seed: int = 0) -> torch.Tensor:
    """Adjust a randomly initialised model in place (see the module docstring); returns the encoder
    frames of the steady part of `samples`, which the threshold was fitted on."""
    _damp_branches(model)
    codes = _token_codes(model, seed)
    _remembering_predictor(model, codes)
    frames = encoder_frames(model, samples)
    _scale_frame_projection(model, frames)
    steady = frames[STEADY_FROM_FRAME:]
    _fit_blank_threshold(model, steady, emit_rate)
    return steady


def _damp_branches(model: ASRModel) -> None:
    for layer in model.encoder.layers:
        for out in (layer.feed_forward1.linear2, layer.feed_forward2.linear2, layer.self_attn.linear_out,
                    layer.conv.pointwise_conv2):
            out.weight.mul_(BRANCH_DAMPING)
            if out.bias is not None:
                out.bias.mul_(BRANCH_DAMPING)


def _token_codes(model: ASRModel, seed: int) -> torch.Tensor:
    """(V, H) sparse non-negative unit vectors, one per token, in the prediction network's width."""
    vocab, hidden = model.config.decoder.vocab_size, model.config.decoder.pred_hidden
    gen = torch.Generator().manual_seed(seed)
    support = torch.rand(vocab, hidden, generator=gen).argsort(dim=1)[:, :CODE_SUPPORT]
    return torch.zeros(vocab, hidden).scatter_(1, support, CODE_SUPPORT ** -0.5)


def _remembering_predictor(model: ASRModel, codes: torch.Tensor) -> None:
    cfg, joint = model.config.decoder, model.joint
    vocab, hidden, width = cfg.vocab_size, cfg.pred_hidden, cfg.joint_hidden
    embed = model.decoder.prediction.embed.weight
    embed.zero_()
    embed[:vocab] = CODE_SCALE * codes  # the blank (SOS) row stays zero: nothing remembered
    lstm = model.decoder.prediction.dec_rnn.lstm
    for layer in range(lstm.num_layers):
        for name in (f"weight_hh_l{layer}", f"bias_hh_l{layer}", f"weight_ih_l{layer}", f"bias_ih_l{layer}"):
            getattr(lstm, name).zero_()
        w_ih, b_ih = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"bias_ih_l{layer}")
        w_ih[2 * hidden:3 * hidden] = torch.eye(hidden, w_ih.size(1))  # cell input = the code
        b_ih[:hidden] = 20.0  # input gate open
        b_ih[hidden:2 * hidden] = FORGET_BIAS if layer == 0 else -20.0  # later layers only pass it on
        b_ih[3 * hidden:] = 20.0  # output gate open
    to_joint = torch.zeros(width, hidden)  # each predictor unit feeds one joint unit
    to_joint[torch.arange(hidden) % width, torch.arange(hidden)] = 1.0
    joint.pred.weight.copy_(-(SUPPRESSION / CODE_SCALE) * to_joint)
    joint.pred.bias.zero_()
    out = joint.joint_net[2]
    out.weight.zero_()
    out.weight[:vocab] = codes @ to_joint.T
    out.bias.zero_()


def encoder_frames(model: ASRModel, samples: np.ndarray) -> torch.Tensor:
    """The encoder output of `samples` streamed through one slot, chunk by chunk, as (T, D)."""
    from parakeet_streaming.engine.runner import Runner

    runner = Runner(model, 1)
    runner.open(0)
    runner.push(0, samples)
    runner.finish(0)
    frames = []
    while runner.ready(0):
        runner.step([0])
        if runner.last_encoder_output is not None:
            _, out, t_len = runner.last_encoder_output
            frames.append(out[0, : int(t_len[0])])
    return torch.cat(frames)


def _scale_frame_projection(model: ASRModel, frames: torch.Tensor) -> None:
    proj = model.joint.enc
    f = frames.float() @ proj.weight.float().T
    spread = f.std(0).clamp_min(1e-6)
    proj.weight.div_(spread.unsqueeze(1).to(proj.weight.dtype))
    proj.bias.copy_(-(f.mean(0) / spread))


def _fit_blank_threshold(model: ASRModel, frames: torch.Tensor, emit_rate: float) -> None:
    """The blank logit (a constant) at which greedy decoding emits about `emit_rate` tokens per frame."""
    bias, blank = model.joint.joint_net[2].bias, model.tokenizer.blank_id
    enc, length = frames.unsqueeze(0), torch.tensor([frames.size(0)])

    def rate(threshold: float) -> float:
        bias[blank] = threshold
        return tokens_per_frame(model, enc, length)

    lo, hi = 0.0, 16.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) >= emit_rate else (lo, mid)
    bias[blank] = lo


def tokens_per_frame(model: ASRModel, enc: torch.Tensor, length: torch.Tensor) -> float:
    """Tokens greedy decoding emits per frame on encoder output `enc` (1, T, D), from a fresh state."""
    state = model.greedy.initial_state(1, enc.device, enc.dtype)
    emitted, _ = model.greedy.decode(enc, length, state)
    return len(emitted.tokens[0]) / enc.size(1)
