"""Export our dummy-weight model to the ONNX files sherpa-onnx loads for a NeMo cache-aware streaming
transducer (for bench/compare_sherpa.py). Runs in the NeMo venv, with onnxruntime added to it:

    bash bench/setup_nemo_venv.sh && .nemo-venv/bin/pip install onnxruntime     # once
    .nemo-venv/bin/python bench/export_sherpa_onnx.py [--model small] [--att 70,1] [--out /work/sherpa-export]

1. Builds our model with `--load-format dummy`'s weights (model/loader.build_dummy) and NeMo's own
   EncDecRNNTModel from the released config (tests/golden/model_config_full_<model>.yaml), and
   copies our state dict into NeMo's (our parameter names are NeMo's).
2. Checks the copy: the encoder output of the first chunks of the same audio, ours (Runner) against
   NeMo's `cache_aware_stream_step` with NeMo's chunking (which ours follows).
3. Exports with NeMo's exporter with cache support (`set_export_config({"cache_support": True})`):
   encoder.onnx, decoder.onnx, joiner.onnx, and writes into encoder.onnx the metadata that
   sherpa-onnx's OnlineTransducerNeMoModel reads (vocab_size without the blank, window_size and
   chunk_shift in mel frames, normalize_type, pred_rnn_layers, pred_hidden, the cache shapes).
4. Writes *.int8.onnx with onnxruntime's dynamic quantization (QUInt8 weights), as sherpa-onnx's
   own releases of these models do, and tokens.txt (`piece id` per line, then `<blk> <vocab>`).
5. Checks the export: the ONNX encoder, decoder and joiner against NeMo's PyTorch modules on the
   chunking sherpa-onnx uses (every chunk `window_size` frames, `chunk_shift` apart), fp32 and int8.

The checks are printed and kept in <out>/export.json; a float32 mismatch above --tolerance fails.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the NeMo venv does not install this project

from parakeet_streaming.engine.runner import Runner  # noqa: E402
from parakeet_streaming.model.dummy import pseudo_speech  # noqa: E402
from parakeet_streaming.model.loader import build_dummy  # noqa: E402

CHECK_SECONDS = 3.0
CHECK_CHUNKS = 6


def build_nemo(name: str, att: tuple[int, int]):
    from nemo.collections.asr.models import EncDecRNNTModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "tests" / "golden" / f"model_config_full_{name}.yaml")
    for split in ("train_ds", "validation_ds", "test_ds"):
        cfg.pop(split, None)
    model = EncDecRNNTModel(cfg=cfg).eval()
    model.preprocessor.featurizer.dither = 0.0
    model.encoder.set_default_att_context_size(list(att))
    model.encoder.setup_streaming_params()
    return model


def copy_weights(ours: torch.nn.Module, nemo: torch.nn.Module) -> list[str]:
    """Our state dict into NeMo's; every NeMo parameter must be covered. Returns NeMo's keys left as
    they were (buffers both sides compute, such as the positional table)."""
    mine = ours.state_dict()
    theirs = nemo.state_dict()
    params = {k for k, _ in nemo.named_parameters()}
    unknown = [k for k in mine if k not in theirs]
    if unknown:
        raise SystemExit(f"our weights have names NeMo's model lacks, e.g. {unknown[:3]}")
    missing = sorted(params - set(mine))
    if missing:
        raise SystemExit(f"NeMo parameters with no weight of ours: {missing[:3]} ({len(missing)})")
    for key, value in mine.items():
        if tuple(value.shape) != tuple(theirs[key].shape):
            raise SystemExit(f"{key}: ours {tuple(value.shape)}, NeMo's {tuple(theirs[key].shape)}")
    nemo.load_state_dict({k: v.float() for k, v in mine.items()}, strict=False)
    return sorted(set(theirs) - set(mine))


@torch.inference_mode()
def check_copy(ours, nemo, audio: np.ndarray) -> list[float]:
    """Max |ours - NeMo| of the encoder output, per chunk, for the first CHECK_CHUNKS chunks."""
    mine: list[torch.Tensor] = []

    def keep(_module, inputs, output) -> None:  # the encoder layers' input is (x, lengths, ...)
        out = output[0] if isinstance(output, tuple) else output
        mine.append(out[0, : int(inputs[1][0])].float())  # (T, D)

    runner = Runner(ours, 1)
    runner.open(0)
    runner.push(0, audio)
    hook = ours.encoder.register_forward_hook(keep)
    try:
        while len(mine) < CHECK_CHUNKS and runner.ready(0):
            runner.step([0])
    finally:
        hook.remove()
        runner.release(0)
    x = torch.from_numpy(audio).unsqueeze(0)
    mel, _ = nemo.preprocessor(input_signal=x, length=torch.tensor([x.size(1)]))
    enc, scfg = nemo.encoder, nemo.encoder.streaming_cfg
    sub = enc.subsampling_factor
    first, shift, pre = runner.first_frames, runner.chunk_frames, scfg.pre_encode_cache_size[1]
    ch, tm, ln = enc.get_initial_cache_state(batch_size=1)
    diffs = []
    for k, got in enumerate(mine):
        lo, hi = (0, first) if k == 0 else (first + shift * (k - 1) - pre, first + shift * k)
        chunk = mel[:, :, lo:hi]
        out, out_len, ch, tm, ln = enc.cache_aware_stream_step(
            processed_signal=chunk, processed_signal_length=torch.tensor([chunk.size(2)]),
            cache_last_channel=ch, cache_last_time=tm, cache_last_channel_len=ln, keep_all_outputs=False,
            drop_extra_pre_encoded=0 if k == 0 else scfg.drop_extra_pre_encoded)
        ref = out[0, :, : int(out_len[0])].T
        if ref.shape != got.shape:
            raise SystemExit(f"chunk {k}: ours {tuple(got.shape)}, NeMo's {tuple(ref.shape)} (sub {sub})")
        diffs.append(float((ref - got).abs().max()))
    return diffs


def metadata(nemo, name: str, att: tuple[int, int]) -> dict[str, object]:
    """What sherpa-onnx's OnlineTransducerNeMoModel reads from the encoder (window_size and
    chunk_shift are mel frames: a chunk's new frames plus the pre-encode cache, and its new frames)."""
    enc, scfg = nemo.encoder, nemo.encoder.streaming_cfg
    chunk = scfg.chunk_size[1] if isinstance(scfg.chunk_size, list) else scfg.chunk_size
    pre = scfg.pre_encode_cache_size[1] if isinstance(scfg.pre_encode_cache_size, list) else scfg.pre_encode_cache_size
    normalize = nemo.cfg.preprocessor.normalize
    return {
        "vocab_size": nemo.decoder.vocab_size, "window_size": chunk + pre, "chunk_shift": chunk,
        "chunk_size_ms": 10 * chunk, "normalize_type": "" if normalize == "NA" else normalize,
        "cache_last_channel_dim1": len(enc.layers), "cache_last_channel_dim2": scfg.last_channel_cache_size,
        "cache_last_channel_dim3": enc.d_model,
        "cache_last_time_dim1": len(enc.layers), "cache_last_time_dim2": enc.d_model,
        "cache_last_time_dim3": enc.conv_context_size[0],
        "pred_rnn_layers": nemo.decoder.pred_rnn_layers, "pred_hidden": nemo.decoder.pred_hidden,
        "subsampling_factor": enc.subsampling_factor, "feat_dim": nemo.cfg.preprocessor.features,
        "att_context_size": json.dumps(list(att)), "model_type": "EncDecRNNTModel",
        "comment": f"parakeet-streaming {name} with --load-format dummy weights (bench/export_sherpa_onnx.py)",
    }


PROTOBUF_LIMIT = 2 ** 31  # larger models (the large encoder) keep their weights in a .data file beside them


def add_metadata(path: Path, meta: dict[str, object]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    external = sum(len(t.raw_data) for t in model.graph.initializer) >= PROTOBUF_LIMIT - 2 ** 26
    onnx.save(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=path.stem + ".data")


def write_tokens(tokenizer, path: Path) -> None:
    lines = [f"{tokenizer.id_to_piece(i)} {i}" for i in range(tokenizer.vocab_size)]
    pieces = [line.split()[0] for line in lines]
    if len(set(pieces)) != len(pieces) or any(len(line.split()) != 2 for line in lines):
        raise SystemExit("the tokenizer's pieces are not unique single words; tokens.txt would be ambiguous")
    path.write_text("\n".join(lines + [f"<blk> {tokenizer.vocab_size}"]) + "\n", encoding="utf-8")


def export(nemo, out: Path) -> None:
    nemo.set_export_config({"cache_support": True})
    nemo.encoder.export(str(out / "encoder.onnx"))
    nemo.decoder.export(str(out / "decoder.onnx"))
    nemo.joint.export(str(out / "joiner.onnx"))


def quantize(out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for part in ("encoder", "decoder", "joiner"):
        quantize_dynamic(model_input=str(out / f"{part}.onnx"), model_output=str(out / f"{part}.int8.onnx"),
                         weight_type=QuantType.QUInt8, use_external_data_format=(out / f"{part}.data").exists())


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def check_export(nemo, out: Path, meta: dict[str, object], audio: np.ndarray, suffix: str) -> dict[str, list[float]]:
    """Max |ONNX - NeMo PyTorch| per chunk on sherpa-onnx's chunking, plus one decoder and joiner call."""
    enc_sess = session(out / f"encoder{suffix}.onnx")
    x = torch.from_numpy(audio).unsqueeze(0)
    mel, _ = nemo.preprocessor(input_signal=x, length=torch.tensor([x.size(1)]))
    window, shift = int(meta["window_size"]), int(meta["chunk_shift"])
    enc = nemo.encoder
    ch, tm, ln = (t.numpy() for t in enc.get_initial_cache_state(batch_size=1))
    ch, tm = ch.transpose(1, 0, 2, 3).copy(), tm.transpose(1, 0, 2, 3).copy()  # (B, layers, ...) as exported
    t_ch, t_tm, t_ln = torch.from_numpy(ch), torch.from_numpy(tm), torch.from_numpy(ln)
    names = [i.name for i in enc_sess.get_inputs()]
    enc_diffs, enc_out = [], None
    for k in range(CHECK_CHUNKS):
        chunk = mel[:, :, k * shift:k * shift + window].contiguous()
        length = torch.tensor([window], dtype=torch.int64)
        got = enc_sess.run(None, dict(zip(names, [chunk.numpy(), length.numpy(), ch, tm, ln])))
        ref = enc.forward_for_export(chunk, length, t_ch, t_tm, t_ln)
        enc_diffs.append(float(np.abs(got[0] - ref[0].numpy()).max()))
        ch, tm, ln = got[2], got[3], got[4]
        t_ch, t_tm, t_ln = ref[2], ref[3], ref[4]
        enc_out = ref[0]
    dec_sess, join_sess = session(out / f"decoder{suffix}.onnx"), session(out / f"joiner{suffix}.onnx")
    targets = torch.tensor([[7]], dtype=torch.int32)
    t_len = torch.tensor([1], dtype=torch.int32)
    states = [torch.zeros(nemo.decoder.pred_rnn_layers, 1, nemo.decoder.pred_hidden) for _ in range(2)]
    g, _ = nemo.decoder.predict(targets.long(), state=states, add_sos=False)  # (B, U, H): as exported
    dec_names = [i.name for i in dec_sess.get_inputs()]
    got_dec = dec_sess.run(None, dict(zip(dec_names, [targets.numpy(), t_len.numpy()] + [s.numpy() for s in states])))
    dec_diff = float(np.abs(got_dec[0] - g.transpose(1, 2).numpy()).max())
    enc_frame = enc_out[:, :, :1]  # (B, D, 1)
    ref_logits = nemo.joint.joint(enc_frame.transpose(1, 2), g)  # raw logits, as exported (no log-softmax)
    join_names = [i.name for i in join_sess.get_inputs()]
    got_join = join_sess.run(None, dict(zip(join_names, [enc_frame.numpy(), g.transpose(1, 2).numpy()])))
    join_diff = float(np.abs(got_join[0] - ref_logits.numpy()).max())
    return {"encoder_chunks": enc_diffs, "decoder": [dec_diff], "joiner": [join_diff],
            "joiner_argmax_equal": [float(int(got_join[0].argmax()) == int(ref_logits.argmax()))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small")
    ap.add_argument("--att", default="70,1")
    ap.add_argument("--out", default="/work/sherpa-export")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="largest float32 difference accepted")
    ap.add_argument("--skip-int8", action="store_true")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    att = tuple(int(v) for v in args.att.split(","))
    out = Path(args.out) / f"{args.model}-{att[0]}-{att[1]}"
    out.mkdir(parents=True, exist_ok=True)

    ours = build_dummy(args.model)
    ours.set_att_context_size(att)
    ours.eval()
    nemo = build_nemo(args.model, att)
    kept = copy_weights(ours, nemo)
    audio = pseudo_speech(CHECK_SECONDS, seed=1)
    copy_diffs = check_copy(ours, nemo, audio)
    print(f"ours vs NeMo, encoder output per chunk, max |diff|: {['%.2e' % d for d in copy_diffs]} "
          f"(NeMo buffers not copied: {kept})", flush=True)

    meta = metadata(nemo, args.model, att)
    export(nemo, out)
    add_metadata(out / "encoder.onnx", meta)
    write_tokens(ours.tokenizer, out / "tokens.txt")
    if not args.skip_int8:
        quantize(out)
    report: dict[str, object] = {"model": args.model, "att_context_size": list(att), "metadata": meta,
                                 "ours_vs_nemo_encoder": copy_diffs}
    for suffix in ("",) if args.skip_int8 else ("", ".int8"):
        diffs = check_export(nemo, out, meta, audio, suffix)
        report[f"onnx{suffix or '.fp32'}_vs_nemo"] = diffs
        print(f"ONNX{suffix or ' fp32'} vs NeMo: " + ", ".join(
            f"{k} {['%.2e' % d for d in v]}" for k, v in diffs.items()), flush=True)
    (out / "export.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"metadata: {meta}\nwrote {sorted(p.name for p in out.iterdir())} in {out}")
    fp32 = report["onnx.fp32_vs_nemo"]
    worst = max(max(copy_diffs), max(fp32["encoder_chunks"]), fp32["decoder"][0], fp32["joiner"][0])
    if worst > args.tolerance:
        raise SystemExit(f"float32 mismatch {worst:.2e} > --tolerance {args.tolerance:g}")


if __name__ == "__main__":
    main()
