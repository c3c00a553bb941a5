"""F.linear against the packed oneDNN linear (model/linear.py) for the shapes of a streaming step.

    python bench/linear.py [--rows 2,32,64] [--threads N]

Rows = streams x encoder frames per chunk (2 for att_context_size [70,1]). Prints microseconds
per call for PyTorch's F.linear and for the prepacked weight, and the ratio.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from parakeet_streaming.model import linear as packed

SHAPES = [(512, 2048), (2048, 512), (512, 512), (640, 2560)]  # (in, out): FF up/down, attention, LSTM


def per_call_us(fn: Callable[[], torch.Tensor], repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="2,32,64")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'dtype':<10}{'rows':>6}{'in x out':>12}{'F.linear us':>13}{'packed us':>11}{'speed-up':>10}")
    for dtype in packed.PACKED_DTYPES:
        for rows in (int(r) for r in args.rows.split(",")):
            for n_in, n_out in SHAPES:
                layer = packed.Linear(n_in, n_out).to(dtype)
                x = torch.randn(rows, n_in).to(dtype)
                with torch.inference_mode():
                    plain = per_call_us(lambda: F.linear(x, layer.weight, layer.bias))
                    fast = per_call_us(lambda: layer(x))
                print(f"{str(dtype).removeprefix('torch.'):<10}{rows:>6}{f'{n_in}x{n_out}':>12}{plain:>13.1f}"
                      f"{fast:>11.1f}{plain / fast:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
