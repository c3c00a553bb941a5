"""audio.py: payload decoding, validation, streaming resampling, WAV reading."""
from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr

from parakeet_streaming.audio import AudioError, Resampler, decode, from_samples, read_wav, resample


def test_pcm16_decodes_little_endian_scaled():
    payload = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    out = decode(payload, "pcm16")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_pcm16_odd_byte_count_is_bad_audio():
    with pytest.raises(AudioError) as err:
        decode(b"\x00\x01\x02", "pcm16")
    assert err.value.code == "bad_audio"


def test_f32_roundtrip_and_length_check():
    x = np.array([0.25, -0.5, 1.0], dtype="<f4")
    np.testing.assert_array_equal(decode(x.tobytes(), "f32"), x)
    with pytest.raises(AudioError) as err:
        decode(x.tobytes()[:-1], "f32")
    assert err.value.code == "bad_audio"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_f32_non_finite_rejected(bad):
    payload = np.array([0.1, bad], dtype="<f4").tobytes()
    with pytest.raises(AudioError, match="NaN or infinite"):
        decode(payload, "f32")


def test_empty_payloads_are_fine():
    for enc in ("pcm16", "f32", "mulaw"):
        assert decode(b"", enc).size == 0


def test_unknown_encoding():
    with pytest.raises(AudioError) as err:
        decode(b"\x00\x00", "opus")
    assert err.value.code == "unsupported_encoding"


def _mulaw_encode_reference(x: int) -> int:
    """Textbook G.711 u-law encoder (for the round-trip check)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if x < 0 else 0
    x = min(abs(x), clip) + bias
    exponent = 7
    for exp in range(7, -1, -1):
        if x & (0x80 << exp):
            exponent = exp
            break
    mantissa = (x >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def test_mulaw_known_values_and_roundtrip():
    out = decode(bytes([0xFF, 0x7F, 0x80, 0x00]), "mulaw") * 32768
    np.testing.assert_allclose(out, [0, 0, 32124, -32124])
    for value in (-30000, -1000, -5, 0, 7, 1234, 20000):
        back = decode(bytes([_mulaw_encode_reference(value)]), "mulaw")[0] * 32768
        assert abs(back - value) <= max(8, abs(value) * 0.07)


def test_from_samples_validates():
    np.testing.assert_allclose(from_samples([0.5, -0.5]), [0.5, -0.5])
    with pytest.raises(AudioError):
        from_samples([0.1, float("nan")])
    with pytest.raises(AudioError):
        from_samples(["a"])


def test_resampler_chunked_matches_whole_signal():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(8000 * 2).astype(np.float32) * 0.1
    r = Resampler(8000, 16000)
    parts, pos = [], 0
    for n in (1, 7, 160, 999, 3000):
        parts.append(r.push(x[pos:pos + n]))
        pos += n
    parts.append(r.push(x[pos:]))
    parts.append(r.flush())
    chunked = np.concatenate(parts)
    whole = soxr.ResampleStream(8000, 16000, 1, dtype="float32", quality="HQ").resample_chunk(x, last=True)
    assert abs(len(chunked) - 2 * len(x)) <= 2
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_resampler_passthrough_at_same_rate():
    r = Resampler(16000, 16000)
    x = np.arange(10, dtype=np.float32)
    assert r.passthrough
    np.testing.assert_array_equal(r.push(x), x)
    assert r.flush().size == 0


def test_resampler_rejects_bad_rate():
    with pytest.raises(AudioError):
        Resampler(0, 16000)


def test_resample_offline_length():
    x = np.zeros(44100, dtype=np.float32)
    assert abs(len(resample(x, 44100, 16000)) - 16000) <= 1


def _write_wav(path: Path, frames: bytes, width: int, channels: int = 1, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)


def test_read_wav_pcm16_mono(tmp_path):
    x = np.array([0, 16384, -16384], dtype="<i2")
    _write_wav(tmp_path / "a.wav", x.tobytes(), 2, rate=22050)
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and samples.dtype == np.float32
    np.testing.assert_allclose(samples, [0, 0.5, -0.5])


def test_read_wav_stereo_mixed_to_mono(tmp_path):
    x = np.array([16384, 0, -16384, -16384], dtype="<i2")  # frames (L, R)
    _write_wav(tmp_path / "s.wav", x.tobytes(), 2, channels=2)
    samples, _ = read_wav(tmp_path / "s.wav")
    np.testing.assert_allclose(samples, [0.25, -0.5])


@pytest.mark.parametrize("width", [1, 3, 4])
def test_read_wav_other_widths(tmp_path, width):
    ref = np.array([0.0, 0.5, -0.5], dtype=np.float64)
    if width == 1:
        raw = (ref * 128 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = (ref * (1 << 23)).astype(np.int32)
        raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        raw = (ref * (1 << 31)).astype("<i4").tobytes()
    _write_wav(tmp_path / "w.wav", raw, width)
    samples, _ = read_wav(tmp_path / "w.wav")
    np.testing.assert_allclose(samples, ref, atol=1e-2)


def test_read_wav_float32_via_riff_fallback(tmp_path):
    x = np.array([0.1, -0.2, 0.3, -0.4], dtype="<f4")  # 2 frames, stereo
    fmt = struct.pack("<HHIIHH", 3, 2, 8000, 8000 * 8, 8, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", x.nbytes) + x.tobytes()
    (tmp_path / "f.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    samples, rate = read_wav(tmp_path / "f.wav")
    assert rate == 8000
    np.testing.assert_allclose(samples, [-0.05, -0.05], atol=1e-6)


def test_read_wav_rejects_non_wav(tmp_path):
    p = tmp_path / "x.mp3"
    p.write_bytes(b"ID3\x03\x00not a wav at all" * 10)
    with pytest.raises(AudioError, match="not a WAV"):
        read_wav(p)
