"""Client-side audio: read files, resample to the server's rate, encode little-endian pcm16."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from parakeet_streaming.audio import AudioError, Resampler, read_wav

__all__ = ["AudioError", "PcmEncoder", "load_audio", "to_pcm16"]


def load_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A WAV file -> (float32 mono samples in [-1, 1], its sample rate). Raises AudioError / OSError."""
    return read_wav(path)


def as_samples(samples: np.ndarray | Sequence[float]) -> np.ndarray:
    """Float mono audio as float32, rejecting NaN/inf (they would become loud garbage in pcm16)."""
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected mono audio (a 1-D array), got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError("audio contains NaN or infinite samples")
    return arr


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] -> little-endian int16 bytes (clipped; exact for pcm16-sourced audio)."""
    ints = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    return ints.tobytes()


class PcmEncoder:
    """Float audio at `in_rate` -> pcm16 bytes at `out_rate`, chunk by chunk (soxr keeps filter state)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._resampler = Resampler(in_rate, out_rate)

    def push(self, samples: np.ndarray | Sequence[float]) -> bytes:
        return to_pcm16(self._resampler.push(as_samples(samples)))

    def flush(self) -> bytes:
        return to_pcm16(self._resampler.flush())
