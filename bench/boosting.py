"""Step cost of key terms (per-stream phrase boosting): 0, 10, 100, 1000 phrases per stream.

    python bench/boosting.py [--model small] [--batches 1,32] [--phrases 0,10,100,1000] [--repeats 20]

Full-size model with dummy weights. Every stream gets its own random phrase list (two or three random
words each, spelled with the model's tokenizer), so nothing is shared between streams. Per batch and
list size it warms the slots up (caches full), then times `Runner.step` over steady-state chunks and
prints the median step time, its overhead against no key terms, the time to compile one list, and
the pooled tree size (states, overridden scores).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from model_step import steady_step_times

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.loader import load_model


def phrase_list(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    word = lambda: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))  # noqa: E731
    return [" ".join(word() for _ in range(rng.randint(2, 3))) for _ in range(n)]


def time_steps(runner: Runner, batch: int, phrases: int, repeats: int) -> tuple[list[float], float]:
    """Step times with `phrases` key terms per stream, and the mean time to open a slot with its list."""
    slots = list(range(batch))
    compile_s = 0.0
    for s in slots:
        terms = phrase_list(phrases, seed=1000 * phrases + s) if phrases else None
        t0 = time.perf_counter()
        runner.open(s, terms)
        compile_s += time.perf_counter() - t0
    return steady_step_times(runner, slots, repeats), compile_s / batch

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--phrases", default="0,10,100,1000")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    sizes = [int(n) for n in args.phrases.split(",")]
    model = load_model(args.model, load_format="dummy")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, model {args.model}")
    print(f"{'batch':>6}{'phrases':>9}{'step ms':>10}{'p90 ms':>9}{'overhead':>10}{'compile ms':>12}"
          f"{'states':>9}{'entries':>10}")
    for b in batches:
        base = None
        for n in sizes:
            runner = Runner(model, b, device=args.device)
            times, compile_s = time_steps(runner, b, n, args.repeats)
            med = statistics.median(times) * 1000
            p90 = sorted(times)[int(0.9 * (len(times) - 1))] * 1000
            base = med if n == 0 or base is None else base
            trees = [t for t in runner.table.keyterms.trees if t is not None]
            states = sum(t.num_states for t in trees)
            entries = sum(len(t.tok) for t in trees)
            overhead = f"{100 * (med / base - 1):+.1f}%" if n else "-"
            print(f"{b:>6}{n:>9}{med:>10.2f}{p90:>9.2f}{overhead:>10}{compile_s * 1000:>12.1f}{states:>9}{entries:>10}",
                  flush=True)


if __name__ == "__main__":
    main()
