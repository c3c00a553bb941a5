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
  in the steady part of the calibration audio; `<EOU>` trades places with a token emitted about
  `eou_share` of the time.

Only the last step needs the model to run (the calibration audio through the encoder, then greedy
decoding at each threshold tried); its result is a few vectors and numbers (`Fitted`), so it is
computed once per architecture, seed and version of this design and kept in `cache_dir()`. Later
starts apply the cached values to the same random weights: the same model bit for bit, in seconds.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.frontend import SampleBuffer

log = logging.getLogger(__name__)

BRANCH_DAMPING = 0.02
CODE_SUPPORT = 8  # non-zero entries of a token's code
SUPPRESSION = 10.0  # how far a remembered label pushes its code below the frame's projection
CODE_SCALE = 0.1  # embedding scale: keeps the LSTM's tanh nearly linear
FORGET_BIAS = 2.0  # sigmoid(2) = 0.88: a label's suppression fades over the next few labels
CALIBRATION_SECONDS = 16.0
STEADY_FROM_FRAME = 50  # the threshold is fitted on frames after the first 4 s


@dataclass(frozen=True)
class Fitted:
    """What the calibration run decides: the joint's encoder projection (divide its weight rows by
    `spread`, then set its bias), the blank logit, and the token that swaps places with <EOU>."""

    spread: torch.Tensor
    bias: torch.Tensor
    blank_logit: float
    eou_partner: int | None


@torch.no_grad()
def design_decoding(model: ASRModel, seed: int = 0, emit_rate: float = 0.45, eou_share: float = 0.08,
                    cache: Path | None = None) -> None:
    """Adjust a model randomised with `seed` in place (see the module docstring). The fitted values
    come from `cache` (default: `cache_dir()`) when they are there, else they are computed and saved."""
    folder = cache_dir() if cache is None else cache
    path = folder / f"{_design_key(model, seed, emit_rate, eou_share)}.pt"
    _damp_branches(model)
    _remembering_predictor(model, _token_codes(model, seed))
    fitted = _read(path)
    if fitted is not None:
        _apply(model, fitted)
        return
    log.info("fitting the dummy weights' decoding (once: the result is kept in %s)", folder)
    _write(path, _fit(model, pseudo_speech(CALIBRATION_SECONDS, seed), emit_rate, eou_share))


def cache_dir() -> Path:
    """$PARAKEET_CACHE_DIR, else $XDG_CACHE_HOME/parakeet-streaming, else ~/.cache/parakeet-streaming;
    the dummy designs live in its `dummy` folder."""
    root = os.environ.get("PARAKEET_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "parakeet-streaming")
    return Path(root).expanduser() / "dummy"


def pseudo_speech(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Deterministic noise bursts with pauses: enough structure to calibrate random weights."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = (np.sin(2 * np.pi * 1.7 * t) > -0.2).astype(np.float32)
    voiced = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 5 * t))
    return ((voiced + 0.05 * rng.standard_normal(n)) * envelope).astype(np.float32)


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


# ---- the calibration run ---------------------------------------------------------------------

def _fit(model: ASRModel, samples: np.ndarray, emit_rate: float, eou_share: float) -> Fitted:
    """Calibrate on `samples`, adjusting the model as `_apply` does with the values returned."""
    f = encoder_frames(model, samples).float()
    g = f @ model.joint.enc.weight.float().T
    spread = g.std(0).clamp_min(1e-6)
    _apply(model, Fitted(spread, -(g.mean(0) / spread), 0.0, None))
    steady = f[STEADY_FROM_FRAME:].unsqueeze(0)
    length = torch.tensor([steady.size(1)])
    blank_logit = _fit_blank_logit(model, steady, length, emit_rate)
    model.joint.joint_net[2].bias[model.tokenizer.blank_id] = blank_logit
    eou = model.tokenizer.eou_id
    partner = None if eou is None else eou_partner(model, steady, length, eou, eou_share)
    if partner is not None:
        swap_tokens(model, partner, eou)
    return Fitted(spread, model.joint.enc.bias.clone(), blank_logit, partner)


def _apply(model: ASRModel, fitted: Fitted) -> None:
    """Set what `_fit` decided (on a model adjusted up to the calibration run)."""
    proj, out = model.joint.enc, model.joint.joint_net[2]
    proj.weight.div_(fitted.spread.unsqueeze(1).to(proj.weight.dtype))
    proj.bias.copy_(fitted.bias)
    out.bias[model.tokenizer.blank_id] = fitted.blank_logit
    if fitted.eou_partner is not None:
        swap_tokens(model, fitted.eou_partner, model.tokenizer.eou_id)


def encoder_frames(model: ASRModel, samples: np.ndarray) -> torch.Tensor:
    """The encoder output of `samples` as (T, D): the utterance's mel frames through the (causal)
    subsampling at once, then the encoder's layers one streaming chunk at a time with their caches."""
    feat = model.config.features
    audio = SampleBuffer(feat, model.preprocessor.reach())
    audio.push(samples)
    audio.finished = True
    n = audio.frames_available()
    dtype = next(model.encoder.parameters()).dtype
    mel = model.preprocessor.frames(torch.from_numpy(audio.segment(0, n)).unsqueeze(0))
    sub, sub_len = model.encoder.pre_encode(mel.to(dtype), torch.tensor([n]))
    state = model.encoder.initial_state(1, model.chunk_frames, dtype=dtype)
    slot = torch.tensor([0])
    chunks = [sub[:, t:t + model.chunk_frames] for t in range(0, int(sub_len[0]), model.chunk_frames)]
    return torch.cat([model.encoder(c, torch.tensor([c.size(1)]), state, slot)[0] for c in chunks])


def _fit_blank_logit(model: ASRModel, enc: torch.Tensor, length: torch.Tensor, emit_rate: float) -> float:
    """The blank logit (a constant) at which greedy decoding emits about `emit_rate` tokens per frame."""
    bias, blank = model.joint.joint_net[2].bias, model.tokenizer.blank_id

    def rate(threshold: float) -> float:
        bias[blank] = threshold
        return tokens_per_frame(model, enc, length)

    lo, hi = 0.0, 16.0
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) >= emit_rate else (lo, mid)
    return lo


def tokens_per_frame(model: ASRModel, enc: torch.Tensor, length: torch.Tensor) -> float:
    """Tokens greedy decoding emits per frame on encoder output `enc` (1, T, D), from a fresh state."""
    state = model.greedy.initial_state(1, enc.device, enc.dtype)
    emitted, _ = model.greedy.decode(enc, length, state)
    return len(emitted.tokens[0]) / enc.size(1)


def eou_partner(model: ASRModel, enc: torch.Tensor, length: torch.Tensor, eou: int, share: float) -> int | None:
    """The emitted token whose share of emissions is nearest `share`, to swap with <EOU> so that
    <EOU> appears without changing the decoding dynamics (None: nothing to swap)."""
    em, _ = model.greedy.decode(enc, length, model.greedy.initial_state(1, enc.device, enc.dtype))
    tokens = em.tokens[0]
    if not tokens:
        return None
    counts = {t: tokens.count(t) / len(tokens) for t in range(model.tokenizer.vocab_size)}
    pick = min(counts, key=lambda t: (abs(counts[t] - share), t != eou))
    return None if pick == eou else pick


def swap_tokens(model: ASRModel, a: int, b: int) -> None:
    """Exchange two tokens' joint output rows and embedding rows."""
    out = model.joint.joint_net[2]
    for param in (out.weight, out.bias, model.decoder.prediction.embed.weight):
        param[[a, b]] = param[[b, a]].clone()


# ---- the cache -------------------------------------------------------------------------------

def _design_key(model: ASRModel, seed: int, emit_rate: float, eou_share: float) -> str:
    """Everything the fitted values depend on: the architecture, the random weights (a sample of
    them), this file, torch's version and the calibration's settings."""
    h = hashlib.sha256()
    h.update(repr((model.config, seed, emit_rate, eou_share, torch.__version__)).encode())
    h.update(Path(__file__).read_bytes())
    for p in (model.joint.enc.weight, model.encoder.layers[-1].feed_forward2.linear1.weight):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def _read(path: Path) -> Fitted | None:
    try:
        raw = torch.load(path, weights_only=True)
        partner = int(raw["eou_partner"])
        return Fitted(raw["spread"], raw["bias"], float(raw["blank_logit"]), None if partner < 0 else partner)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged or foreign file: compute again
        log.warning("ignoring the dummy design cache %s: %s", path, exc)
        return None


def _write(path: Path, fitted: Fitted) -> None:
    raw = {"spread": fitted.spread, "bias": fitted.bias, "blank_logit": torch.tensor(fitted.blank_logit),
           "eou_partner": torch.tensor(-1 if fitted.eou_partner is None else fitted.eou_partner)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            torch.save(raw, tmp)
        os.replace(tmp.name, path)  # atomic: servers starting together never read half a file
    except OSError as exc:
        log.warning("cannot keep the dummy design in %s (%s); it will be fitted again next start", path, exc)
