"""Build NeMo reference outputs for the tests in tests/golden/ (NeMo is the oracle, never a runtime need).

Run in a separate environment (NeMo is large):

    python3 -m venv /work/oracle-venv
    /work/oracle-venv/bin/pip install torch==2.13.0
    /work/oracle-venv/bin/pip install "nemo_toolkit[asr]==3.0.0" sentencepiece
    /work/oracle-venv/bin/python scripts/make_golden.py            # writes tests/golden/

It makes test-size models of three families with random weights (NeMo's own classes, saved with
NeMo's own `save_to` as .nemo), speech with espeak-ng, and records for every att_context_size:
whole-file mel, NeMo's cache-aware streaming (per-chunk encoder output, tokens, caches) and the
offline encoder output and greedy tokens. Everything is seeded; the outputs are a few MB.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from omegaconf import OmegaConf, open_dict
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"
WORDS = ("hello world this is a streaming speech test turn the lights off please good morning how are you "
         "today what is your name the quick brown fox jumps over lazy dog seven eight nine ten weather "
         "tomorrow call my mother set an alarm for six play some music stop cancel yes no maybe").split()

FAMILIES = {
    "small": dict(layers=2, d_model=64, heads=4, att=[70, 1], pred_layers=1, hidden=48, xscaling=False,
                  use_bias=False, special=True, vocab=126, max_symbols=3),
    "large": dict(layers=3, d_model=64, heads=4, att=[[70, 13], [70, 6], [70, 1], [70, 0]], pred_layers=2,
                  hidden=48, xscaling=False, use_bias=False, special=False, vocab=128, max_symbols=10),
    "variant": dict(layers=2, d_model=48, heads=2, att=[70, 4], pred_layers=1, hidden=40, xscaling=True,
                    use_bias=True, special=False, vocab=96, max_symbols=10),
}


def speech(text: str, path: Path) -> np.ndarray:
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    raw.unlink()
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def make_tokenizer(directory: Path, vocab: int, special: bool, seed: int) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(directory / "tokenizer"), vocab_size=vocab,
        model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
    )
    proto = spm_pb2.ModelProto()
    proto.ParseFromString((directory / "tokenizer.model").read_bytes())
    if special:  # as the EOU checkpoints do: the last two pieces, user-defined
        for name in ("<EOU>", "<EOB>"):
            p = proto.pieces.add()
            p.piece, p.score, p.type = name, 0.0, spm_pb2.ModelProto.SentencePiece.USER_DEFINED
        (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
    pieces = [p.piece for p in proto.pieces]
    (directory / "tokenizer.vocab").write_text("".join(f"{p}\t0\n" for p in pieces))
    (directory / "vocab.txt").write_text("".join(f"{p}\n" for p in pieces))


def model_cfg(f: dict, tokdir: Path) -> dict:
    return {
        "sample_rate": 16000,
        "tokenizer": {"dir": str(tokdir), "type": "bpe"},
        "model_defaults": {"enc_hidden": f["d_model"], "pred_hidden": f["hidden"], "joint_hidden": f["hidden"]},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": 16000,
            "normalize": "NA", "window_size": 0.025, "window_stride": 0.01, "window": "hann", "features": 128,
            "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 128, "feat_out": -1,
            "n_layers": f["layers"], "d_model": f["d_model"], "subsampling": "dw_striding",
            "subsampling_factor": 8, "subsampling_conv_channels": 32, "causal_downsampling": True,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": f["heads"],
            "att_context_size": f["att"], "att_context_style": "chunked_limited", "xscaling": f["xscaling"],
            "untie_biases": True, "pos_emb_max_len": 5000, "use_bias": f["use_bias"], "conv_kernel_size": 9,
            "conv_norm_type": "layer_norm", "conv_context_size": "causal", "dropout": 0.1,
            "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
            "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": "${model_defaults.pred_hidden}", "pred_rnn_layers": f["pred_layers"],
                        "t_max": None, "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
            "fuse_loss_wer": False, "fused_batch_size": 4,
            "jointnet": {"joint_hidden": "${model_defaults.joint_hidden}", "activation": "relu", "dropout": 0.2,
                         "encoder_hidden": "${model_defaults.enc_hidden}", "pred_hidden": "${model_defaults.pred_hidden}"},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": f["max_symbols"]}},
        "loss": {"loss_name": "default"},
    }


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every weight random, LayerNorms and position biases included (defaults would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(noise / max(fan_in, 1) ** 0.5)


def offline(model, samples: np.ndarray):
    sig = torch.from_numpy(samples).unsqueeze(0)
    mel, mel_len = model.preprocessor(input_signal=sig, length=torch.tensor([len(samples)]))
    enc, enc_len = model.encoder(audio_signal=mel, length=mel_len)
    hyp = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                          return_hypotheses=True)[0]
    return mel, mel_len, enc, enc_len, hyp


def emit_rate(model, enc, enc_len) -> float:
    hyp = model.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                          return_hypotheses=True)[0]
    return len(hyp.y_sequence) / int(enc_len[0])


def calibrate(model, samples: np.ndarray, eou: int | None, target: float = 0.4) -> None:
    """Raise the blank logit until about `target` tokens per frame are emitted; then give <EOU> the
    behaviour of a token emitted now and then (swap its output row and embedding with that token's)."""
    _, _, enc, enc_len, _ = offline(model, samples)
    spread_encoder_projection(model, enc[0, :, : int(enc_len[0])].T)
    bias = model.joint.joint_net[2].bias
    blank = bias.numel() - 1
    base = float(bias[blank])
    lo, hi = 0.0, 1.0
    with torch.no_grad():
        while True:
            bias[blank] = base + hi
            if emit_rate(model, enc, enc_len) < target or hi > 1e4:
                break
            lo, hi = hi, hi * 2
        for _ in range(14):
            mid = (lo + hi) / 2
            bias[blank] = base + mid
            lo, hi = (mid, hi) if emit_rate(model, enc, enc_len) >= target else (lo, mid)
        bias[blank] = base + lo
        if eou is None:
            return
        tokens = list(offline(model, samples)[4].y_sequence)
        tokens = [int(t) for t in tokens]
        counts = {t: tokens.count(t) for t in set(tokens)}
        pick = sorted(counts, key=lambda t: (abs(counts[t] / len(tokens) - 0.08), t))[0]
        for p in (model.joint.joint_net[2].weight, model.joint.joint_net[2].bias,
                  model.decoder.prediction.embed.weight):
            p[[pick, eou]] = p[[eou, pick]].clone()


def spread_encoder_projection(model, enc: torch.Tensor, gain: float = 20.0) -> None:
    """Random encoders give near-identical frames, so one token would win everywhere: centre the
    joint's encoder projection on this audio and scale it well above the predictor's spread."""
    proj = model.joint.enc
    f = enc @ proj.weight.T
    vocab = model.decoder.vocab_size + 1
    labels = torch.arange(vocab).unsqueeze(1)
    g, _ = model.decoder.predict(labels, None, add_sos=False, batch_size=vocab)
    g = model.joint.pred(g[:, 0])
    scale = gain * float(g.std(0).mean()) / max(float(f.std(0).mean()), 1e-6)
    with torch.no_grad():
        proj.weight.mul_(scale)
        proj.bias.copy_(-(f.mean(0) * scale))


def stream_reference(model, samples: np.ndarray) -> dict[str, np.ndarray]:
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    buf.append_audio(samples)
    ch, tm, ln = model.encoder.get_initial_cache_state(batch_size=1)
    prev = None
    enc_chunks, enc_lens, tok_counts, tokens, chunk_lens = [], [], [], [], []
    caches: dict[str, np.ndarray] = {}
    n_tok = 0
    for step, (chunk, clen) in enumerate(buf):
        drop = 0 if step == 0 else model.encoder.streaming_cfg.drop_extra_pre_encoded
        enc, enc_len, ch, tm, ln = model.encoder.cache_aware_stream_step(
            processed_signal=chunk, processed_signal_length=clen, cache_last_channel=ch, cache_last_time=tm,
            cache_last_channel_len=ln, keep_all_outputs=buf.is_buffer_empty(), drop_extra_pre_encoded=drop)
        hyps = model.decoding.rnnt_decoder_predictions_tensor(
            encoder_output=enc, encoded_lengths=enc_len, return_hypotheses=True, partial_hypotheses=prev)
        prev = hyps
        seq = [int(t) for t in hyps[0].y_sequence]
        tokens += seq[n_tok:]
        tok_counts.append(len(seq) - n_tok)
        n_tok = len(seq)
        t = int(enc_len[0])
        enc_chunks.append(enc[0, :, :t].T.numpy())
        enc_lens.append(t)
        chunk_lens.append(int(clen[0]))
        for k in (0, 1):
            if step == k:
                caches.update(_cache(k, ch, tm, ln))
        last = _cache("last", ch, tm, ln)
    caches.update(last)
    return {
        "stream_enc": np.concatenate(enc_chunks).astype(np.float32), "stream_enc_lens": np.array(enc_lens),
        "stream_tokens": np.array(tokens, dtype=np.int64), "stream_token_counts": np.array(tok_counts),
        "chunk_input_lens": np.array(chunk_lens), **caches,
    }


def _cache(k, ch, tm, ln) -> dict[str, np.ndarray]:
    return {f"cache_channel_{k}": ch[:, 0].numpy().astype(np.float32),
            f"cache_time_{k}": tm[:, 0].numpy().astype(np.float32), f"cache_len_{k}": ln.numpy()}


def build_family(name: str, f: dict, audios: dict[str, np.ndarray], work: Path, seed: int) -> dict:
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    tokdir = work / f"tok_{name}"
    make_tokenizer(tokdir, f["vocab"], f["special"], seed)
    model = EncDecRNNTBPEModel(cfg=OmegaConf.create(model_cfg(f, tokdir)))
    model.eval()
    randomize(model, seed)
    eou = model.tokenizer.tokenizer.piece_to_id("<EOU>") if f["special"] else None
    calibrate(model, audios["speech"], eou)
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    model.save_to(str(dest / "model.nemo"))
    sizes = f["att"] if isinstance(f["att"][0], list) else [f["att"]]
    summary = {}
    for att in sizes:
        model.encoder.set_default_att_context_size(att)
        for stem, samples in audios.items():
            if name != "small" and stem != "speech":
                continue
            mel, mel_len, enc, enc_len, hyp = offline(model, samples)
            ref = {
                "samples": samples, "mel": mel[0].numpy(), "mel_len": mel_len.numpy(),
                "offline_enc": enc[0, :, : int(enc_len[0])].T.numpy(), "offline_tokens": np.array(
                    [int(t) for t in hyp.y_sequence], dtype=np.int64),
                "offline_token_frames": np.array([int(t) for t in hyp.timestamp], dtype=np.int64)
                if hyp.timestamp is not None and len(hyp.timestamp) == len(hyp.y_sequence) else np.zeros(0),
                "text_offline": np.array(hyp.text if isinstance(hyp.text, str) else ""),
                **stream_reference(model, samples),
            }
            np.savez_compressed(dest / f"ref_{stem}_R{att[1]}.npz", **ref)
            summary[f"{stem}_R{att[1]}"] = {
                "offline_tokens": len(ref["offline_tokens"]), "offline_frames": int(enc_len[0]),
                "stream_tokens": len(ref["stream_tokens"]), "stream_frames": int(ref["stream_enc"].shape[0]),
                "eou": int(sum(1 for t in ref["offline_tokens"] if t == eou)) if eou is not None else None,
            }
    return summary


def full_size_shapes() -> None:
    """Keys and shapes of the released architectures (no tokenizer needed) for architecture tests."""
    from nemo.collections.asr.models import EncDecRNNTModel

    for name, layers, d, att, vocab, pred_layers in (("small", 17, 512, [70, 1], 1026, 1),
                                                      ("large", 24, 1024, [[70, 13], [70, 6], [70, 1], [70, 0]], 1024, 2)):
        f = dict(layers=layers, d_model=d, heads=8, att=att, pred_layers=pred_layers, hidden=640,
                 xscaling=False, use_bias=False, max_symbols=10)
        cfg = model_cfg(f, Path("unused"))
        del cfg["tokenizer"]
        cfg["encoder"]["subsampling_conv_channels"] = 256
        cfg["labels"] = [f"tok{i}" for i in range(vocab)]
        cfg["decoder"]["vocab_size"] = vocab
        cfg["joint"]["num_classes"] = vocab
        model = EncDecRNNTModel(cfg=OmegaConf.create(cfg))
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        params = sum(p.numel() for p in model.parameters())
        (OUT / f"state_dict_full_{name}.json").write_text(json.dumps({"num_params": params, "keys": keys}, indent=0))
        print(name, "params", params)


def main() -> None:
    torch.manual_seed(0)
    torch.set_float32_matmul_precision("highest")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        audios = {
            "speech": speech("hello world. [[_::_::_::_::_::_::_::_::_]] this is a streaming test. "
                             "[[_::_::_::_::_::_::_::_::_]] turn the lights off please", work / "speech.wav"),
            "short": speech("good morning", work / "short.wav"),
        }
        shutil.copy(work / "speech.wav", OUT / "speech.wav")
        shutil.copy(work / "short.wav", OUT / "short.wav")
        summary = {name: build_family(name, f, audios, work, seed=i + 1) for i, (name, f) in enumerate(FAMILIES.items())}
    full_size_shapes()
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    with torch.no_grad():
        main()
