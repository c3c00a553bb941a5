"""Configuration dataclasses: the server's flags and the model's architecture.

`ServerConfig` mirrors the `parakeet-server serve` flags. `ModelConfig` is parsed from a NeMo
`model_config.yaml` (see `ModelConfig.from_nemo`), so any checkpoint of the cache-aware
FastConformer-RNNT family builds from its own description.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

# --dtype: the encoder's precision (model/loader.set_precision), with short aliases.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8765  # raw TCP, newline-delimited JSON
    ws_port: int = 8000
    status_port: int = 8050
    http_port: int = 8080  # HTTP: /healthz, /readyz, /metrics (and later HTTP features)
    device: str = "cpu"
    dtype: str = "float32"
    model_size: str = "small"
    model: str | None = None  # path to .nemo / folder, or a named model; overrides model_size
    load_format: str = "auto"  # auto | dummy
    revision: str | None = None
    att_context_size: tuple[int, int] | None = None
    sample_rate: int = 16000  # the rate clients send unless they declare another
    max_num_streams: int = 64
    threads: int | None = None  # intra-op threads of the engine's torch ops; None: torch's default
    cuda_graphs: bool = False  # CUDA only: steady-state encoder steps replayed as CUDA graphs (engine/graphs.py)
    max_stream_seconds: float = 3600.0
    idle_timeout: float = 30.0  # seconds without any client message before the stream is closed
    handshake_timeout: float = 10.0  # seconds a connection may wait before its first audio (0: no limit)
    max_pending_connections: int | None = None  # connections without a slot yet; None: 4 x max_num_streams
    max_message_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    api_keys: list[str] = field(default_factory=list)  # empty (and no api_key_file): no authentication
    api_key_file: str | None = None  # one key per line
    ssl_certfile: str | None = None  # TLS on every listener when set (with ssl_keyfile)
    ssl_keyfile: str | None = None
    drain_seconds: float = 10.0  # after SIGTERM, how long open streams may go on before being finalized
    endpoint_silence_ms: int | None = None  # None: off for models with <EOU>, else 500 (endpointing.py)
    endpoint_signal: str = "vad"  # vad | tokens | either
    vad_threshold: float = 0.5
    keyterms_file: str | None = None  # the server's key terms, one per line (preflight.read_keyterms_file)
    instance_name: str | None = None  # names this server in hello / Metadata (ModelInfo.instance); None: not sent
    extra: dict[str, Any] = field(default_factory=dict)


class ConfigError(ValueError):
    """A model config value we cannot honour. The message names the key."""


# Keys that only matter for training or offline batching; accepted and not used.
_IGNORED = {
    "_target_", "dither", "pad_to", "pad_value", "rng", "use_torchaudio", "nb_max_freq", "dropout",
    "dropout_pre_encoder", "dropout_emb", "dropout_att", "stochastic_depth_drop_prob",
    "stochastic_depth_mode", "stochastic_depth_start_layer", "att_context_probs",
    "use_pytorch_sdpa", "use_pytorch_sdpa_backends", "sync_max_audio_length",
    "subsampling_conv_chunking_factor", "t_max", "forget_gate_bias", "weights_init_scale",
    "hidden_hidden_bias_scale", "log_softmax", "preserve_memory", "fuse_loss_wer",
    "fused_batch_size", "experimental_fuse_loss_wer", "vocabulary", "reduction_position",
    "reduction_factor", "global_tokens_spacing", "global_attn_separate", "encoder_hidden",
    "pred_hidden_in", "conv_context_size", "n_window_size", "n_window_stride", "rnn_hidden_size",
}

# key -> the values we implement (known keys, like `_IGNORED`'s). Anything else is a ConfigError naming the key.
_REQUIRED_VALUES: dict[str, tuple[Any, ...]] = {
    "normalize": ("NA", "na", None), "window": ("hann",), "log": (True,), "frame_splicing": (1, None),
    "exact_pad": (False, None), "stft_exact_pad": (False, None), "stft_conv": (False, None),
    "nb_augmentation_prob": (0, 0.0, None), "mag_power": (2, 2.0), "log_zero_guard_type": ("add",),
    "mel_norm": ("slaney",), "subsampling": ("dw_striding",), "causal_downsampling": (True,),
    "self_attention_model": ("rel_pos",), "att_context_style": ("chunked_limited",),
    "conv_norm_type": ("layer_norm",), "feat_out": (-1, None, 0), "reduction": (None,),
    "global_tokens": (0, None), "blank_as_pad": (True,), "normalization_mode": (None,),
    "random_state_sampling": (False, None), "num_extra_outputs": (0, None), "activation": ("relu", "tanh", "sigmoid"),
}


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    n_mels: int = 128
    preemph: float = 0.97
    log_guard: float = 2.0**-24
    lowfreq: float = 0.0
    highfreq: float | None = None


@dataclass(frozen=True)
class EncoderConfig:
    feat_in: int = 128
    n_layers: int = 17
    d_model: int = 512
    n_heads: int = 8
    ff_expansion_factor: int = 4
    subsampling_factor: int = 8
    subsampling_conv_channels: int = 256
    conv_kernel_size: int = 9
    xscaling: bool = False
    use_bias: bool = False
    untie_biases: bool = True
    pos_emb_max_len: int = 5000
    att_context_sizes: tuple[tuple[int, int], ...] = ((70, 1),)
    att_context_size: tuple[int, int] = (70, 1)  # the one in use

    @property
    def left_context(self) -> int:
        return self.att_context_size[0]

    @property
    def lookahead(self) -> int:
        return self.att_context_size[1]


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 1026  # excluding blank; blank id == vocab_size
    pred_hidden: int = 640
    pred_rnn_layers: int = 1
    joint_hidden: int = 640
    joint_activation: str = "relu"
    max_symbols: int = 10


@dataclass(frozen=True)
class ModelConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def with_att_context_size(self, size: tuple[int, int] | None) -> "ModelConfig":
        """The same model streaming with another of its trained att_context_size entries."""
        if size is None:
            return self
        size = (int(size[0]), int(size[1]))
        if size not in self.encoder.att_context_sizes:
            raise ConfigError(
                f"att_context_size {list(size)} is not one this checkpoint was trained with; "
                f"choose one of {[list(s) for s in self.encoder.att_context_sizes]}"
            )
        enc = replace(self.encoder, att_context_size=size)
        return replace(self, encoder=enc)

    @classmethod
    def from_nemo(cls, cfg: dict[str, Any]) -> "ModelConfig":
        """Parse the `model_config.yaml` of a NeMo cache-aware FastConformer-RNNT checkpoint."""
        cfg = _resolve_interpolations(cfg)
        for section in ("preprocessor", "encoder", "decoder", "joint"):
            if not isinstance(cfg.get(section), dict):
                raise ConfigError(f"model config has no '{section}' section")
        return cls(
            features=_parse_features(cfg["preprocessor"]),
            encoder=_parse_encoder(cfg["encoder"]),
            decoder=_parse_decoder(cfg["decoder"], cfg["joint"], cfg.get("decoding") or {}),
        )


def _check_section(name: str, section: dict[str, Any], used: set[str]) -> None:
    for key, value in section.items():
        if key in _REQUIRED_VALUES and value not in _REQUIRED_VALUES[key]:
            allowed = ", ".join(repr(v) for v in _REQUIRED_VALUES[key])
            raise ConfigError(f"{name}.{key} = {value!r} is not supported (supported: {allowed})")
        if key not in used and key not in _IGNORED and key not in _REQUIRED_VALUES:
            raise ConfigError(f"{name}.{key} is not a setting this implementation knows")


def _target_is(name: str, section: dict[str, Any], cls_name: str) -> None:
    target = section.get("_target_")
    if target is not None and not str(target).endswith(cls_name):
        raise ConfigError(f"{name}._target_ = {target!r} is not supported (expected {cls_name})")


def _parse_features(p: dict[str, Any]) -> FeatureConfig:
    _target_is("preprocessor", p, "AudioToMelSpectrogramPreprocessor")
    used = {"sample_rate", "window_size", "window_stride", "n_fft", "features", "preemph", "lowfreq",
            "highfreq", "log_zero_guard_value"}
    _check_section("preprocessor", p, used)
    sr = int(p.get("sample_rate", 16000))
    win = int(p["n_window_size"]) if p.get("n_window_size") else int(float(p.get("window_size", 0.02)) * sr)
    hop = int(p["n_window_stride"]) if p.get("n_window_stride") else int(float(p.get("window_stride", 0.01)) * sr)
    n_fft = p.get("n_fft") or 2 ** math.ceil(math.log2(win))
    guard = p.get("log_zero_guard_value", 2.0**-24)
    if not isinstance(guard, (int, float)):
        raise ConfigError(f"preprocessor.log_zero_guard_value = {guard!r} is not supported (a number is)")
    return FeatureConfig(
        sample_rate=sr, win_length=win, hop_length=hop, n_fft=int(n_fft), n_mels=int(p.get("features", 64)),
        preemph=float(p.get("preemph", 0.97) or 0.0), log_guard=float(guard),
        lowfreq=float(p.get("lowfreq", 0) or 0), highfreq=p.get("highfreq"),
    )


def _parse_att_context(value: Any) -> tuple[tuple[int, int], ...]:
    if value is None:
        raise ConfigError("encoder.att_context_size is missing: only cache-aware streaming checkpoints are supported")
    pairs = [value] if value and not isinstance(value[0], (list, tuple)) else list(value)
    out = []
    for pair in pairs:
        if len(pair) != 2 or any(not isinstance(v, int) for v in pair):
            raise ConfigError(f"encoder.att_context_size entry {pair!r} is not a [left, right] pair of ints")
        left, right = pair
        if left < 0 or right < 0:
            raise ConfigError(f"encoder.att_context_size {list(pair)}: unlimited (-1) context cannot stream")
        if left % (right + 1) != 0:
            raise ConfigError(f"encoder.att_context_size {list(pair)}: left must be a multiple of right+1")
        out.append((left, right))
    return tuple(out)


def _parse_encoder(e: dict[str, Any]) -> EncoderConfig:
    _target_is("encoder", e, "ConformerEncoder")
    used = {"feat_in", "n_layers", "d_model", "n_heads", "ff_expansion_factor", "subsampling_factor",
            "subsampling_conv_channels", "conv_kernel_size", "xscaling", "use_bias", "untie_biases",
            "pos_emb_max_len", "att_context_size"}
    _check_section("encoder", e, used)
    kernel = int(e.get("conv_kernel_size", 31))
    ctx = e.get("conv_context_size")
    if ctx not in (None, "causal") and list(ctx) != [kernel - 1, 0]:
        raise ConfigError(f"encoder.conv_context_size = {ctx!r} is not supported (only causal)")
    factor = int(e.get("subsampling_factor", 4))
    if factor < 2 or factor & (factor - 1):
        raise ConfigError(f"encoder.subsampling_factor = {factor} is not supported (a power of 2 is)")
    sizes = _parse_att_context(e.get("att_context_size"))
    return EncoderConfig(
        feat_in=int(e["feat_in"]), n_layers=int(e["n_layers"]), d_model=int(e["d_model"]),
        n_heads=int(e.get("n_heads", 4)), ff_expansion_factor=int(e.get("ff_expansion_factor", 4)),
        subsampling_factor=factor, subsampling_conv_channels=int(e.get("subsampling_conv_channels", -1)),
        conv_kernel_size=kernel, xscaling=bool(e.get("xscaling", True)), use_bias=bool(e.get("use_bias", True)),
        untie_biases=bool(e.get("untie_biases", True)), pos_emb_max_len=int(e.get("pos_emb_max_len", 5000)),
        att_context_sizes=sizes, att_context_size=sizes[0],
    )


def _parse_decoder(d: dict[str, Any], j: dict[str, Any], decoding: dict[str, Any]) -> DecoderConfig:
    _target_is("decoder", d, "RNNTDecoder")
    _target_is("joint", j, "RNNTJoint")
    _check_section("decoder", d, {"prednet", "vocab_size"})
    _check_section("joint", j, {"jointnet", "num_classes"})
    prednet, jointnet = d.get("prednet") or {}, j.get("jointnet") or {}
    _check_section("decoder.prednet", prednet, {"pred_hidden", "pred_rnn_layers"})
    _check_section("joint.jointnet", jointnet, {"joint_hidden", "pred_hidden", "activation"})
    hidden = int(prednet["pred_hidden"])
    rnn_hidden = prednet.get("rnn_hidden_size")
    if rnn_hidden not in (None, -1, hidden):
        raise ConfigError(f"decoder.prednet.rnn_hidden_size = {rnn_hidden} is not supported (must equal pred_hidden)")
    vocab = int(d["vocab_size"])
    if j.get("num_classes") is not None and int(j["num_classes"]) != vocab:
        raise ConfigError(f"joint.num_classes = {j['num_classes']} differs from decoder.vocab_size = {vocab}")
    greedy = decoding.get("greedy") or {}
    max_symbols = greedy.get("max_symbols", greedy.get("max_symbols_per_step")) or 10
    return DecoderConfig(
        vocab_size=vocab, pred_hidden=hidden, pred_rnn_layers=int(prednet.get("pred_rnn_layers", 1)),
        joint_hidden=int(jointnet["joint_hidden"]), joint_activation=str(jointnet.get("activation", "relu")),
        max_symbols=int(max_symbols),
    )


_INTERP = re.compile(r"^\$\{([^}]+)\}$")


def _resolve_interpolations(cfg: dict[str, Any]) -> dict[str, Any]:
    """Resolve OmegaConf-style `${a.b}` references (NeMo configs use `${model_defaults.x}`)."""

    def lookup(path: str) -> Any:
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"config interpolation ${{{path}}} does not resolve")
            node = node[part]
        return walk(node)

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and (m := _INTERP.match(node)):
            return lookup(m.group(1))
        return node

    return walk(cfg)
