"""Make the NeMo reference data in tests/golden/ (NeMo is the test oracle, never a runtime dependency).

How to run (NeMo lives in its own venv; torch==2.13.0 is the CPU wheel, never install an unpinned torch):

    python3 -m venv /work/nemo-venv
    /work/nemo-venv/bin/pip install -U pip
    /work/nemo-venv/bin/pip install torch==2.13.0
    /work/nemo-venv/bin/pip install "nemo_toolkit[asr]==3.0.0" sentencepiece
    apt-get install -y espeak-ng sox          # speech synthesis and resampling
    /work/nemo-venv/bin/python scripts/make_golden.py

It takes a few minutes on 2 CPU cores and rewrites everything it owns in tests/golden/ (README.md
is kept). What it makes, all seeded and deterministic on a given machine:

* speech.wav / speech_short.wav: espeak-ng phrases, 16 kHz mono PCM16. Every reference is computed
  from exactly these int16 samples / 32768.
* three test-size model families with random weights, built with NeMo's own classes and saved with
  NeMo's own `save_to` as <family>/model.nemo:
  small (EOU-like: <EOU>/<EOB> tokens, att_context_size [70,1]), large (nemotron-like: four
  att_context_sizes, 2-layer LSTM) and variant (xscaling and biases on, [70,4]);
* for each family, att_context_size and audio: <family>/ref_<audio>_R<R>.npz with the whole-file
  mel, NeMo's cache-aware streaming (chunks, per-chunk encoder output and tokens, caches), and the
  offline encoder output, greedy tokens, token frames and token confidences;
* state_dict_full_{small,large}.json and model_config_full_{small,large}.yaml for the full-size
  released architectures (key names and shapes; no weights).

tests/golden/README.md describes every file and array.

Key terms (per-stream phrase boosting, NeMo's GPU-PB): `make_golden.py --keyterms` leaves all of the
above untouched and writes only tests/golden/keyterms/ from the saved small and large models
(tests/golden/keyterms/README.md describes it).
"""
from __future__ import annotations

import copy
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
SR = 16000
GAP_S = 0.8
# speech.wav: these phrases with GAP_S of silence between them; speech_short.wav: SHORT_PHRASE.
PHRASES = ("hello world", "turn the lights off please", "what time is it", "open the door")
SHORT_PHRASE = "good morning"
# Total lengths in samples, set by padding silence at the end. Chosen so that the end-of-stream cases
# differ between files and lookaheads (mel frames = L // 160 + 1; NeMo's streaming buffer processes a
# final partial chunk of >= 8 new mel frames and drops a shorter one), and L % 160 != 0.
# speech.wav is longer than the 70-frame (5.6 s) attention cache, so the cache fills and slides.
SPEECH_SAMPLES = 118_317  # 740 mel frames; new-frame tails: R0 3 (dropped), R1 11, R4 27, R6 19, R13 75
SHORT_SAMPLES = 20_077  # 126 mel frames; new-frame tails: R1 5 (dropped), R0 5 (dropped)

CORPUS_WORDS = (
    "hello world this is a streaming speech test turn the lights off please what time is it good "
    "morning how are you today what is your name the quick brown fox jumps over lazy dog seven eight "
    "nine ten weather tomorrow call my mother set an alarm for six play some music stop cancel yes no "
    "maybe open close door window kitchen living room temperature degrees remind me later thank you"
).split()

FAMILIES = {
    # att: list of att_context_sizes (the first is the default). vocab: SentencePiece pieces before
    # the special ones. special: append <EOU>, <EOB>.
    "small": dict(layers=2, d_model=64, heads=4, att=[[70, 1]], pred_layers=1, hidden=48, xscaling=False,
                  use_bias=False, vocab=124, special=True, audio=("speech", "speech_short")),
    "large": dict(layers=3, d_model=64, heads=4, att=[[70, 13], [70, 6], [70, 1], [70, 0]], pred_layers=2,
                  hidden=48, xscaling=False, use_bias=False, vocab=128, special=False, audio=("speech",)),
    # [70,3] would be rejected by NeMo (chunked_limited needs 70 % (3+1) == 0); [70,4] is the nearest
    # legal size, and one that no other family uses.
    "variant": dict(layers=2, d_model=48, heads=2, att=[[70, 4]], pred_layers=1, hidden=40, xscaling=True,
                    use_bias=True, vocab=100, special=False, audio=("speech",)),
}
SEEDS = {"small": 11, "large": 22, "variant": 33}
MAX_SYMBOLS = 10
MIN_GAP = 2e-3  # every greedy decision on the references is won by at least this logit gap (before the logit scale)
LOGIT_SCALES = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
TARGET_RATE = 0.9  # tokens per encoder frame after calibration (whole file, averaged over lookaheads)

FULL = {  # the released architectures (parakeet_realtime_eou_120m-v1, nemotron-speech-streaming-en-0.6b)
    "small": dict(layers=17, d_model=512, heads=8, att=[[70, 1]], pred_layers=1, hidden=640, xscaling=False,
                  use_bias=False, vocab=1024, special=True, conv_channels=256),
    "large": dict(layers=24, d_model=1024, heads=8, att=[[70, 13], [70, 6], [70, 1], [70, 0]], pred_layers=2,
                  hidden=640, xscaling=False, use_bias=False, vocab=1024, special=False, conv_channels=256),
}
FULL_PARAMS = {"small": 114_859_011, "large": 618_084_865}


# ----------------------------------------------------------------------------------------------- audio
def synth(text: str, tmp: Path) -> np.ndarray:
    raw, conv = tmp / "espeak.wav", tmp / "espeak16k.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    # -D: no dither (sox dithers randomly by default when it requantizes, so output would vary per run)
    subprocess.run(["sox", "-D", str(raw), "-r", str(SR), "-c", "1", "-b", "16", "-e", "signed-integer", str(conv)],
                   check=True)
    return read_wav(conv)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.astype("<i2").tobytes())


def fit(pcm: np.ndarray, n: int) -> np.ndarray:
    assert len(pcm) <= n, f"speech is {len(pcm)} samples, longer than the planned {n}"
    return np.concatenate([pcm, np.zeros(n - len(pcm), np.int16)])


def make_audio(tmp: Path) -> dict[str, np.ndarray]:
    gap = np.zeros(int(GAP_S * SR), np.int16)
    parts: list[np.ndarray] = []
    for i, phrase in enumerate(PHRASES):
        parts += ([gap] if i else []) + [synth(phrase, tmp)]
    pcm = {"speech": fit(np.concatenate(parts), SPEECH_SAMPLES),
           "speech_short": fit(synth(SHORT_PHRASE, tmp), SHORT_SAMPLES)}
    for stem, x in pcm.items():
        write_wav(OUT / f"{stem}.wav", x)
        assert np.array_equal(read_wav(OUT / f"{stem}.wav"), x)
    return {stem: x.astype(np.float32) / 32768.0 for stem, x in pcm.items()}


# ------------------------------------------------------------------------------------------- tokenizer
def make_tokenizer(directory: Path, vocab: int, special: bool, seed: int) -> None:
    """A local SentencePiece BPE model; for the EOU family <EOU>, <EOB> are appended as the last two
    pieces (USER_DEFINED, score 0), as NVIDIA's EOU tokenizers do. Writes the three files a NeMo BPE
    tokenizer dir has: tokenizer.model, tokenizer.vocab, vocab.txt."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(3, 12))) for _ in range(4000)]
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(directory / "tokenizer"), vocab_size=vocab,
        model_type="bpe", character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        normalization_rule_name="identity",  # keeps tokenizer.model a few KB (no NFKC table); ids unaffected
        num_threads=1, minloglevel=2,
    )
    proto = spm_pb2.ModelProto()
    proto.ParseFromString((directory / "tokenizer.model").read_bytes())
    if special:
        for name in ("<EOU>", "<EOB>"):
            piece = proto.pieces.add()
            piece.piece, piece.score, piece.type = name, 0.0, spm_pb2.ModelProto.SentencePiece.USER_DEFINED
        (directory / "tokenizer.model").write_bytes(proto.SerializeToString())
    pieces = [(p.piece, p.score) for p in proto.pieces]
    (directory / "tokenizer.vocab").write_text("".join(f"{p}\t{s:g}\n" for p, s in pieces), encoding="utf-8")
    # NeMo's SentencePieceTokenizer reads only tokenizer.model; the other two files are carried along.
    (directory / "vocab.txt").write_text("".join(f"{p}\n" for p, _ in pieces), encoding="utf-8")


# -------------------------------------------------------------------------------------------- configs
def model_cfg(f: dict, conv_channels: int = 32) -> dict:
    """The model section of a NeMo model_config.yaml (EncDecRNNT[BPE]Model), following the released
    cache-aware FastConformer-RNNT recipes, with the sizes of `f`."""
    att = f["att"] if len(f["att"]) > 1 else f["att"][0]
    return {
        "sample_rate": SR,
        "model_defaults": {"enc_hidden": f["d_model"], "pred_hidden": f["hidden"], "joint_hidden": f["hidden"]},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor", "sample_rate": SR,
            "normalize": "NA", "window_size": 0.025, "window_stride": 0.01, "window": "hann", "features": 128,
            "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 128, "feat_out": -1,
            "n_layers": f["layers"], "d_model": f["d_model"], "subsampling": "dw_striding",
            "subsampling_factor": 8, "subsampling_conv_channels": conv_channels, "causal_downsampling": True,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": f["heads"],
            "att_context_size": att, "att_context_style": "chunked_limited", "xscaling": f["xscaling"],
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
                         "encoder_hidden": "${model_defaults.enc_hidden}",
                         "pred_hidden": "${model_defaults.pred_hidden}"},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": MAX_SYMBOLS}},
        "loss": {"loss_name": "default"},
    }


# -------------------------------------------------------------------------------------------- weights
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, LayerNorm scales/shifts and the relative-position biases included (their
    default 1/0/0 init would hide bugs). Scales keep activations in a sane range. The blank row of the
    prediction-net embedding stays zero, as in trained checkpoints (it is nn.Embedding's padding_idx)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.15 * noise)
            elif "norm" in name and name.endswith(".bias"):
                p.copy_(0.1 * noise)
            elif "pos_bias" in name:
                p.copy_(0.3 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif name.endswith("embed.weight"):
                p.copy_(noise)  # nn.Embedding's own init scale
            else:
                fan_in = p[0].numel()
                p.copy_(noise * (1.0 / fan_in) ** 0.5)
        model.decoder.prediction.embed.weight[model.decoder.blank_idx].zero_()


# ----------------------------------------------------------------------------------------- references
def set_context(model, att: list[int]) -> None:
    model.encoder.set_default_att_context_size(att)
    model.encoder.setup_streaming_params()


def decoding_for(model, confidence: str | None = None):
    """A fresh greedy_batch decoding object for `model` (the model's own cfg is left as saved)."""
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding

    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.greedy.max_symbols = MAX_SYMBOLS
        if confidence is not None:
            # NeMo's default measure; and max_prob with alpha 1 (plain (V * p_max - 1) / (V - 1)).
            method = {"name": "entropy", "entropy_type": "tsallis", "alpha": 0.33, "entropy_norm": "exp"}
            if confidence == "max_prob":
                method = {"name": "max_prob", "entropy_type": "tsallis", "alpha": 1.0, "entropy_norm": "exp"}
            cfg.confidence_cfg = {"preserve_token_confidence": True, "method_cfg": method}
    return RNNTBPEDecoding(decoding_cfg=cfg, decoder=model.decoder, joint=model.joint, tokenizer=model.tokenizer)


def mel_of(model, samples: np.ndarray):
    sig = torch.from_numpy(samples).unsqueeze(0)
    return model.preprocessor(input_signal=sig, length=torch.tensor([len(samples)]))


def offline_encode(model, samples: np.ndarray):
    mel, mel_len = mel_of(model, samples)
    n = int(mel_len[0])
    enc, enc_len = model.encoder(audio_signal=mel[:, :, :n], length=mel_len)
    return mel, mel_len, enc, enc_len


def greedy(decoding, enc, enc_len, partial=None):
    return decoding.rnnt_decoder_predictions_tensor(encoder_output=enc, encoded_lengths=enc_len,
                                                     return_hypotheses=True, partial_hypotheses=partial)


def ids(hyp) -> list[int]:
    return [int(t) for t in hyp.y_sequence]


def offline_reference(model, samples: np.ndarray) -> dict[str, np.ndarray]:
    mel, mel_len, enc, enc_len = offline_encode(model, samples)
    hyp = greedy(model.decoding, enc, enc_len)[0]
    tokens = ids(hyp)
    frames = [int(t) for t in hyp.timestamp] if hyp.timestamp is not None else []
    assert len(frames) == len(tokens), "hypothesis timestamps do not align with tokens"
    assert frames == sorted(frames)
    ref = {
        "samples": samples.astype(np.float32),
        "mel": mel[0].numpy().astype(np.float32),
        "mel_len": mel_len.numpy().astype(np.int64),
        "offline_enc": enc[0, :, : int(enc_len[0])].T.numpy().astype(np.float32),
        "offline_tokens": np.array(tokens, np.int64),
        "offline_token_frames": np.array(frames, np.int64),
        "text_offline": np.array(model.tokenizer.ids_to_text(tokens)),
    }
    for name, method in (("tsallis", "entropy"), ("maxprob", "max_prob")):
        h = greedy(decoding_for(model, confidence=method), enc, enc_len)[0]
        assert ids(h) == tokens
        conf = [float(c) for c in h.token_confidence]
        assert len(conf) == len(tokens)
        ref[f"offline_token_conf_{name}"] = np.array(conf, np.float32)
    return ref


def _cache(k, ch, tm, ln) -> dict[str, np.ndarray]:
    return {f"cache_channel_{k}": ch[:, 0].numpy().astype(np.float32),
            f"cache_time_{k}": tm[:, 0].numpy().astype(np.float32),
            f"cache_len_{k}": ln.numpy().astype(np.int64)}


def stream_reference(model, samples: np.ndarray) -> dict[str, np.ndarray]:
    """NeMo's reference cache-aware streaming: CacheAwareStreamingAudioBuffer over the whole-file mel
    (as speech_to_text_cache_aware_streaming_infer.py does, pad_and_drop_preencoded=False)."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    buf.append_audio(samples)
    pre_cache = model.encoder.streaming_cfg.pre_encode_cache_size[1]
    ch, tm, ln = model.encoder.get_initial_cache_state(batch_size=1)
    ch2, tm2, ln2 = (t.clone() for t in (ch, tm, ln))
    prev = prev2 = None
    out: dict[str, list] = {k: [] for k in ("enc", "enc_lens", "tokens", "counts", "starts", "lens", "keep")}
    caches: dict[str, np.ndarray] = {}
    n_tok, consumed = 0, 0
    for step, (chunk, clen) in enumerate(buf):
        # first mel frame that is new in this chunk (the buffer has already advanced by the shift)
        first_new = buf.buffer_idx - buf.streaming_cfg.shift_size[0 if step == 0 else 1]
        chunk_start = first_new if step == 0 else first_new - pre_cache  # < 0: NeMo zero-pads the front
        assert chunk.size(-1) == int(clen[0])
        new_frames = int(clen[0]) - (0 if step == 0 else pre_cache)
        consumed = first_new + new_frames
        drop = 0 if step == 0 else model.encoder.streaming_cfg.drop_extra_pre_encoded
        keep = buf.is_buffer_empty()
        enc, enc_len, ch, tm, ln = model.encoder.cache_aware_stream_step(
            processed_signal=chunk, processed_signal_length=clen, cache_last_channel=ch, cache_last_time=tm,
            cache_last_channel_len=ln, keep_all_outputs=keep, drop_extra_pre_encoded=drop)
        hyps = greedy(model.decoding, enc, enc_len, partial=prev)
        prev = hyps
        seq = ids(hyps[0])
        assert seq[:n_tok] == out["tokens"]
        out["tokens"] += seq[n_tok:]
        out["counts"].append(len(seq) - n_tok)
        n_tok = len(seq)
        t = int(enc_len[0])
        out["enc"].append(enc[0, :, :t].T.numpy())
        out["enc_lens"].append(t)
        out["starts"].append(chunk_start)
        out["lens"].append(int(clen[0]))
        out["keep"].append(keep)
        # The same step through the model-level API must agree.
        _, hyps2, ch2, tm2, ln2, _ = model.conformer_stream_step(
            processed_signal=chunk, processed_signal_length=clen, cache_last_channel=ch2, cache_last_time=tm2,
            cache_last_channel_len=ln2, keep_all_outputs=keep, previous_hypotheses=prev2,
            drop_extra_pre_encoded=drop, return_transcription=True)
        prev2 = hyps2
        assert ids(hyps2[0]) == seq and torch.equal(ch2, ch) and torch.equal(tm2, tm)
        if step in (0, 1):
            caches.update(_cache(step, ch, tm, ln))
        caches.update(_cache("last", ch, tm, ln))
    frames = [int(t) for t in prev[0].timestamp] if prev[0].timestamp is not None else []
    return {
        "chunk_mel_starts": np.array(out["starts"], np.int64),
        "chunk_mel_lens": np.array(out["lens"], np.int64),
        "chunk_keep_all_outputs": np.array(out["keep"], bool),
        "stream_mel_consumed": np.array(consumed, np.int64),
        "stream_enc": np.concatenate(out["enc"]).astype(np.float32),
        "stream_enc_lens": np.array(out["enc_lens"], np.int64),
        "stream_tokens": np.array(out["tokens"], np.int64),
        "stream_token_counts": np.array(out["counts"], np.int64),
        "stream_token_frames": np.array(frames, np.int64),
        **caches,
    }


# ---------------------------------------------------------------------------------------- calibration
def frame_counts(tokens_frames: list[int], n_frames: int) -> np.ndarray:
    return np.bincount(np.asarray(tokens_frames, np.int64), minlength=n_frames)


def decode_stats(model, encs) -> dict:
    """Greedy-decode each (enc, enc_len); tokens with their frames (offset per input), and rates."""
    toks, tok_frames, frames, per_frame = [], [], 0, []
    for enc, enc_len in encs:
        h = greedy(model.decoding, enc, enc_len)[0]
        toks += ids(h)
        tok_frames += [frames + int(t) for t in h.timestamp]
        n = int(enc_len[0])
        per_frame.append(frame_counts([int(t) for t in h.timestamp], n))
        frames += n
    per_frame = np.concatenate(per_frame)
    return {"rate": len(toks) / frames, "tokens": toks, "token_frames": tok_frames,
            "blank_frames": float(np.mean(per_frame == 0)), "max_frames": float(np.mean(per_frame >= MAX_SYMBOLS))}


def greedy_margins(model, enc: torch.Tensor, n: int, logits_out: list | None = None
                   ) -> tuple[list[int], list[int], list[float]]:
    """Plain greedy RNNT over enc (1, D, T)[..., :n] (as NeMo's greedy_batch: up to max_symbols
    tokens per frame, prediction state advanced only on tokens). Returns tokens, their frames, and for
    every decision the gap between the best and the second-best logit. The logits of the decisions
    that emitted a token are appended to logits_out if given."""
    f = model.joint.enc(enc[0, :, :n].T)
    blank = model.decoder.blank_idx
    g, state = model.decoder.predict(torch.tensor([[blank]]), None, add_sos=False, batch_size=1)
    p = model.joint.pred(g[0, 0])
    tokens, frames, gaps = [], [], []
    for t in range(n):
        for _ in range(MAX_SYMBOLS):
            logits = model.joint.joint_net(f[t] + p)
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            k = int(torch.argmax(logits))
            if k == blank:
                break
            tokens.append(k)
            frames.append(t)
            if logits_out is not None:
                logits_out.append(logits)
            g, state = model.decoder.predict(torch.tensor([[k]]), state, add_sos=False, batch_size=1)
            p = model.joint.pred(g[0, 0])
    return tokens, frames, gaps


def min_gap(model, encs) -> float:
    return min(min(greedy_margins(model, enc, int(n[0]))[2]) for enc, n in encs)


def prediction_states(model, n_seq: int = 64, length: int = 12, seed: int = 0) -> torch.Tensor:
    """Prediction-net outputs along random label sequences (SOS state included), as decoding meets them."""
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, model.decoder.vocab_size, (n_seq, length), generator=gen)
    sos = torch.full((n_seq, 1), model.decoder.blank_idx)
    g, _ = model.decoder.predict(torch.cat([sos, seqs], 1), None, add_sos=False, batch_size=n_seq)
    return g.reshape(-1, g.shape[-1])


def whiten(x: torch.Tensor) -> torch.Tensor:
    """ZCA whitening matrix of the rows of x (eigenvalues floored at 1% of their mean)."""
    xc = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(xc.T @ xc / len(xc))
    evals = evals.clamp_min(1e-2 * float(evals.mean()))
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def shape_joint(model, enc_frames: torch.Tensor, enc_gain: float, blank_scale: float) -> None:
    """Give the random joint the coarse structure of a trained one, so greedy decoding is not degenerate.

    Left alone, random encoder frames differ little next to their common offset, a random prediction
    net barely reacts to its input token, and one "hub" output row wins from almost everywhere: per
    frame either blank always wins or one token wins max_symbols times. So (all on this audio):
    * joint.enc / joint.pred: whiten their inputs (encoder frames; prediction outputs along random
      label sequences) and rescale per hidden unit to zero mean and std enc_gain / 1;
    * blank's row of joint.joint_net.2: the direction in which the logit varies least with the frame
      alone and the state alone relative to their interaction (so whether blank wins depends on
      both), with the spread of the other logits times blank_scale;
    * joint.joint_net.2.bias: every logit centred over all (frame, state) pairs (no hub token).
    The other weights keep their random values."""
    g = prediction_states(model)
    hidden = model.joint.enc.weight.shape[0]
    for proj, x, gain in ((model.joint.enc, enc_frames, enc_gain), (model.joint.pred, g, 1.0)):
        proj.weight.copy_(proj.weight @ whiten(x))
        z = x @ proj.weight.T
        mu, sd = z.mean(0), z.std(0).clamp_min(1e-6)
        proj.weight.mul_((gain / sd).unsqueeze(1))
        proj.bias.copy_(-mu * gain / sd)
    out = model.joint.joint_net[2]
    h = torch.relu(model.joint.enc(enc_frames)[:, None, :] + model.joint.pred(g)[None, :, :])  # (T, S, H)
    hc = h - h.mean((0, 1))
    m_t, n_s = hc.mean(1), hc.mean(0)  # frame / state main effects
    r = hc - m_t[:, None] - n_s[None]
    c_main = n_s.T @ n_s / len(n_s) + m_t.T @ m_t / len(m_t)
    c_int = torch.einsum("tsh,tsk->hk", r, r) / (r.shape[0] * r.shape[1])
    inv = torch.linalg.inv(torch.linalg.cholesky(c_int + 1e-6 * torch.eye(hidden)))
    _, vecs = torch.linalg.eigh(inv @ c_main @ inv.T)  # generalized eigenproblem c_main w = l c_int w
    w = inv.T @ vecs[:, 0]
    flat = h.reshape(-1, hidden)
    w = w / torch.sqrt(w @ c_int @ w) * float((flat @ out.weight[:-1].T).std())
    out.weight[-1] = w * blank_scale
    out.bias.copy_(-(flat @ out.weight.T).mean(0))


CANDIDATES = [(enc_gain, blank_scale) for enc_gain in (0.5, 1.0, 2.0) for blank_scale in (1.0, 2.0)]


def calibrate(model, f: dict, audio: list[np.ndarray], eou: int | None) -> dict:
    """Make greedy decoding non-degenerate on the family's audio (all its lookaheads). For each
    candidate joint shape (shape_joint), shift blank's entry of joint.joint_net.2.bias (bisection)
    until about TARGET_RATE tokens per encoder frame are emitted; keep the candidate closest to that
    rate with the fewest frames that hit max_symbols and the most non-blank frames. For the EOU
    family, then swap the output row, bias and prediction embedding of <EOU> with those of a token
    emitted about 4 times (at most twice on one frame), and of <EOB> with one emitted about once: a
    relabelling, so decoding keeps its behaviour and the special tokens win a few times."""
    encs = []
    for att in f["att"]:
        set_context(model, att)
        for samples in audio:
            _, _, enc, enc_len = offline_encode(model, samples)
            encs.append((enc, enc_len))
    set_context(model, f["att"][0])
    frames = torch.cat([enc[0, :, : int(n[0])].T for enc, n in encs])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    bias = model.joint.joint_net[2].bias
    blank = bias.numel() - 1

    def search(index: int, ok, lo: float, hi: float, steps: int = 24) -> None:
        """Smallest offset in [lo, hi] (bisection) for which ok(stats) holds (roughly monotone)."""
        base = float(bias[index])
        for _ in range(steps):
            mid = (lo + hi) / 2
            bias[index] = base + mid
            if ok(decode_stats(model, encs)):
                hi = mid
            else:
                lo = mid
        bias[index] = base + hi

    best = None
    for enc_gain, blank_scale in CANDIDATES:
        model.load_state_dict(start)
        shape_joint(model, frames, enc_gain, blank_scale)
        search(blank, lambda s: s["rate"] <= TARGET_RATE, -20.0, 20.0)
        st = decode_stats(model, encs)
        score = st["max_frames"] + 0.25 * st["blank_frames"] + abs(st["rate"] - TARGET_RATE)
        print(f"  joint shape enc_gain={enc_gain} blank_scale={blank_scale}: rate {st['rate']:.2f}, blank frames "
              f"{st['blank_frames']:.2f}, frames at max_symbols {st['max_frames']:.3f}", flush=True)
        if best is None or score < best[0]:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    # The bisection leaves blank's bias right at a flip point, i.e. some decision is a tie that a
    # 1e-6 change of the encoder output flips. Move on until every decision on every input has a
    # clear winner (best logit ahead of the second by at least MIN_GAP); take the nearest such bias.
    base = float(bias[blank])
    for k in range(800):
        bias[blank] = base + 0.005 * ((k + 1) // 2) * (1 if k % 2 else -1)  # 0, +, -, ++, --, ...
        if min_gap(model, encs) >= MIN_GAP:
            break
    else:
        raise RuntimeError("no blank bias without near-ties found")
    if eou is not None:
        # Candidates: tokens by how often they win on speech.wav and the most they win on one frame
        # on any of the family's audio, at the default lookahead (encs[:len(audio)]).
        count: dict[int, int] = {}  # on speech.wav
        burst: dict[int, int] = {}  # on any of the family's audio
        for i, (enc, n) in enumerate(encs[: len(audio)]):
            tokens, frames, _ = greedy_margins(model, enc, int(n[0]))
            for t, fr in zip(tokens, frames):
                count[t] = count.get(t, 0) + (i == 0)
                burst[t] = max(burst.get(t, 0), sum(1 for u, v in zip(tokens, frames) if u == t and v == fr))
        taken: set[int] = set()
        for special, want in ((eou, 4), (eou + 1, 1)):
            pick = min((t for t in count if t not in (0, eou, eou + 1) and t not in taken),
                       key=lambda t: (abs(count[t] - want) + 2 * max(0, burst[t] - 2), t))
            taken.add(pick)
            for p in (model.joint.joint_net[2].weight, model.joint.joint_net[2].bias,
                      model.decoder.prediction.embed.weight):
                p[[pick, special]] = p[[special, pick]].clone()
    # Scaling all logits changes no decision but makes the softmax peaky like a trained model's, so
    # the token confidences spread over [0, 1] instead of sitting at ~0 (near-uniform softmax).
    # The scale is the one (of LOGIT_SCALES) whose median max-probability of emitted tokens on the
    # calibration audio is closest to 0.85.
    logits: list[torch.Tensor] = []
    for enc, n in encs:
        greedy_margins(model, enc, int(n[0]), logits)
    stacked = torch.stack(logits)
    scale = min(LOGIT_SCALES, key=lambda c: abs(float(torch.softmax(c * stacked, -1).amax(-1).median()) - 0.85))
    model.joint.joint_net[2].weight.mul_(scale)
    model.joint.joint_net[2].bias.mul_(scale)
    print(f"  logit scale {scale}", flush=True)
    return decode_stats(model, encs)


# ------------------------------------------------------------------------------------------- families
def build_family(name: str, f: dict, audio: dict[str, np.ndarray], tmp: Path) -> dict:
    from nemo.collections.asr.models import EncDecRNNTBPEModel

    seed = SEEDS[name]
    torch.manual_seed(seed)
    tokdir = tmp / f"tokenizer_{name}"
    make_tokenizer(tokdir, f["vocab"], f["special"], seed)
    cfg = model_cfg(f)
    cfg["tokenizer"] = {"dir": str(tokdir), "type": "bpe"}
    model = EncDecRNNTBPEModel(cfg=OmegaConf.create(cfg))
    model.eval()
    randomize(model, seed)
    vocab = model.tokenizer.vocab_size
    eou = None
    if f["special"]:
        eou = model.tokenizer.tokenizer.piece_to_id("<EOU>")
        assert eou == vocab - 2 and model.tokenizer.tokenizer.piece_to_id("<EOB>") == vocab - 1
    stats = calibrate(model, f, [audio[s] for s in f["audio"]], eou)
    print(f"[{name}] calibrated: rate {stats['rate']:.2f} tokens/frame, blank frames {stats['blank_frames']:.2f}, "
          f"frames at max_symbols {stats['max_frames']:.3f}", flush=True)
    dest = OUT / name
    dest.mkdir(parents=True, exist_ok=True)
    model.save_to(str(dest / "model.nemo"))
    summary: dict = {"vocab_size": vocab, "blank_id": vocab, "eou_id": eou, "eob_id": None if eou is None else eou + 1,
                     "num_params": sum(p.numel() for p in model.parameters()), "refs": {}}
    for att in f["att"]:
        set_context(model, att)
        for stem in f["audio"]:
            ref = offline_reference(model, audio[stem])
            ref.update(stream_reference(model, audio[stem]))
            for kind in ("offline", "stream"):  # our own greedy loop agrees, and reports the closest call
                enc = torch.from_numpy(ref[f"{kind}_enc"]).T[None]
                tokens, frames, gaps = greedy_margins(model, enc, enc.shape[-1])
                assert tokens == ref[f"{kind}_tokens"].tolist() and frames == ref[f"{kind}_token_frames"].tolist()
                ref[f"{kind}_min_gap"] = np.array(min(gaps), np.float32)
            ref["att_context_size"] = np.array(att, np.int64)
            np.savez_compressed(dest / f"ref_{stem}_R{att[1]}.npz", **ref)
            summary["refs"][f"ref_{stem}_R{att[1]}"] = check_and_summarize(ref, att[1], eou)
    return summary


def check_and_summarize(ref: dict, r: int, eou: int | None) -> dict:
    off, st = ref["offline_enc"], ref["stream_enc"]
    n = min(len(off), len(st))
    # "Clean" chunks: those before the one that feeds NeMo's extra zeroed mel frame (index mel_len).
    # Their encoder output must equal the offline one, except for R=0, where step 1's zero-padded
    # pre-encode cache makes every later frame differ slightly (~5e-3).
    valid = int(ref["mel_len"][0])
    ends = ref["chunk_mel_starts"] + ref["chunk_mel_lens"]
    k_ok = int(np.sum(ends <= valid))
    n_ok = int(np.sum(ref["stream_enc_lens"][:k_ok]))
    diff_ok = float(np.max(np.abs(off[:n_ok] - st[:n_ok]))) if n_ok else 0.0
    diff_all = float(np.max(np.abs(off[:n] - st[:n])))
    toks = ref["offline_tokens"].tolist()
    s = {
        "mel_frames": int(ref["mel"].shape[1]), "mel_len": valid,
        "stream_mel_consumed": int(ref["stream_mel_consumed"]),
        "chunks": len(ref["chunk_mel_lens"]), "offline_frames": len(off), "stream_frames": len(st),
        "offline_tokens": len(toks), "stream_tokens": len(ref["stream_tokens"]),
        "tokens_per_frame": round(len(toks) / len(off), 3),
        "blank_frames": int(np.sum(frame_counts(ref["offline_token_frames"], len(off)) == 0)),
        "max_tokens_on_a_frame": int(frame_counts(ref["offline_token_frames"], len(off)).max()),
        "stream_equals_offline_tokens": ref["stream_tokens"].tolist() == toks,
        "enc_maxdiff_clean_chunks": diff_ok, "clean_frames": n_ok, "enc_maxdiff_all_common": diff_all,
        "conf_tsallis_median": float(np.median(ref["offline_token_conf_tsallis"])) if len(toks) else None,
        "conf_maxprob_median": float(np.median(ref["offline_token_conf_maxprob"])) if len(toks) else None,
        "offline_min_gap": float(ref["offline_min_gap"]), "stream_min_gap": float(ref["stream_min_gap"]),
        "text_offline": str(ref["text_offline"]),
    }
    if eou is not None:
        s["eou_offline"], s["eob_offline"] = toks.count(eou), toks.count(eou + 1)
        s["eou_stream"] = ref["stream_tokens"].tolist().count(eou)
        s["eob_stream"] = ref["stream_tokens"].tolist().count(eou + 1)
    if r > 0:
        assert diff_ok < 1e-4, f"streaming and offline encoder outputs differ by {diff_ok}"
    return s


# ------------------------------------------------------------------------------------ full-size shapes
def full_size(name: str) -> dict:
    """Key names/shapes of the released architecture, built without a tokenizer (EncDecRNNTModel with a
    labels list), and its model_config.yaml as NeMo's save_to would write it."""
    from nemo.collections.asr.models import EncDecRNNTModel

    f = FULL[name]
    labels = [f"tok{i}" for i in range(f["vocab"])] + (["<EOU>", "<EOB>"] if f["special"] else [])
    cfg = model_cfg(f, conv_channels=f["conv_channels"])
    cfg["labels"] = labels
    model = EncDecRNNTModel(cfg=OmegaConf.create(cfg))
    sd = model.state_dict()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == FULL_PARAMS[name], (name, n_params)
    config_path = OUT / f"model_config_full_{name}.yaml"
    model.to_config_file(str(config_path))  # what SaveRestoreConnector.save_to writes as model_config.yaml
    plain = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    doc = {"num_params": n_params, "num_state_dict_elements": sum(v.numel() for v in sd.values()),
           "keys": {k: list(v.shape) for k, v in sd.items()}, "model_config": plain}
    (OUT / f"state_dict_full_{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    del model, sd
    return {"num_params": n_params, "num_keys": len(doc["keys"])}


# ------------------------------------------------------------------------------------------------ main
def clean() -> None:
    """Remove everything this script writes (README.md is hand-written and kept)."""
    for family in FAMILIES:
        if (OUT / family).exists():
            shutil.rmtree(OUT / family)
    for pattern in ("*.wav", "ref_*.npz", "state_dict_full_*.json", "model_config_full_*.yaml", "summary.json"):
        for p in OUT.glob(pattern):
            p.unlink()


def main() -> None:
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    np.random.seed(0)
    random.seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    clean()
    import nemo

    summary: dict = {"nemo_version": nemo.__version__, "torch_version": torch.__version__,
                     "espeak_ng": subprocess.run(["espeak-ng", "--version"], capture_output=True,
                                                 text=True).stdout.strip()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audio = make_audio(tmp)
        summary["audio"] = {stem: {"samples": len(x), "seconds": len(x) / SR} for stem, x in audio.items()}
        summary["families"] = {name: build_family(name, f, audio, tmp) for name, f in FAMILIES.items()}
    summary["full_size"] = {name: full_size(name) for name in FULL}
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


# ------------------------------------------------------------------------------------------- key terms
KT_OUT = OUT / "keyterms"
KT_CASES = (("small", 1), ("large", 1), ("large", 13))  # (family, lookahead R) of speech.wav
KT_MIN_GAP = 5e-3  # every boosted decision on the references is won by at least this (log-prob units)
# Candidate phrases: corpus words and word pairs, the ones whose boosting changes the decode are used.
KT_CANDIDATES = tuple(dict.fromkeys(
    tuple(CORPUS_WORDS) + tuple(" ".join(p) for p in zip(CORPUS_WORDS, CORPUS_WORDS[1:]))).keys())
KT_STREAMS = (  # per stream: how many candidate phrases, params (context_score, depth_scaling, alpha), weighted
    dict(n=0),
    dict(n=3, params=(1.0, 2.0, 1.0)),  # NeMo's defaults
    dict(n=3, params=(3.0, 1.5, 1.2), weights=(4.0, None, 2.5), deep=True),
    dict(n=40, params=(1.0, 2.0, 1.0), broad=True),  # many phrases, most never match: fallbacks
)


def kt_decoding(model):
    """greedy_batch with NeMo's per-stream biasing (a multi-model of boosting trees, ids per hypothesis)."""
    from nemo.collections.asr.parts.submodules.rnnt_decoding import RNNTBPEDecoding

    cfg = copy.deepcopy(model.cfg.decoding)
    with open_dict(cfg):
        cfg.strategy = "greedy_batch"
        cfg.greedy.max_symbols = MAX_SYMBOLS
        cfg.greedy.loop_labels = True
        cfg.greedy.use_cuda_graph_decoder = False
        cfg.greedy.enable_per_stream_biasing = True
    return RNNTBPEDecoding(decoding_cfg=cfg, decoder=model.decoder, joint=model.joint, tokenizer=model.tokenizer)


def kt_tree(model, phrases: list[str], params, weights=None):
    """NeMo's boosting tree for a phrase list: through BoostingTreeModelConfig (key_phrases_list) when
    there are no per-phrase weights, else from a ContextGraph built with per-phrase scores."""
    from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
        BoostingTreeModelConfig, GPUBoostingTreeModel)
    from nemo.collections.asr.parts.context_biasing.context_graph_universal import ContextGraph

    cs, ds, _ = params
    if weights is None:
        cfg = BoostingTreeModelConfig(key_phrases_list=list(phrases), context_score=cs, depth_scaling=ds,
                                      use_triton=False)
        return GPUBoostingTreeModel.from_config(cfg, tokenizer=model.tokenizer)
    graph = ContextGraph(context_score=cs, depth_scaling=ds)
    graph.build(token_ids=[model.tokenizer.text_to_ids(p) for p in phrases], phrases=list(phrases),
                scores=[0.0 if w is None else w for w in weights])
    return GPUBoostingTreeModel.from_context_graph(graph, vocab_size=model.tokenizer.vocab_size, use_triton=False)


class KtStreams:
    """Biasing requests registered in one decoding's multi-model (one per stream; None = no key terms)."""

    def __init__(self, model, decoding, specs: list[dict | None]):
        from nemo.collections.asr.parts.context_biasing.biasing_multi_model import BiasingRequestItemConfig

        self.multi = decoding.decoding.decoding_computer.biasing_multi_model
        self.cfgs = []
        for spec in specs:
            if spec is None:
                self.cfgs.append(None)
                continue
            tree = kt_tree(model, spec["phrases"], spec["params"], spec.get("weights"))
            self.cfgs.append(BiasingRequestItemConfig(multi_model_id=self.multi.add_model(tree, spec["params"][2])))

    def empty_hyps(self):
        from nemo.collections.asr.parts.utils.rnnt_utils import Hypothesis

        return [None if c is None else Hypothesis.empty_with_biasing_cfg(c) for c in self.cfgs]

    def close(self):
        for c in self.cfgs:
            if c is not None:
                c.remove_from_multi_model(self.multi)


def kt_offline(model, enc, enc_len, specs: list[dict | None]) -> list[list[int]]:
    """NeMo's boosted greedy over the whole-file encoder output, all streams in one batch."""
    decoding = kt_decoding(model)
    streams = KtStreams(model, decoding, specs)
    b = len(specs)
    hyps = greedy(decoding, enc.expand(b, -1, -1).contiguous(), enc_len.expand(b).contiguous(),
                  partial=streams.empty_hyps())
    streams.close()
    return [ids(h) for h in hyps]


def kt_margins(model, enc: torch.Tensor, n: int, spec: dict | None) -> tuple[list[int], float, int]:
    """Our own reading of NeMo's fusion (blank decided unboosted, the label by boosted non-blank argmax,
    the tree state advanced on labels), with NeMo's tree: tokens, the closest decision and the most
    phrase tokens matched in a row."""
    f = model.joint.enc(enc[0, :, :n].T)
    blank = model.decoder.blank_idx
    g, state = model.decoder.predict(torch.tensor([[blank]]), None, add_sos=False, batch_size=1)
    p = model.joint.pred(g[0, 0])
    tree = None if spec is None else kt_tree(model, spec["phrases"], spec["params"], spec.get("weights"))
    alpha = 0.0 if spec is None else spec["params"][2]
    ts = torch.zeros(1, dtype=torch.long)
    tokens, gaps, deepest = [], [], 0
    for t in range(n):
        for _ in range(MAX_SYMBOLS):
            logits = model.joint.joint_net(f[t] + p).log_softmax(-1)
            top = torch.topk(logits, 2).values
            gaps.append(float(top[0] - top[1]))
            if int(torch.argmax(logits)) == blank:
                break
            if tree is not None:
                scores, nxt = tree.advance(ts)
                boosted = logits[:-1] + scores[0] * alpha
                top = torch.topk(boosted, 2).values
                gaps.append(float(top[0] - top[1]))
                k = int(torch.argmax(boosted))
                ts = nxt[:, k]
                deepest = max(deepest, int(tree.state_order[ts[0]]) - 1)
            else:
                k = int(torch.argmax(logits))
            tokens.append(k)
            g, state = model.decoder.predict(torch.tensor([[k]]), state, add_sos=False, batch_size=1)
            p = model.joint.pred(g[0, 0])
    return tokens, min(gaps), deepest


def kt_stream(model, samples: np.ndarray, specs: list[dict | None]) -> dict[str, list]:
    """NeMo's cache-aware streaming (as stream_reference) of the same audio in every stream of one
    batch, each stream with its own biasing request: new tokens per chunk per stream."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    decoding = kt_decoding(model)
    streams = KtStreams(model, decoding, specs)
    b = len(specs)
    buf = CacheAwareStreamingAudioBuffer(model=model, online_normalization=False, pad_and_drop_preencoded=False)
    for _ in range(b):
        buf.append_audio(samples)
    ch, tm, ln = model.encoder.get_initial_cache_state(batch_size=b)
    prev = streams.empty_hyps()
    counts: list[list[int]] = [[] for _ in range(b)]
    done = [0] * b
    for step, (chunk, clen) in enumerate(buf):
        drop = 0 if step == 0 else model.encoder.streaming_cfg.drop_extra_pre_encoded
        enc, enc_len, ch, tm, ln = model.encoder.cache_aware_stream_step(
            processed_signal=chunk, processed_signal_length=clen, cache_last_channel=ch, cache_last_time=tm,
            cache_last_channel_len=ln, keep_all_outputs=buf.is_buffer_empty(), drop_extra_pre_encoded=drop)
        prev = greedy(decoding, enc, enc_len, partial=prev)
        for i, h in enumerate(prev):
            counts[i].append(len(h.y_sequence) - done[i])
            done[i] = len(h.y_sequence)
    streams.close()
    return {"tokens": [ids(h) for h in prev], "counts": counts}


def kt_pick(model, enc, n: int, base: list[int], spec: dict, used: set[str], outputs: list[list[int]]) -> dict:
    """Candidate phrases for one stream: each must change the unboosted decode on its own and be at
    least two tokens long (unless `broad`; with `deep` the list must match two tokens in a row, the
    first phrase on its own), the list must change it, differ from the other streams'
    outputs, and win every decision clearly."""
    want, phrases = spec["n"], []
    for cand in KT_CANDIDATES:
        if len(phrases) == want:
            break
        if cand in used or (not spec.get("broad") and len(model.tokenizer.text_to_ids(cand)) < 2):
            continue  # the focused lists have multi-token phrases only, so matches go deep
        trial = {"phrases": phrases + [cand], "params": spec["params"]}
        if spec.get("weights"):
            trial["weights"] = list(spec["weights"][: len(trial["phrases"])])
        if not spec.get("broad"):
            alone = {"phrases": [cand], "params": spec["params"]}
            tokens, _, deepest = kt_margins(model, enc, n, alone)
            if tokens == base or (spec.get("deep") and not phrases and deepest < 2):
                continue
        tokens, gap, deepest = kt_margins(model, enc, n, trial)
        complete = len(trial["phrases"]) == want
        if gap >= KT_MIN_GAP and (deepest >= 2 or not spec.get("deep")) \
                and (not complete or (tokens != base and tokens not in outputs)):
            phrases.append(cand)
    assert len(phrases) == want, f"only {len(phrases)} usable phrases for {spec}"
    used.update(phrases)
    out = {"phrases": phrases, "params": list(spec["params"])}
    if spec.get("weights"):
        out["weights"] = list(spec["weights"])
    return out


def kt_tree_table(model, seed: int) -> dict[str, np.ndarray]:
    """NeMo's boosting tree for random token phrases over few tokens (shared prefixes, phrases inside
    phrases, duplicates, per-phrase weights): every state's path and its full score/next row."""
    from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import GPUBoostingTreeModel
    from nemo.collections.asr.parts.context_biasing.context_graph_universal import ContextGraph

    rng = random.Random(seed)
    v = model.tokenizer.vocab_size
    alphabet = list(range(1, 9))
    phrases = [[rng.choice(alphabet) for _ in range(rng.randint(1, 5))] for _ in range(60)]
    weights = [rng.choice([0.0, 0.0, 0.5, 2.0, 3.5]) for _ in phrases]
    cs, ds = 1.2, 1.7
    graph = ContextGraph(context_score=cs, depth_scaling=ds)
    graph.build(token_ids=phrases, phrases=[str(p) for p in phrases], scores=weights)
    tree = GPUBoostingTreeModel.from_context_graph(graph, vocab_size=v, use_triton=False)
    scores, nxt = tree.advance(torch.arange(tree.num_states))
    paths: dict[int, list[int]] = {0: []}
    for s in range(tree.num_states):  # forward arcs lead to deeper states; states are numbered by depth
        a, b = (int(x) for x in tree.start_end_arcs[s])
        for arc in range(a, b):
            to = int(tree.to_states[arc])
            if to != 0 and to not in paths:
                paths[to] = paths[s] + [int(tree.ilabels[arc])]
    assert len(paths) == tree.num_states
    longest = max(len(p) for p in paths.values())
    pad = lambda rows, w: np.array([r + [-1] * (w - len(r)) for r in rows], np.int64)  # noqa: E731
    return {"phrases": pad(phrases, 5), "weights": np.array(weights, np.float64),
            "context_score": np.array(cs, np.float64), "depth_scaling": np.array(ds, np.float64),
            "state_paths": pad([paths[s] for s in range(tree.num_states)], longest),
            "scores": scores.numpy().astype(np.float32), "next": nxt.numpy().astype(np.int64)}


def make_keyterms() -> None:
    from nemo.collections.asr.models import ASRModel as NemoASRModel

    KT_OUT.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    for family, r in KT_CASES:
        model = NemoASRModel.restore_from(str(OUT / family / "model.nemo"), map_location="cpu")
        model.eval()
        set_context(model, [70, r])
        ref = dict(np.load(OUT / family / f"ref_speech_R{r}.npz"))
        enc = torch.from_numpy(ref["offline_enc"]).T[None]
        n = enc.shape[-1]
        base = ref["offline_tokens"].tolist()
        assert kt_margins(model, enc, n, None)[0] == base
        used: set[str] = set()
        specs: list[dict | None] = []
        outputs: list[list[int]] = [base]
        for spec in KT_STREAMS:
            if spec["n"] == 0:
                specs.append(None)
                continue
            picked = kt_pick(model, enc, n, base, spec, used, outputs)
            specs.append(picked)
            outputs.append(kt_margins(model, enc, n, picked)[0])
        offline = kt_offline(model, enc, torch.tensor([n]), specs)
        for i, spec in enumerate(specs):  # batched NeMo equals each stream alone and our reading of it
            assert offline[i] == kt_offline(model, enc, torch.tensor([n]), [spec])[0] == outputs[i], i
        stream = kt_stream(model, ref["samples"], specs)
        assert stream["tokens"][0] == ref["stream_tokens"].tolist()
        name = f"{family}_R{r}"
        doc = {"family": family, "att_context_size": [70, r], "audio": "speech.wav",
               "streams": [{"keyterms": [] if s is None else s["phrases"],
                            "weights": None if s is None else s.get("weights"),
                            "context_score": None if s is None else s["params"][0],
                            "depth_scaling": None if s is None else s["params"][1],
                            "alpha": None if s is None else s["params"][2],
                            "keyterm_token_ids": [] if s is None else [model.tokenizer.text_to_ids(p)
                                                                       for p in s["phrases"]],
                            "offline_tokens": offline[i], "stream_tokens": stream["tokens"][i],
                            "stream_token_counts": stream["counts"][i]}
                           for i, s in enumerate(specs)]}
        (KT_OUT / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
        summary[name] = {"tokens_changed_vs_unboosted": [sum(a != b for a, b in zip(o, base)) + abs(len(o) - len(base))
                                                          for o in offline],
                         "stream_equals_offline": [s == o for s, o in zip(stream["tokens"], offline)]}
        print(name, json.dumps(summary[name]), flush=True)
        if family == "small":
            np.savez_compressed(KT_OUT / "tree_small.npz", **kt_tree_table(model, seed=14))
    (KT_OUT / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    import sys

    torch.set_float32_matmul_precision("highest")
    with torch.no_grad():
        make_keyterms() if "--keyterms" in sys.argv[1:] else main()
