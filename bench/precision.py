"""Accuracy of the lower-precision modes: token edit distance to float32 on the golden fixtures.

    python bench/precision.py

The golden models have random weights with a joint calibrated to sit near its decision boundaries,
so any perturbation (about 1% relative error in the encoder output for bfloat16) changes most
tokens; that says nothing about a trained model, whose decisions have wide margins. So each fixture
is also measured "sharpened": the joint's output layer is fitted (cross-entropy, a few hundred Adam
steps) to the float32 model's own greedy decisions on that audio, which gives it a trained model's
confident decisions while the encoder, the part the precision modes change, stays as it is. The guard
(tests/test_precision.py) holds the sharpened fixtures to <= 2% token edit distance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.loader import load_model, set_precision

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"
MODES = ("bfloat16", "float16")


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


def lookahead(ref: Path) -> int:
    return int(ref.stem.rsplit("_R", 1)[1])


def fixture_model(ref: Path) -> ASRModel:
    model = load_model(str(ref.parent / "model.nemo"))
    model.set_att_context_size(next(s for s in model.config.encoder.att_context_sizes if s[1] == lookahead(ref)))
    return model


def stream_tokens(model: ASRModel, samples: np.ndarray) -> list[int]:
    runner = Runner(model, 1)
    runner.open(0)
    runner.push(0, samples)
    runner.finish(0)
    tokens: list[int] = []
    while runner.ready(0):
        tokens += runner.step([0])[0].token_ids
    return tokens


def _decisions(model: ASRModel, samples: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the joint's output layer at every greedy decision on this audio, and the decisions."""
    out_layer = model.joint.joint_net[-1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = out_layer.register_forward_hook(lambda _m, inp, out: seen.append((inp[0].detach(), out.argmax(-1))))
    try:
        stream_tokens(model, samples)
    finally:
        hook.remove()
    return torch.cat([x for x, _ in seen]), torch.cat([y for _, y in seen])


def sharpen(model: ASRModel, samples: np.ndarray, rounds: int = 3, steps: int = 300) -> ASRModel:
    """Fit the joint's output layer to the model's own decisions (see the module docstring)."""
    out_layer = model.joint.joint_net[-1]
    xs, ys = [], []
    for _ in range(rounds):
        x, y = _decisions(model, samples)
        xs.append(x)
        ys.append(y)
        x_all, y_all = torch.cat(xs), torch.cat(ys)
        params = [out_layer.weight, out_layer.bias]
        opt = torch.optim.Adam(params, lr=0.01)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(x_all @ out_layer.weight.t() + out_layer.bias, y_all)
                loss.backward()
                opt.step()
    return model


def precision_report(sharpened: bool) -> list[dict]:
    rows = []
    for ref in sorted(GOLDEN.glob("*/ref_*_R*.npz")):
        samples = np.load(ref)["samples"]
        base = fixture_model(ref)
        if sharpened:
            sharpen(base, samples)
        state = {k: v.clone() for k, v in base.state_dict().items()}
        reference = stream_tokens(base, samples)
        row = {"fixture": f"{ref.parent.name}/{ref.stem}", "tokens": len(reference)}
        for mode in MODES:
            model = fixture_model(ref)
            model.load_state_dict(state)
            row[mode] = edit_distance(reference, stream_tokens(set_precision(model, mode), samples))
        rows.append(row)
    return rows


def main() -> None:
    for sharpened in (False, True):
        print(f"\n{'sharpened joint' if sharpened else 'golden fixtures as saved (random weights)'}")
        print(f"{'fixture':<28}{'tokens':>7}" + "".join(f"{m + ' edits':>18}" for m in MODES))
        total = {m: 0 for m in MODES}
        n = 0
        for row in precision_report(sharpened):
            n += row["tokens"]
            cells = ""
            for m in MODES:
                total[m] += row[m]
                cells += f"{row[m]:>8} ({100 * row[m] / max(1, row['tokens']):5.1f}%)"
            print(f"{row['fixture']:<28}{row['tokens']:>7}{cells}", flush=True)
        print(f"{'all':<28}{n:>7}" + "".join(f"{total[m]:>8} ({100 * total[m] / max(1, n):5.1f}%)" for m in MODES))


if __name__ == "__main__":
    main()
