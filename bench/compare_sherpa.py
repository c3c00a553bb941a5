"""Side by side in one run: our streaming step vs sherpa-onnx's online recognizer, same dummy weights.

    .nemo-venv/bin/python bench/export_sherpa_onnx.py          # once: ONNX files in /work/sherpa-export
    python3 -m venv /work/venv-sherpa && /work/venv-sherpa/bin/pip install sherpa-onnx numpy   # once
    python bench/compare_sherpa.py [--streams 1,8,16,32] [--seconds 20] [--threads 2]

Every configuration decodes N streams of the same audio (bench/load.py's pseudo speech), fed the
way a busy server sees it: each round appends one chunk of audio to every stream, then decodes every
stream that has a chunk ready, in one batched call, until none is ready; at the end the streams are
finished and decoded out. Ours: `Runner.step` (mel front end + encoder + greedy) in float32 and
bfloat16, in this process. sherpa-onnx: `OnlineRecognizer.decode_streams` (the batched encoder,
then greedy per stream) on the ONNX export, in a child process of the venv that has sherpa-onnx
(its feature extraction runs in `accept_waveform`, inside the wall time): fp32, int8 (all three
files, as its releases) and int8enc (the encoder only: the int8 joiner moves the dummy joint's
decisions, so that it emits more tokens). Both with --threads intra-op threads, one after the other.

Per configuration: real-time streams = N x audio seconds / wall seconds; the median step (one
batched call of all N streams, after the attention cache is full) and the real-time streams it
implies (N x chunk / step); the tokens stream 0 got, whether all N streams got the same, and their
agreement with ours in float32: 1 - edits / tokens, and the share of tokens both emit (order
ignored). Reported, not asserted: the network is the same (bench/export_sherpa_onnx.py checks it to
~1e-5), but sherpa-onnx's input is not. Its mel (kaldi-native-fbank) has frames centred 80 samples
later and a higher log floor in digital silence (log of float epsilon vs log(2^-24)); it starts at
our second chunk (its first window is 25 frames) and drops a final partial chunk; and the dummy
weights' greedy decoding is chaotic (each token suppresses the next few), so any change of input
reshuffles the tokens: ours on the same audio with other noise, or 80 samples later, shares only
~55-65% of them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

SAMPLE_RATE = 16000
WARM_SECONDS = 1.0  # decoded once per configuration and N before the timed run


def decode_rounds(n: int, audio: np.ndarray, chunk: int, push: Callable[[int, np.ndarray], None],
                  ready: Callable[[], list[int]], step: Callable[[list[int]], None],
                  finish: Callable[[], None]) -> dict[str, Any]:
    """Feed `audio` to `n` streams one chunk per round, decoding what is ready after each round."""
    steps: list[tuple[int, float]] = []

    def drain() -> None:
        while batch := ready():
            t0 = time.perf_counter()
            step(batch)
            steps.append((len(batch), time.perf_counter() - t0))

    start = time.perf_counter()
    for pos in range(0, len(audio), chunk):
        piece = audio[pos:pos + chunk]
        for s in range(n):
            push(s, piece)
        drain()
    finish()
    drain()
    return {"wall_s": time.perf_counter() - start, "steps": steps}


def summarize(name: str, n: int, audio_s: float, chunk_ms: int, warm_steps: int, run: dict[str, Any],
              tokens: list[list[int]]) -> dict[str, Any]:
    full = [dt for i, (b, dt) in enumerate(run["steps"]) if b == n and i >= warm_steps]
    step_ms = 1000 * statistics.median(full) if full else float("nan")
    return {"config": name, "streams": n, "audio_s": audio_s, "wall_s": run["wall_s"],
            "rt_streams": n * audio_s / run["wall_s"], "steps": len(run["steps"]), "step_ms": step_ms,
            "step_rt_streams": n * chunk_ms / step_ms, "tokens": tokens[0],
            "streams_agree": all(t == tokens[0] for t in tokens)}


# ---- sherpa-onnx: a child process in the venv that has it (no torch there) ---------------------

def sherpa_worker(args: argparse.Namespace) -> None:
    import sherpa_onnx

    # int8: all three files quantized, as sherpa-onnx's releases; int8enc: the encoder only
    export = Path(args.export)
    enc_suffix = ".int8" if args.precision in ("int8", "int8enc") else ""
    suffix = ".int8" if args.precision == "int8" else ""
    audio = np.load(args.audio)
    symbols = {}
    for line in (export / "tokens.txt").read_text(encoding="utf-8").splitlines():
        piece, idx = line.split()
        symbols[piece] = int(idx)
    rec = sherpa_onnx.OnlineRecognizer.from_transducer(
        tokens=str(export / "tokens.txt"), encoder=str(export / f"encoder{enc_suffix}.onnx"),
        decoder=str(export / f"decoder{suffix}.onnx"), joiner=str(export / f"joiner{suffix}.onnx"),
        num_threads=args.threads, sample_rate=SAMPLE_RATE, feature_dim=128, decoding_method="greedy_search",
        provider="cpu")
    for n in (int(v) for v in args.streams.split(",")):
        for seconds in (WARM_SECONDS, len(audio) / SAMPLE_RATE):
            streams = [rec.create_stream() for _ in range(n)]
            run = decode_rounds(
                n, audio[:int(seconds * SAMPLE_RATE)], args.chunk_samples,
                push=lambda s, piece: streams[s].accept_waveform(SAMPLE_RATE, piece),
                ready=lambda: [s for s in streams if rec.is_ready(s)],
                step=rec.decode_streams,
                finish=lambda: [s.input_finished() for s in streams])
        # sherpa-onnx writes a word-start piece's "\u2581" as a space
        tokens = [[symbols["\u2581" + t[1:] if t.startswith(" ") else t] for t in rec.get_result_all(s).tokens]
                  for s in streams]
        print(json.dumps({"run": {"wall_s": run["wall_s"], "steps": run["steps"]}, "tokens": tokens}), flush=True)


def sherpa(args: argparse.Namespace, precision: str, audio_file: str, streams: list[int]) -> list[dict[str, Any]]:
    cmd = [args.sherpa_python, str(Path(__file__).resolve()), "--worker", "--precision", precision,
           "--export", args.export, "--audio", audio_file, "--streams", ",".join(map(str, streams)),
           "--threads", str(args.threads), "--chunk-samples", str(args.chunk_samples)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sherpa-onnx ({precision}) failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


# ---- ours ------------------------------------------------------------------------------------

def ours(args: argparse.Namespace, dtype: str, audio: np.ndarray, streams: list[int]) -> list[dict[str, Any]]:
    import torch  # here: the sherpa-onnx worker's venv has no torch

    from parakeet_streaming.engine.runner import Runner
    from parakeet_streaming.model.loader import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, load_format="dummy", att_context_size=args.att, dtype=dtype)
    runner = Runner(model, max(streams))
    results = []
    for n in streams:
        for seconds in (WARM_SECONDS, len(audio) / SAMPLE_RATE):
            for s in range(n):
                runner.open(s)
            emitted: list[list[int]] = [[] for _ in range(n)]

            def step(batch: list[int]) -> None:
                for out in runner.step(batch):
                    emitted[out.slot] += out.token_ids

            run = decode_rounds(
                n, audio[:int(seconds * SAMPLE_RATE)], args.chunk_samples, push=runner.push,
                ready=lambda: [s for s in range(n) if runner.ready(s)], step=step,
                finish=lambda: [runner.finish(s) for s in range(n)])
            for s in range(n):
                runner.release(s)
        results.append({"run": run, "tokens": emitted})
    return results


# ---- comparison ------------------------------------------------------------------------------

def agreement(ref: list[int], hyp: list[int], unk: int = 0) -> tuple[float, float]:
    """(1 - token edits / reference tokens, shared tokens counted as a multiset / the longer
    sequence), with <unk> dropped (sherpa-onnx leaves it out of its results). The second ignores
    order: the dummy weights emit ~2 tokens per emitting frame in a fragile order."""
    from precision import edit_distance  # here: precision imports torch, which the sherpa worker's venv lacks
    ref, hyp = [t for t in ref if t != unk], [t for t in hyp if t != unk]
    shared = sum((Counter(ref) & Counter(hyp)).values())
    return 1.0 - edit_distance(ref, hyp) / max(len(ref), 1), shared / max(len(ref), len(hyp), 1)


def check_export(args: argparse.Namespace, chunk_ms: int) -> dict[str, Any]:
    """The export's chunk and attention context are ours (bench/export_sherpa_onnx.py's record)."""
    path = Path(args.export) / "export.json"
    if not path.is_file():
        raise SystemExit(f"no export in {args.export} (run: .nemo-venv/bin/python bench/export_sherpa_onnx.py "
                         f"--model {args.model} --att {args.att[0]},{args.att[1]})")
    record = json.loads(path.read_text())
    meta = record["metadata"]
    if tuple(record["att_context_size"]) != args.att or int(meta["chunk_size_ms"]) != chunk_ms:
        raise SystemExit(f"{args.export} is att_context_size {record['att_context_size']}, "
                         f"{meta['chunk_size_ms']} ms chunks; this run is {list(args.att)}, {chunk_ms} ms "
                         "(export again with --att)")
    return meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--att", default="70,1")
    ap.add_argument("--export", default="", help="default: /work/sherpa-export/<model>-<L>-<R>")
    ap.add_argument("--sherpa-python", default="/work/venv-sherpa/bin/python")
    ap.add_argument("--streams", default="1,8,16,32")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", default="ours-float32,ours-bfloat16,sherpa-fp32,sherpa-int8,sherpa-int8enc",
                    help="sherpa-int8: all three files int8, as its releases; sherpa-int8enc: the encoder only")
    ap.add_argument("--json", default="", help="also write every result (with tokens) to this file")
    # the sherpa-onnx child process
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--audio", default="", help=argparse.SUPPRESS)
    ap.add_argument("--chunk-samples", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.att = tuple(int(v) for v in args.att.split(","))
    if args.worker:
        sherpa_worker(args)
        return
    args.export = args.export or f"/work/sherpa-export/{args.model}-{args.att[0]}-{args.att[1]}"
    from parakeet_streaming.model.dummy import pseudo_speech

    chunk_ms = 80 * (args.att[1] + 1)  # 8x subsampling of 10 ms frames
    args.chunk_samples = SAMPLE_RATE * chunk_ms // 1000
    warm_steps = args.att[0] // (args.att[1] + 1) + 1  # batched steps before the attention cache is full
    meta = check_export(args, chunk_ms)
    if any(c.startswith("sherpa-") for c in args.configs.split(",")) and not Path(args.sherpa_python).is_file():
        raise SystemExit(f"{args.sherpa_python} does not exist (make it: python3 -m venv /work/venv-sherpa && "
                         "/work/venv-sherpa/bin/pip install sherpa-onnx numpy; or pass --sherpa-python)")
    streams = [int(v) for v in args.streams.split(",")]
    audio = pseudo_speech(args.seconds, seed=1)
    print(f"model {args.model} {list(args.att)}, chunk {chunk_ms} ms (sherpa-onnx window {meta['window_size']} / "
          f"shift {meta['chunk_shift']} mel frames), {args.seconds:g} s per stream, {args.threads} threads",
          flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        audio_file = str(Path(tmp) / "audio.npy")
        np.save(audio_file, audio)
        for config in args.configs.split(","):
            impl, precision = config.split("-", 1)
            raw = ours(args, precision, audio, streams) if impl == "ours" else sherpa(args, precision, audio_file, streams)
            rows += [summarize(config, n, args.seconds, chunk_ms, warm_steps, r["run"], r["tokens"])
                     for n, r in zip(streams, raw)]
    ref = {r["streams"]: r["tokens"] for r in rows if r["config"] == "ours-float32"}
    print(f"{'config':<15}{'N':>4}{'wall s':>9}{'RT streams':>12}{'step ms':>9}{'step RT':>9}"
          f"{'tokens':>8}{'edit agree':>12}{'bag agree':>11}  same in all N")
    for r in rows:
        edit, bag = agreement(ref[r["streams"]], r["tokens"]) if r["streams"] in ref else (float("nan"),) * 2
        r["edit_agreement_vs_ours_float32"], r["bag_agreement_vs_ours_float32"] = edit, bag
        print(f"{r['config']:<15}{r['streams']:>4}{r['wall_s']:>9.2f}{r['rt_streams']:>12.1f}{r['step_ms']:>9.1f}"
              f"{r['step_rt_streams']:>9.1f}{len(r['tokens']):>8}{edit:>12.1%}{bag:>11.1%}  {r['streams_agree']}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
