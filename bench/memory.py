"""Memory: model weights, and per-stream state (the preallocated slot), for the full-size models.

    python bench/memory.py [--models small,large] [--dtype float32] [--slots 64]

Weights are the parameters; "packed" is the oneDNN copy of the linear weights (model/linear.py),
held besides them. Per-stream state is counted from the slot tensors themselves (encoder K/V rings, conv caches,
decoder state, mel context) and checked against the process RSS growth when `--slots` slots are
allocated and every slot has run a step (host-side audio buffers included).
"""
from __future__ import annotations

import argparse
import resource

import numpy as np
import torch

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.linear import packed_bytes
from parakeet_streaming.model.loader import load_model


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slot_bytes(runner: Runner) -> int:
    t = runner.table
    tensors = [t.enc.key, t.enc.value, t.enc.time, t.enc.frames, t.dec.h, t.dec.c, t.dec.g, t.mel_ctx]
    return sum(x.numel() * x.element_size() for x in tensors) // t.num_slots


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="small,large")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--slots", type=int, default=64)
    args = ap.parse_args()
    print(f"{'model':<7}{'att':>9}{'dtype':>10}{'weights MiB':>13}{'packed MiB':>12}"
          f"{'state/stream MiB':>18}{'RSS/stream MiB':>16}")
    for name in args.models.split(","):
        model = load_model(name, load_format="dummy", dtype=args.dtype)
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        warm = Runner(model, 1)  # one step packs the linear weights (model/linear.py) before we measure
        audio = np.zeros(warm.chunk_samples * 3, dtype=np.float32)
        warm.open(0)
        warm.push(0, audio)
        warm.step([0])
        del warm
        packed = packed_bytes(model) / 2**20
        before = rss_mib()
        runner = Runner(model, args.slots)
        with torch.inference_mode():
            for s in range(args.slots):
                runner.open(s)
                runner.push(s, audio)
            runner.step(list(range(args.slots)))
        grown = (rss_mib() - before) / args.slots
        att = list(model.config.encoder.att_context_sizes[0])
        per_slot = slot_bytes(runner) / 2**20
        print(f"{name:<7}{str(att):>9}{args.dtype:>10}{weights:>13.0f}{packed:>12.0f}{per_slot:>18.2f}{grown:>16.2f}")
        del runner, model


if __name__ == "__main__":
    main()
