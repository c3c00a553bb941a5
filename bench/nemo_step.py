"""NeMo's own cache-aware streaming step, for a side-by-side comparison (run by bench/compare_nemo.py).

Runs in a separate venv that has nemo_toolkit (bench/setup_nemo_venv.sh); never imported by the
project. Builds the full-size architecture from tests/golden/model_config_full_<name>.yaml (NeMo's
own config of the released model, random weights), fills the caches, then times
`encoder.cache_aware_stream_step` (encoder only) and `conformer_stream_step` (encoder + NeMo's
batched greedy decoding) on steady-state chunks. Prints one JSON line per batch size.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "tests" / "golden"


def build(name: str, att: list[int]):
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / f"model_config_full_{name}.yaml")
    cfg.pop("train_ds", None), cfg.pop("validation_ds", None), cfg.pop("test_ds", None)
    model = EncDecRNNTModel(cfg=cfg).eval()
    model.encoder.set_default_att_context_size(att)
    model.encoder.setup_streaming_params()
    return model


def time_batch(model, batch: int, repeats: int, decode: bool) -> list[float]:
    scfg = model.encoder.streaming_cfg
    pre = scfg.pre_encode_cache_size[1]
    shift = scfg.shift_size[1]
    feats = model.cfg.preprocessor.features
    ch, tm, ln = model.encoder.get_initial_cache_state(batch_size=batch)
    chunk = torch.randn(batch, feats, pre + shift)
    lens = torch.full((batch,), pre + shift, dtype=torch.long)
    prev = None
    times = []
    warm = model.encoder.att_context_size[0] // (model.encoder.att_context_size[1] + 1) + 2
    with torch.inference_mode():
        for i in range(warm + repeats):
            t0 = time.perf_counter()
            if decode:
                _, prev, ch, tm, ln, _ = model.conformer_stream_step(
                    processed_signal=chunk, processed_signal_length=lens, cache_last_channel=ch,
                    cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=False,
                    previous_hypotheses=prev, drop_extra_pre_encoded=scfg.drop_extra_pre_encoded,
                    return_transcription=False)
            else:
                _, _, ch, tm, ln = model.encoder.cache_aware_stream_step(
                    processed_signal=chunk, processed_signal_length=lens, cache_last_channel=ch,
                    cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=False,
                    drop_extra_pre_encoded=scfg.drop_extra_pre_encoded)
            if i >= warm:
                times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--att", default="70,1")
    ap.add_argument("--batches", default="1,16,32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    att = [int(v) for v in args.att.split(",")]
    model = build(args.model, att)
    chunk_ms = 80 * (att[1] + 1)
    for b in (int(v) for v in args.batches.split(",")):
        for decode in (False, True):
            med = statistics.median(time_batch(model, b, args.repeats, decode)) * 1000
            print(json.dumps({"impl": "nemo", "model": args.model, "att": att, "batch": b,
                              "part": "encoder+greedy" if decode else "encoder", "step_ms": round(med, 1),
                              "rt_streams": round(b * chunk_ms / med, 1)}), flush=True)


if __name__ == "__main__":
    main()
