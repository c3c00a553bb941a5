"""The models that have names: where each is downloaded from, at which revision, and its architecture.

One table (`NAMED_MODELS`): `--model-size` / `--model small|large`, `parakeet-server download` and
`parakeet-server models` read it, and `--load-format dummy` builds its architecture without any
download. Importing this module loads no torch, so flags can be checked against it at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE


@dataclass(frozen=True)
class NamedModel:
    repo: str  # Hugging Face repository of the released .nemo
    filename: str
    revision: str  # the default --revision
    seed_repo: str  # the seed project's safetensors repository (`seed:<name>`)
    config: dict[str, Any]  # the released model_config.yaml sections that matter
    special_pieces: tuple[str, ...]  # tokens a synthetic (dummy) tokenizer must have


def builtin_config(n_layers: int, d_model: int, att: Any, vocab: int, pred_layers: int) -> dict[str, Any]:
    """The released model_config.yaml sections that matter (models.md section 6)."""
    return {
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "NA", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-5, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128, "feat_out": -1, "n_layers": n_layers, "d_model": d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 256,
            "causal_downsampling": True, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
            "n_heads": 8, "att_context_size": att, "att_context_style": "chunked_limited",
            "xscaling": False, "untie_biases": True, "pos_emb_max_len": 5000, "use_bias": False,
            "conv_kernel_size": 9, "conv_norm_type": "layer_norm", "conv_context_size": "causal",
            "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "vocab_size": vocab,
            "blank_as_pad": True, "normalization_mode": None,
            "prednet": {"pred_hidden": 640, "pred_rnn_layers": pred_layers, "t_max": None, "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "num_classes": vocab, "log_softmax": None,
            "jointnet": {"joint_hidden": 640, "activation": "relu", "dropout": 0.2},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
    }


NAMED_MODELS: dict[str, NamedModel] = {
    "small": NamedModel(
        repo="nvidia/parakeet_realtime_eou_120m-v1", filename="parakeet_realtime_eou_120m-v1.nemo",
        revision="main", seed_repo="odunola/parakeet-EOU",
        config=builtin_config(17, 512, [70, 1], 1026, 1), special_pieces=(EOU_PIECE, EOB_PIECE),
    ),
    "large": NamedModel(
        repo="nvidia/nemotron-speech-streaming-en-0.6b", filename="nemotron-speech-streaming-en-0.6b.nemo",
        # The Jan-2026 release; `main` moved to a new checkpoint on 2026-03-12 (same architecture).
        revision="nemotron-speech-streaming-jan2026", seed_repo="odunola/Nemo-Speech-Large",
        config=builtin_config(24, 1024, [[70, 13], [70, 6], [70, 1], [70, 0]], 1024, 2), special_pieces=(),
    ),
}
