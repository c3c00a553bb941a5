"""Shared fixtures: a tiny random-weight model of the EOU family and real speech made with espeak-ng."""
from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from calibration import calibrate_joint_bias

from parakeet_streaming.config import ModelConfig
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.catalog import builtin_config
from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE, Tokenizer

GOLDEN = Path(__file__).parent / "golden"
PHRASES = ["hello world", "this is a streaming test", "turn the lights off please"]


def tiny_config(att=(70, 1), vocab: int = 40, layers: int = 2, max_symbols: int = 2) -> ModelConfig:
    cfg = builtin_config(layers, 64, list(att), vocab, 1)
    cfg["decoding"]["greedy"]["max_symbols"] = max_symbols
    cfg["encoder"].update(n_heads=4, subsampling_conv_channels=16)
    cfg["decoder"]["prednet"]["pred_hidden"] = 32
    cfg["joint"]["jointnet"]["joint_hidden"] = 32
    return ModelConfig.from_nemo(cfg)


def make_tiny_model(speech: np.ndarray, att=(70, 1), seed: int = 0, eou_rate: float = 0.05) -> ASRModel:
    """Random weights, calibrated on `speech` so that about a third of the frames emit a token and
    <EOU> is sometimes emitted."""
    tok = Tokenizer.synthetic(40, (EOU_PIECE, EOB_PIECE))
    model = ASRModel(tiny_config(att), tok, name="tiny")
    model.randomize(seed, std=0.2)
    calibrate_joint_bias(model, speech, emit_rate=0.35, eou_rate=eou_rate)
    return model


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0


def espeak_wav(text: str, path: Path) -> Path:
    """16 kHz mono PCM16 speech from espeak-ng (resampled with sox)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed to make test speech (apt-get install espeak-ng sox)")
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="session")
def speech_wav(speech_dir: Path) -> Path:
    """About 4 s of speech with pauses between phrases."""
    return espeak_wav(" . . . ".join(PHRASES), speech_dir / "speech.wav")


@pytest.fixture(scope="session")
def speech(speech_wav: Path) -> np.ndarray:
    return read_wav(speech_wav)


@pytest.fixture(scope="session")
def short_speech(speech_dir: Path) -> np.ndarray:
    return read_wav(espeak_wav("good morning", speech_dir / "short.wav"))


@pytest.fixture(scope="session")
def tiny_model(speech: np.ndarray) -> ASRModel:
    return make_tiny_model(speech)


@pytest.fixture(params=["ws", "tcp"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each streaming transport in turn (server_helpers.open_client / transcribe_over take the name)."""
    return request.param


@pytest.fixture(scope="module")
def keyterm_case():
    """The NeMo key-term fixture of the small model: see keyterm_helpers.load_case."""
    from keyterm_helpers import load_case

    return load_case()

