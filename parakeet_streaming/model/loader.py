"""Where a model comes from: a `.nemo` archive, an unpacked folder, the Hugging Face Hub, or dummy weights.

`load_model(source)` accepts
- a path to a `.nemo` file (a tar, compressed or not, holding `model_config.yaml`,
  `model_weights.ckpt` and the tokenizer files, whose names may carry a uuid prefix);
- a path to a folder holding the same files, or the seed's layout (`model.safetensors` +
  `tokenizer.model`, seed key names);
- `small` / `large`: NVIDIA's released `.nemo`, downloaded once with huggingface_hub and reused from
  its cache; `seed:small` / `seed:large`: the seed project's safetensors repos;
- any of the named models with `load_format="dummy"`: the real architecture with random weights and
  a synthetic tokenizer, no download (benchmarks, tests).
"""
from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from parakeet_streaming.config import DTYPE_NAMES, ConfigError, ModelConfig
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.dummy import design_decoding, pseudo_speech  # noqa: F401 (pseudo_speech: for bench/)
from parakeet_streaming.model.catalog import NAMED_MODELS, NamedModel
from parakeet_streaming.model.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says why and what to do."""


Phase = Callable[[str], None]  # told each phase of a load as it starts ("reading the checkpoint", ...)


def load_model(source: str, *, load_format: str = "auto", device: str = "cpu", dtype: str = "float32",
               att_context_size: tuple[int, int] | None = None, revision: str | None = None,
               on_phase: Phase | None = None) -> ASRModel:
    """The model `source` names, on `device` in `dtype`. `on_phase` hears each phase as it starts
    (the server's /readyz reports it); every phase is also logged at info level with its details."""
    phase = on_phase or (lambda _: None)
    if load_format == "dummy":
        phase("building the dummy weights")
        log.info("building %s with dummy weights (the real architecture, random weights, no download)", source)
        model = build_dummy(source)
    elif load_format == "auto":
        model = _load_real(source, revision, phase)
    else:
        raise ModelLoadError(f"unknown load format {load_format!r} (use 'auto' or 'dummy')")
    model.set_att_context_size(att_context_size)
    phase(f"moving the model to {device} ({dtype})")
    log.info("model %s: %.0fM parameters, on %s in %s", model.name, model.num_parameters() / 1e6, device, dtype)
    return set_precision(model.to(device=device), dtype).eval()


DTYPES = {name: getattr(torch, canonical) for name, canonical in DTYPE_NAMES.items()}


def set_precision(model: ASRModel, dtype: str) -> ASRModel:
    """float32 (exact), or bfloat16 / float16 for the encoder's weights and activations. The encoder
    is where the time goes; the prediction network and joint stay float32 because greedy decoding
    feeds its own decisions back, so their rounding errors would compound. (Dynamic int8
    quantization was measured and dropped: slower than bfloat16 here and less accurate, see
    docs/performance.md.)"""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unsupported dtype {dtype!r} (choose one of {sorted(DTYPES)})")
    model.encoder.to(dtype=DTYPES[dtype])
    return model


def build_dummy(name: str, seed: int = 0) -> ASRModel:
    """A named model's real architecture with random weights adjusted to decode like a trained
    model (model/dummy.py), and a synthetic tokenizer."""
    named = _named(name)
    cfg = ModelConfig.from_nemo(named.config)
    tok = Tokenizer.synthetic(cfg.decoder.vocab_size, named.special_pieces)
    model = ASRModel(cfg, tok, name=f"{name} (dummy weights)")
    model.randomize(seed)
    design_decoding(model, seed)
    return model


def _named(name: str) -> NamedModel:
    if name not in NAMED_MODELS:
        raise ModelLoadError(f"unknown model {name!r} (use one of {', '.join(NAMED_MODELS)} or a path to a .nemo file)")
    return NAMED_MODELS[name]


def _load_real(source: str, revision: str | None, phase: Phase) -> ASRModel:
    path = Path(source).expanduser()
    if path.is_file():
        phase("reading the checkpoint")
        log.info("reading the checkpoint %s (%.0f MB)", path, path.stat().st_size / 1e6)
        return load_nemo_archive(path)
    if path.is_dir():
        phase("reading the checkpoint")
        log.info("reading the checkpoint folder %s", path)
        return load_folder(path)
    if source.startswith("seed:"):
        phase("downloading the checkpoint (or reading the cached one)")
        return _load_seed_download(source.removeprefix("seed:"), revision)
    if source in NAMED_MODELS:
        phase("downloading the checkpoint (or reading the cached one)")
        file = download(source, revision)
        phase("reading the checkpoint")
        log.info("reading the checkpoint %s (%.0f MB)", file, file.stat().st_size / 1e6)
        return load_nemo_archive(file, name=source)
    raise ModelLoadError(
        f"model {source!r} is neither a file, a folder, nor a known name (pass a .nemo file, an unpacked "
        f"checkpoint folder, or one of {', '.join(NAMED_MODELS)})"
    )


def download(name: str, revision: str | None = None) -> Path:
    """A named model's .nemo file in the Hugging Face cache, downloaded (with progress bars) if needed."""
    named = _named(name)
    return _hub_download(named.repo, named.filename, revision or named.revision)


def _hub_download(repo: str, filename: str, revision: str) -> Path:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    _one_handler_for_hub_logs()
    log.info("%s/%s (revision %s): from the Hugging Face cache %s, downloaded into it first if needed "
             "(HF_HUB_OFFLINE=1: never download)", repo, filename, revision, constants.HF_HUB_CACHE)
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, revision=revision))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"cannot download {repo}/{filename} (revision {revision}) and no copy is cached "
            "(connect to the internet once, or run `parakeet-server download` where there is a connection "
            "and copy the Hugging Face cache here, or pass a local checkpoint with --model /path/to/model.nemo)"
        ) from exc
    except Exception as exc:  # network, auth, missing file: one clear message
        raise ModelLoadError(
            f"downloading {repo}/{filename} (revision {revision}) failed: {exc} "
            "(check the network, --revision and HF_TOKEN, or pass a local checkpoint with --model /path/to/model.nemo)"
        ) from exc


def cached_models() -> str:
    """The named models, their default revisions and their copies in the Hugging Face cache, as text."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = {repo.repo_id: repo for repo in scan_cache_dir().repos}
    except CacheNotFound:
        repos = {}
    lines = []
    for name, named in NAMED_MODELS.items():
        lines.append(f"{name}: {named.repo} {named.filename}, default revision {named.revision}")
        revisions = repos[named.repo].revisions if named.repo in repos else ()
        copies = [(rev, f) for rev in revisions for f in rev.files if f.file_name == named.filename]
        for rev, file in sorted(copies, key=lambda c: c[0].last_modified):
            refs = ", ".join(sorted(rev.refs)) or "no branch or tag"
            lines.append(f"  cached: commit {rev.commit_hash} ({refs}), {file.size_on_disk / 1e6:.0f} MB, "
                         f"{file.file_path}")
        if not copies:
            lines.append(f"  not cached (fetch it with: parakeet-server download {name})")
    lines.append(f"Hugging Face cache: {constants.HF_HUB_CACHE}")
    return "\n".join(lines)


def _one_handler_for_hub_logs() -> None:
    """huggingface_hub gives its logger a stderr handler of its own; where the application has
    configured logging, every hub message (each download retry) would then be printed twice."""
    hub = logging.getLogger("huggingface_hub")
    if logging.getLogger().handlers:
        for handler in [h for h in hub.handlers if type(h) is logging.StreamHandler]:
            hub.removeHandler(handler)


# ---- .nemo archives and folders --------------------------------------------------------------

def load_nemo_archive(path: Path, name: str | None = None) -> ASRModel:
    try:
        with tarfile.open(path, "r:*") as tar:
            files = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            read = lambda fname: tar.extractfile(files[fname]).read()  # noqa: E731
            return _assemble(files.keys(), read, name or path.stem, str(path))
    except tarfile.TarError as exc:
        raise ModelLoadError(f"{path} is not a .nemo archive, which is a tar file, plain or compressed (pass "
                             "a .nemo file or an unpacked checkpoint folder)") from exc


def load_folder(path: Path, name: str | None = None) -> ASRModel:
    files = {p.name: p for p in path.iterdir() if p.is_file()}
    if "model.safetensors" in files and "model_config.yaml" not in files:
        return _load_seed_files(files["model.safetensors"], files.get("tokenizer.model"), name or path.name)
    return _assemble(files.keys(), lambda fname: files[fname].read_bytes(), name or path.name, str(path))


def _assemble(names: Any, read: Any, name: str, where: str) -> ASRModel:
    names = list(names)
    for required in ("model_config.yaml", "model_weights.ckpt"):
        if required not in names:
            raise ModelLoadError(f"{where} has no {required} (is it a NeMo checkpoint? pass a .nemo file "
                                 "or its unpacked folder)")
    tok_file = next((n for n in names if n.endswith("tokenizer.model")), None)
    if tok_file is None:
        raise ModelLoadError(f"{where} has no SentencePiece tokenizer (*tokenizer.model)")
    raw = yaml.safe_load(read("model_config.yaml"))
    try:
        cfg = ModelConfig.from_nemo(raw)
    except ConfigError as exc:
        raise ModelLoadError(f"{where}: unsupported model config: {exc}") from exc
    model = ASRModel(cfg, Tokenizer(read(tok_file)), name=name)
    try:
        state = torch.load(io.BytesIO(read("model_weights.ckpt")), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{where}: model_weights.ckpt cannot be read: {exc}") from exc
    load_state(model, state, where)
    return model


def load_state(model: ASRModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Strict load with one clear message naming the first missing, unexpected or misshapen key."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("pos_enc.pe")}
    for key, value in state.items():
        if key not in own:
            raise ModelLoadError(f"{where}: unexpected weight {key!r} {tuple(value.shape)} for this config")
        if tuple(own[key].shape) != tuple(value.shape):
            raise ModelLoadError(
                f"{where}: weight {key!r} has shape {tuple(value.shape)}, the config needs {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in state and not k.startswith("preprocessor.")]
    if missing:
        raise ModelLoadError(f"{where}: weight {missing[0]!r} is missing ({len(missing)} missing in all)")
    model.load_state_dict(state, strict=False)


# ---- the seed project's safetensors layout ---------------------------------------------------

def _load_seed_download(size: str, revision: str | None) -> ASRModel:
    named = _named(size)
    weights = _hub_download(named.seed_repo, "model.safetensors", revision or "main")
    tok = _hub_download(named.seed_repo, "tokenizer.model", revision or "main")
    return _load_seed_files(weights, tok, f"seed:{size}", size)


def _load_seed_files(weights: Path, tokenizer: Path | None, name: str, size: str | None = None) -> ASRModel:
    from safetensors.torch import load_file

    if tokenizer is None:
        raise ModelLoadError(f"{weights.parent} has model.safetensors but no tokenizer.model")
    state = from_seed_keys(load_file(str(weights)))
    if size is None:
        width = state["encoder.pre_encode.out.weight"].shape[0]
        size = "small" if width == 512 else "large"
    cfg = ModelConfig.from_nemo(_named(size).config)
    model = ASRModel(cfg, Tokenizer.from_file(tokenizer), name=name)
    load_state(model, state, str(weights))
    return model


def from_seed_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Seed key names -> NeMo names: fused qkv split, `predictor.`/`joiner.` prefixes, `.lstm` level."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("self_attn.qkv.weight"):
            stem = key.removesuffix("qkv.weight")
            for part, tensor in zip("qkv", value.chunk(3, dim=0)):
                out[f"{stem}linear_{part}.weight"] = tensor.contiguous()
            continue
        if key.startswith("predictor."):
            key = "decoder." + key.removeprefix("predictor.")
            key = key.replace("prediction.dec_rnn.", "prediction.dec_rnn.lstm.")
        elif key.startswith("joiner."):
            key = "joint." + key.removeprefix("joiner.")
        out[key] = value
    return out
