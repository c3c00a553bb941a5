"""Checkpoints in their real on-disk formats: .nemo archives (plain and gzip), folders, the seed's
safetensors layout; clear errors for bad files, bad configs and a missing download."""
from __future__ import annotations

import copy
import io
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from parakeet_streaming.config import ConfigError, ModelConfig
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.catalog import NAMED_MODELS, builtin_config
from parakeet_streaming.model.loader import ModelLoadError, load_model
from parakeet_streaming.model.tokenizer import Tokenizer
from seed_keys import to_seed_keys
from test_runner import run_alone

UUID = "3f2a9c1e0b7d4e5f8a6b1c2d3e4f5a6b"


def tiny_nemo_config(model: ASRModel) -> dict:
    enc, dec = model.config.encoder, model.config.decoder
    cfg = builtin_config(enc.n_layers, enc.d_model, [list(a) for a in enc.att_context_sizes], dec.vocab_size, 1)
    cfg["encoder"].update(n_heads=enc.n_heads, subsampling_conv_channels=enc.subsampling_conv_channels)
    cfg["decoder"]["prednet"]["pred_hidden"] = dec.pred_hidden
    cfg["joint"]["jointnet"]["joint_hidden"] = dec.joint_hidden
    cfg["decoding"]["greedy"]["max_symbols"] = dec.max_symbols
    # What NeMo writes: interpolations into model_defaults and a tokenizer section.
    cfg["model_defaults"] = {"pred_hidden": dec.pred_hidden}
    cfg["decoder"]["prednet"]["pred_hidden"] = "${model_defaults.pred_hidden}"
    cfg["tokenizer"] = {"dir": None, "type": "bpe", "model_path": f"nemo:{UUID}_tokenizer.model"}
    cfg["target"] = "nemo.collections.asr.models.rnnt_bpe_models.EncDecRNNTBPEModel"
    return cfg


def write_nemo(model: ASRModel, path: Path, cfg: dict | None = None, state: dict | None = None,
               mode: str = "w") -> Path:
    files = {
        "model_config.yaml": yaml.safe_dump(cfg or tiny_nemo_config(model)).encode(),
        "model_weights.ckpt": _ckpt(state if state is not None else model.state_dict()),
        f"{UUID}_tokenizer.model": model.tokenizer.model_proto,
        f"{UUID}_vocab.txt": b"",
    }
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _ckpt(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_nemo_archive_round_trip(tiny_model, speech, tmp_path, mode) -> None:
    path = write_nemo(tiny_model, tmp_path / "tiny.nemo", mode=mode)
    loaded = load_model(str(path))
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.tokenizer.eou_id == tiny_model.tokenizer.eou_id
    assert run_alone(loaded, speech) == run_alone(tiny_model, speech)


def test_folder_and_seed_layouts(tiny_model, speech, tmp_path) -> None:
    folder = tmp_path / "unpacked"
    folder.mkdir()
    with tarfile.open(write_nemo(tiny_model, tmp_path / "m.nemo")) as tar:
        tar.extractall(folder, filter="data")
    assert run_alone(load_model(str(folder)), speech) == run_alone(tiny_model, speech)


def test_seed_safetensors_keys_round_trip(tiny_model) -> None:
    from parakeet_streaming.model.loader import from_seed_keys

    seed = to_seed_keys(tiny_model.state_dict())
    assert any(k.endswith("self_attn.qkv.weight") for k in seed)
    assert any(k.startswith("predictor.prediction.dec_rnn.weight_ih_l0") for k in seed)
    assert any(k.startswith("joiner.joint_net.2") for k in seed)
    back = from_seed_keys(seed)
    own = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("preprocessor.")}
    assert set(back) == set(own)
    assert all(torch.equal(back[k], own[k]) for k in own)


def test_seed_folder_loads_full_small_layout(tmp_path) -> None:
    """The seed's safetensors folder for the small model (real architecture, random weights)."""
    from safetensors.torch import save_file

    from parakeet_streaming.model.loader import build_dummy

    model = build_dummy("small")
    folder = tmp_path / "seed"
    folder.mkdir()
    save_file(to_seed_keys(model.state_dict()), str(folder / "model.safetensors"))
    (folder / "tokenizer.model").write_bytes(model.tokenizer.model_proto)
    loaded = load_model(str(folder))
    assert loaded.config.encoder.d_model == 512
    assert torch.equal(loaded.joint.joint_net[2].bias, model.joint.joint_net[2].bias)


def test_missing_weight_is_named(tiny_model, tmp_path) -> None:
    state = dict(tiny_model.state_dict())
    del state["encoder.layers.1.conv.depthwise_conv.weight"]
    path = write_nemo(tiny_model, tmp_path / "bad.nemo", state=state)
    with pytest.raises(ModelLoadError, match="encoder.layers.1.conv.depthwise_conv.weight"):
        load_model(str(path))


def test_wrong_shape_is_named(tiny_model, tmp_path) -> None:
    state = dict(tiny_model.state_dict())
    state["joint.pred.weight"] = torch.zeros(3, 3)
    with pytest.raises(ModelLoadError, match=r"joint.pred.weight.*\(3, 3\)"):
        load_model(str(write_nemo(tiny_model, tmp_path / "bad.nemo", state=state)))


def test_unexpected_weight_is_named(tiny_model, tmp_path) -> None:
    state = dict(tiny_model.state_dict())
    state["encoder.layers.9.norm_out.weight"] = torch.ones(64)
    with pytest.raises(ModelLoadError, match="encoder.layers.9.norm_out.weight"):
        load_model(str(write_nemo(tiny_model, tmp_path / "bad.nemo", state=state)))


def test_not_an_archive(tmp_path) -> None:
    path = tmp_path / "x.nemo"
    path.write_bytes(b"this is not a tar file at all" * 100)
    with pytest.raises(ModelLoadError, match="not a .nemo archive"):
        load_model(str(path))


@pytest.mark.parametrize("section,key,value,message", [
    ("encoder", "xscaling_typo", True, "encoder.xscaling_typo is not a setting"),
    ("encoder", "self_attention_model", "abs_pos", "encoder.self_attention_model = 'abs_pos'"),
    ("encoder", "subsampling", "striding", "encoder.subsampling = 'striding'"),
    ("encoder", "att_context_size", [70, 2], "left must be a multiple"),
    ("encoder", "att_context_size", [-1, -1], "cannot stream"),
    ("preprocessor", "normalize", "per_feature", "preprocessor.normalize"),
    ("preprocessor", "window", "hamming", "preprocessor.window"),
    ("joint", "num_extra_outputs", 5, "joint.num_extra_outputs"),
])
def test_unsupported_config_is_named(tiny_model, tmp_path, section, key, value, message) -> None:
    cfg = copy.deepcopy(tiny_nemo_config(tiny_model))
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        ModelConfig.from_nemo(cfg)
    with pytest.raises(ModelLoadError, match="unsupported model config"):
        load_model(str(write_nemo(tiny_model, tmp_path / "bad.nemo", cfg=cfg)))


def test_named_model_offline_without_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError, match=r"--model /path/to/model.nemo"):
        load_model("small")


def test_named_model_uses_cached_download(tiny_model, speech, tmp_path, monkeypatch) -> None:
    """A copy in the Hugging Face cache is used offline, without the network."""
    cache = tmp_path / "hub"
    named = NAMED_MODELS["small"]
    snap = cache / f"models--{named.repo.replace('/', '--')}" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    write_nemo(tiny_model, snap / named.filename)
    refs = cache / f"models--{named.repo.replace('/', '--')}" / "refs"
    refs.mkdir()
    (refs / named.revision).write_text("a" * 40)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded = load_model("small")
    assert run_alone(loaded, speech) == run_alone(tiny_model, speech)


def test_unknown_name() -> None:
    with pytest.raises(ModelLoadError, match="neither a file"):
        load_model("medium")


@pytest.mark.parametrize("name,params,layers", [("small", 114_859_011, 17), ("large", 618_084_865, 24)])
def test_full_size_architectures(name, params, layers) -> None:
    cfg = ModelConfig.from_nemo(NAMED_MODELS[name].config)
    tok = Tokenizer.synthetic(cfg.decoder.vocab_size, NAMED_MODELS[name].special_pieces)
    with torch.device("meta"):
        model = ASRModel(cfg, tok, name)
    assert model.num_parameters() == params
    assert cfg.encoder.n_layers == layers
    golden = Path(__file__).parent / "golden" / f"state_dict_full_{name}.json"
    if golden.exists():
        import json

        ref = json.loads(golden.read_text())["keys"]
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        assert ours == {k: list(v) for k, v in ref.items()}


def test_att_context_size_selection() -> None:
    cfg = ModelConfig.from_nemo(NAMED_MODELS["large"].config)
    assert cfg.encoder.att_context_size == (70, 13)
    assert cfg.with_att_context_size((70, 1)).encoder.att_context_size == (70, 1)
    with pytest.raises(ConfigError, match="trained with"):
        cfg.with_att_context_size((70, 3))


def test_dummy_named_models_decode(speech) -> None:
    model = load_model("small", load_format="dummy")
    tokens, frames, _ = run_alone(model, speech[:32000])
    assert 0 < len(tokens) <= 10 * frames


def test_dummy_small_emits_steadily_over_a_long_stream() -> None:
    """Benchmarks rely on it (model/dummy.py): after the first seconds, every 4 s of a 24 s stream
    emits some tokens and not a burst on every frame, and <EOU> is among them."""
    from parakeet_streaming.engine.runner import Runner
    from parakeet_streaming.model.dummy import pseudo_speech

    model = load_model("small", load_format="dummy")
    runner = Runner(model, 1)
    runner.open(0)
    runner.push(0, pseudo_speech(24.0, seed=3))
    runner.finish(0)
    frames: list[int] = []
    tokens: list[int] = []
    while runner.ready(0):
        out = runner.step([0])[0]
        frames += out.token_frames
        tokens += out.token_ids
    window = 50  # frames of 80 ms
    rates = [sum(start <= f < start + window for f in frames) / window for start in range(window, 300, window)]
    assert all(0.05 <= r <= 1.5 for r in rates), rates
    per_frame = [frames.count(f) for f in set(frames)]
    assert sum(per_frame) / len(per_frame) < 4
    assert model.tokenizer.eou_id in tokens


def test_dummy_design_is_fitted_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    """The calibration run's result is kept per architecture and seed: a second build reads it
    (no encoder run) and gives the same weights bit for bit; another seed is fitted anew."""
    from conftest import tiny_config

    from parakeet_streaming.model import dummy
    from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE

    def designed(seed: int) -> ASRModel:
        model = ASRModel(tiny_config(), Tokenizer.synthetic(40, (EOU_PIECE, EOB_PIECE)), name="tiny")
        model.randomize(seed, std=0.2)
        dummy.design_decoding(model, seed, cache=tmp_path)
        return model

    fitted = designed(0)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    def no_run(*args):
        raise AssertionError("the cached design should not run the encoder")

    with monkeypatch.context() as m:
        m.setattr(dummy, "encoder_frames", no_run)
        cached = designed(0)
    for key, value in fitted.state_dict().items():
        assert torch.equal(cached.state_dict()[key], value), key
    assert fitted.tokenizer.eou_id is not None
    designed(1)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    (next(tmp_path.glob("*.pt"))).write_bytes(b"damaged")  # a damaged file is fitted again, not fatal
    designed(0), designed(1)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_dummy_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    from parakeet_streaming.model.dummy import cache_dir

    monkeypatch.delenv("PARAKEET_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "parakeet-streaming" / "dummy"
    monkeypatch.setenv("PARAKEET_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine" / "dummy"


def test_load_reports_its_phases(tiny_model, tmp_path) -> None:
    phases: list[str] = []
    load_model(str(write_nemo(tiny_model, tmp_path / "tiny.nemo")), on_phase=phases.append)
    assert phases == ["reading the checkpoint", "moving the model to cpu (float32)"]
