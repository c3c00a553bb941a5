"""Shared by the client tests: the reference transcript from `parakeet-server transcribe`, a
recording engine to check the audio a browser sent, and `parakeet-client` as a subprocess."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from test_loader import write_nemo

SERVER_CLI = [sys.executable, "-m", "parakeet_streaming.cli"]
# The installed console script ([project.scripts]); the module when the package isn't installed.
_SCRIPT = Path(sys.executable).with_name("parakeet-client")
CLIENT = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "parakeet_streaming.client.cli"]


async def run_client(*args: str) -> tuple[int, str, str]:
    """`parakeet-client ARGS`: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(*CLIENT, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


def offline_transcript(model, wav: Path, workdir: Path) -> str:
    """What `parakeet-server transcribe WAV` prints with `model` (saved as a .nemo file)."""
    nemo = write_nemo(model, workdir / "tiny.nemo")
    out = subprocess.run(SERVER_CLI + ["transcribe", str(wav), "--model", str(nemo)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    assert text  # the tiny model is calibrated to emit tokens on this speech
    return text


class RecordingEngine:
    """The real engine, plus a copy of every sample each stream sends it."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.audio: dict[int, list[np.ndarray]] = {}

    def send_audio(self, stream_id: int, samples: np.ndarray, final: bool = False) -> None:
        self.audio.setdefault(stream_id, []).append(np.array(samples, dtype=np.float32))
        self._engine.send_audio(stream_id, samples, final)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


def file_is_in(speech: np.ndarray, received: np.ndarray) -> bool:
    """Does `received` contain `speech` (up to resampling error and a delay)? Normalised
    cross-correlation at the best lag."""
    assert len(received) >= len(speech) * 0.9, (len(received), len(speech))
    n = len(received) + len(speech)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(received, size) * np.conj(np.fft.rfft(speech, size)), size)
    lag = int(np.argmax(corr))
    lag = lag - size if lag > size // 2 else lag
    r0, s0 = max(lag, 0), max(-lag, 0)
    length = min(len(received) - r0, len(speech) - s0)
    part, ref = received[r0:r0 + length], speech[s0:s0 + length]
    score = float(np.dot(part, ref) / (np.linalg.norm(part) * np.linalg.norm(ref) + 1e-9))
    print(f"fake microphone vs file: correlation {score:.3f} at lag {lag} samples")
    return score > 0.9
