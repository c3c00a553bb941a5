"""Side by side in one run: our batched streaming step vs NeMo's, same architecture, same batches.

    bash bench/setup_nemo_venv.sh            # once: NeMo in its own venv (.nemo-venv), never a runtime dep
    python bench/compare_nemo.py [--nemo-python .nemo-venv/bin/python] [--batches 1,16,32]

Ours: `Runner.step` (mel front end + encoder + greedy decoding, dummy weights). NeMo:
`encoder.cache_aware_stream_step` and `conformer_stream_step` (encoder + greedy) on ready mel
chunks (bench/nemo_step.py). Both with caches full (steady state). Prints step times, real-time
streams (batch * chunk / step) and the ratio of real-time streams, ours / NeMo's encoder+greedy.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import torch
from model_step import time_steps

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.loader import load_model

HERE = Path(__file__).resolve().parent


def ours(model_name: str, att: tuple[int, int], batches: list[int], repeats: int, dtype: str) -> dict[int, float]:
    model = load_model(model_name, load_format="dummy", att_context_size=att, dtype=dtype)
    runner = Runner(model, max(batches))
    return {b: statistics.median(time_steps(runner, b, repeats)) * 1000 for b in batches}


def nemo(python: str, model_name: str, att: tuple[int, int], batches: list[int], repeats: int) -> dict:
    cmd = [python, str(HERE / "nemo_step.py"), "--model", model_name, "--att", f"{att[0]},{att[1]}",
           "--batches", ",".join(map(str, batches)), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {(r["batch"], r["part"]): r["step_ms"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nemo-python", default=str(HERE.parent / ".nemo-venv" / "bin" / "python"))
    ap.add_argument("--model", default="small")
    ap.add_argument("--att", default="70,1")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    att = tuple(int(v) for v in args.att.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    chunk_ms = 80 * (att[1] + 1)
    mine = ours(args.model, att, batches, args.repeats, args.dtype)
    theirs = nemo(args.nemo_python, args.model, att, batches, args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model {args.model} {list(att)}, "
          f"chunk {chunk_ms} ms, ours in {args.dtype}")
    print(f"{'batch':>5}{'ours ms':>10}{'NeMo enc ms':>13}{'NeMo enc+greedy ms':>20}"
          f"{'ours RT':>9}{'NeMo RT':>9}{'ratio':>7}")
    for b in batches:
        o, ne, ng = mine[b], theirs[(b, "encoder")], theirs[(b, "encoder+greedy")]
        rt_o, rt_n = b * chunk_ms / o, b * chunk_ms / ng
        print(f"{b:>5}{o:>10.1f}{ne:>13.1f}{ng:>20.1f}{rt_o:>9.1f}{rt_n:>9.1f}{rt_o / rt_n:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
