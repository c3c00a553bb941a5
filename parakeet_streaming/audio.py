"""Audio payloads -> float32 mono samples: decode, validate, resample, read WAV files.

Policy on bad samples: a payload with NaN or infinite values is rejected as a whole (`bad_audio`),
never sanitized, so the client learns its audio is broken instead of getting a silently wrong
transcript. The error is non-fatal: the stream keeps running, only that payload is dropped.
Finite f32 samples outside [-1, 1] are passed through unchanged (the model tolerates them).
"""
from __future__ import annotations

import struct
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

ENCODINGS: tuple[str, ...] = ("pcm16", "f32", "mulaw")


class AudioError(ValueError):
    """Audio we cannot use. `code` is the protocol error code to report."""

    def __init__(self, message: str, code: str = "bad_audio") -> None:
        super().__init__(message)
        self.code = code


def _mulaw_table() -> np.ndarray:
    """G.711 u-law byte -> linear sample, scaled to [-1, 1)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    linear = np.where(u & 0x80, -magnitude, magnitude)
    return (linear / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    """G.711 A-law byte -> linear sample, scaled to [-1, 1) (used by the Deepgram / OpenAI Realtime
    endpoints; not a native-protocol encoding)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1))
    linear = np.where(a & 0x80, magnitude, -magnitude)
    return (linear / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()


def decode(payload: bytes, encoding: str) -> np.ndarray:
    """Raw bytes in `encoding` -> float32 mono samples. Raises AudioError."""
    if encoding == "pcm16":
        if len(payload) % 2:
            raise AudioError(f"pcm16 payload has an odd byte count ({len(payload)})")
        return np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
    if encoding == "f32":
        if len(payload) % 4:
            raise AudioError(f"f32 payload byte count ({len(payload)}) is not a multiple of 4")
        return check_finite(np.frombuffer(payload, dtype="<f4").astype(np.float32))
    if encoding == "mulaw":
        return _MULAW[np.frombuffer(payload, dtype=np.uint8)]
    if encoding == "alaw":
        return _ALAW[np.frombuffer(payload, dtype=np.uint8)]
    raise AudioError(f"unsupported encoding {encoding!r} (supported: {', '.join(ENCODINGS)})",
                     code="unsupported_encoding")


def from_samples(samples: list[float] | np.ndarray) -> np.ndarray:
    """The debug `samples` form -> float32, rejecting non-finite values."""
    try:
        arr = np.asarray(samples, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise AudioError("samples must be a list of numbers") from exc
    return check_finite(arr)


def check_finite(samples: np.ndarray) -> np.ndarray:
    if samples.size and not np.isfinite(samples).all():
        raise AudioError("audio contains NaN or infinite samples")
    return samples


@dataclass
class Resampler:
    """Streaming resampler of one stream: any rate -> `out_rate`, float32 mono.

    Chunks may have any length; the output is what the whole signal resampled at once would give
    (soxr keeps the filter state between chunks). Call `flush()` once at the end of the stream.
    """

    in_rate: int
    out_rate: int = 16000
    _stream: soxr.ResampleStream | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.in_rate <= 0 or self.out_rate <= 0:
            raise AudioError(f"invalid sample rate {self.in_rate} -> {self.out_rate}")
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ")

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def push(self, samples: np.ndarray) -> np.ndarray:
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


def resample(samples: np.ndarray, in_rate: int, out_rate: int) -> np.ndarray:
    """Whole-signal resampling (offline use, e.g. `transcribe`)."""
    if in_rate == out_rate:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), in_rate, out_rate, quality="HQ")


# --- WAV files -------------------------------------------------------------------------------

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file -> (float32 mono samples in [-1, 1], sample rate). Raises AudioError.

    PCM 8/16/24/32-bit through the stdlib `wave` module; IEEE-float and WAVE_FORMAT_EXTENSIBLE
    files (which `wave` rejects before Python 3.12) through a small RIFF chunk reader.
    Multi-channel audio is mixed down to mono by averaging.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
        fmt = _WAVE_FORMAT_PCM
    except (wave.Error, EOFError) as exc:
        channels, width, rate, fmt, raw = _read_riff(path, exc)
    samples = _pcm_to_float(raw, width, fmt)
    return _to_mono(samples, channels), rate


def _read_riff(path: Path, cause: Exception) -> tuple[int, int, int, int, bytes]:
    """Fallback chunk reader: (channels, sample width, rate, format tag, data bytes)."""
    data = path.read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a WAV file ({cause})")
    fmt_chunk, payload, pos = None, None, 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            fmt_chunk = body
        elif cid == b"data":
            payload = body
        pos += 8 + size + (size & 1)
    if fmt_chunk is None or payload is None or len(fmt_chunk) < 16:
        raise AudioError(f"{path}: WAV file without a usable fmt/data chunk ({cause})")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt_chunk) >= 26:
        tag = struct.unpack("<H", fmt_chunk[24:26])[0]  # first two bytes of the SubFormat GUID
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT) or channels < 1:
        raise AudioError(f"{path}: unsupported WAV format (tag {tag}, {channels} channels)")
    width = bits // 8
    usable = len(payload) - len(payload) % (width * channels)
    return channels, width, rate, tag, payload[:usable]


def _pcm_to_float(raw: bytes, width: int, fmt: int) -> np.ndarray:
    if fmt == _WAVE_FORMAT_IEEE_FLOAT:
        if width == 4:
            return check_finite(np.frombuffer(raw, dtype="<f4").astype(np.float32))
        if width == 8:
            return check_finite(np.frombuffer(raw, dtype="<f8").astype(np.float32))
        raise AudioError(f"unsupported float WAV sample width {width * 8} bits")
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints & 0x800000, ints - (1 << 24), ints)
        return (ints / float(1 << 23)).astype(np.float32)
    if width == 4:
        return (np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise AudioError(f"unsupported WAV sample width {width * 8} bits")


def _to_mono(samples: np.ndarray, channels: int) -> np.ndarray:
    if channels == 1:
        return samples
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
