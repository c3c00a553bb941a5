"""Time one batched streaming step of the full-size models (dummy weights) at several batch sizes.

    python bench/model_step.py [--models small,large] [--batches 1,8,32,64] [--threads N]
        [--dtype float32|bfloat16|float16] [--att 70,1/70,6] [--device cuda] [--cuda-graphs]

For each model / att_context_size / batch it warms the slots up (so caches are full, as in a long
stream), then times `Runner.step` over steady-state chunks and prints the median step time and the
implied number of real-time streams: batch * chunk_ms / step_ms. By default the att_context_sizes
are the checkpoint's first and [70,1]. On CUDA every timed step ends in a device synchronize (the
step itself reads its tokens back once); `--cuda-graphs` replays the steady-state encoder step as
CUDA graphs, all captured before any step is timed (it prints which batch sizes were captured).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.loader import load_model, pseudo_speech


def time_steps(runner: Runner, batch: int, repeats: int) -> list[float]:
    slots = list(range(batch))
    for s in slots:
        runner.open(s)
    try:
        return steady_step_times(runner, slots, repeats)
    finally:
        for s in slots:
            runner.release(s)


def _sync(runner: Runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


def steady_step_times(runner: Runner, slots: list[int], repeats: int) -> list[float]:
    """Seconds of `repeats` steps over opened `slots`, after enough audio to fill the caches."""
    audio = pseudo_speech(60.0, seed=1)
    # First chunk plus enough steps to fill the 70-frame attention cache.
    warm = runner.first_frames * 160 + 199 + runner.chunk_samples * (70 // (runner.chunk_ms // runner.frame_ms) + 1)
    for s in slots:
        runner.push(s, audio[:warm])
    pos = warm
    while all(runner.ready(s) for s in slots):
        runner.step(slots)
    times = []
    for _ in range(repeats):
        chunk = audio[pos:pos + runner.chunk_samples]
        pos += runner.chunk_samples
        for s in slots:
            runner.push(s, chunk)
        _sync(runner)
        t0 = time.perf_counter()
        runner.step(slots)
        _sync(runner)
        times.append(time.perf_counter() - t0)
    return times

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="small,large")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--att", default="", help="att_context_sizes, e.g. 70,1/70,6 (default: the checkpoint's "
                                               "first and 70,1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cuda-graphs", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, dtype {args.dtype}, device {args.device}"
          f"{', CUDA graphs' if args.cuda_graphs else ''}")
    print(f"{'model':<8}{'att':>9}{'chunk':>7}{'batch':>7}{'step ms':>10}{'p90 ms':>9}{'RT streams':>12}")
    for name in args.models.split(","):
        model = load_model(name, load_format="dummy", dtype=args.dtype)
        sizes = [tuple(int(v) for v in a.split(",")) for a in args.att.split("/")] if args.att else \
            [model.config.encoder.att_context_sizes[0]]
        if not args.att and (70, 1) not in sizes:
            sizes.append((70, 1))
        for att in sizes:
            model.set_att_context_size(att)
            runner = Runner(model, max(batches), device=args.device, cuda_graphs=args.cuda_graphs)
            if args.cuda_graphs:
                t0 = time.perf_counter()
                captured = runner.prepare_graphs()
                print(f"# {name} {list(att)}: CUDA graphs captured for batches {captured} "
                      f"in {time.perf_counter() - t0:.1f} s", flush=True)
            for b in batches:
                times = time_steps(runner, b, args.repeats)
                med = statistics.median(times) * 1000
                p90 = float(np.percentile(times, 90)) * 1000
                print(f"{name:<8}{str(list(att)):>9}{runner.chunk_ms:>5}ms{b:>7}{med:>10.1f}{p90:>9.1f}"
                      f"{b * runner.chunk_ms / med:>12.1f}", flush=True)
            del runner
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
