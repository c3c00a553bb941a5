"""The streaming front end must produce exactly the whole-signal log-mel frames, for any push sizes."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parakeet_streaming.config import FeatureConfig
from parakeet_streaming.model.frontend import MelFrontend, SampleBuffer

CFG = FeatureConfig()
FRONTEND = MelFrontend(CFG)


def whole_signal_mel(x: np.ndarray) -> torch.Tensor:
    """Independent fp32 reference, written as NeMo describes its preprocessor: preemphasis, centred STFT
    with zero padding, power spectrum, mel, log guard; len // hop valid frames. (T, n_mels)."""
    sig = torch.from_numpy(x).float()
    sig = torch.cat([sig[:1], sig[1:] - 0.97 * sig[:-1]])
    spec = torch.stft(sig, n_fft=512, hop_length=160, win_length=400, center=True, pad_mode="constant",
                      window=torch.hann_window(400, periodic=False, dtype=torch.float32), return_complex=True)
    power = spec.abs().pow(2.0)
    mel = torch.log(FRONTEND.featurizer.fb[0] @ power + 2.0**-24)
    return mel[:, : len(x) // 160].T.float()


def stream_mel(x: np.ndarray, pushes: list[int]) -> torch.Tensor:
    buf = SampleBuffer(CFG, FRONTEND.reach())
    out, done, pos = [], 0, 0
    for n in pushes + [len(x)]:
        buf.push(x[pos:pos + n])
        pos = min(pos + n, len(x))
        if pos == len(x):
            buf.finished = True
        avail = buf.frames_available()
        if avail > done:
            seg = torch.from_numpy(buf.segment(done, avail)).unsqueeze(0)
            out.append(FRONTEND.frames(seg)[0])
            buf.discard_before_frame(avail)
            done = avail
        if buf.finished:
            break
    return torch.cat(out) if out else torch.zeros(0, CFG.n_mels)


def test_filterbank_is_slaney() -> None:
    fb = FRONTEND.featurizer.fb[0]
    assert fb.shape == (128, 257)
    # Slaney area norm: each filter's peak is 2 / (bandwidth in Hz).
    assert torch.all(fb.max(dim=1).values > 0)
    assert float(fb[:, 0].abs().sum()) == 0.0  # no weight at DC for fmin = 0 triangles' left edges
    assert FRONTEND.reach() == 198  # window support ends 198 samples after the frame centre


def test_frames_wait_for_their_last_sample() -> None:
    buf = SampleBuffer(CFG, FRONTEND.reach())
    buf.push(np.zeros(160 * 3 + 198, dtype=np.float32))
    assert buf.frames_available() == 3
    buf.push(np.zeros(1, dtype=np.float32))
    assert buf.frames_available() == 4
    buf.finished = True
    assert buf.frames_available() == (160 * 3 + 199) // 160


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), length=st.integers(0, 9000),
       pushes=st.lists(st.integers(1, 3000), min_size=0, max_size=12))
def test_streaming_equals_whole_signal(seed: int, length: int, pushes: list[int]) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(length) * 0.1).astype(np.float32)
    ref = whole_signal_mel(x)
    got = stream_mel(x, pushes)
    assert got.shape == ref.shape
    if len(ref):
        assert torch.max(torch.abs(got - ref)) < 1e-3


def test_speech_features_match_closely(speech: np.ndarray) -> None:
    ref = whole_signal_mel(speech)
    got = stream_mel(speech, [1234, 1, 7, 4000, 160, 333] * 20)
    assert got.shape == ref.shape
    assert torch.max(torch.abs(got - ref)) < 1e-4


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), length=st.integers(0, 6000), f0=st.integers(0, 30), n=st.integers(1, 20))
def test_segment_into_a_dirty_row_equals_segment(seed: int, length: int, f0: int, n: int) -> None:
    """The runner packs each step's segments into a reused buffer: writing into a row full of old
    samples gives exactly `segment`, and says how much of the row it wrote."""
    rng = np.random.default_rng(seed)
    buf = SampleBuffer(CFG, FRONTEND.reach())
    buf.push((rng.standard_normal(length) * 0.1).astype(np.float32))
    buf.finished = bool(seed % 2)
    expected = buf.segment(f0, f0 + n)
    row = rng.standard_normal(len(expected) + 100).astype(np.float32)
    used = buf.segment_into(row, f0, f0 + n)
    assert used == len(expected) == CFG.hop_length * (n - 1) + CFG.n_fft
    np.testing.assert_array_equal(row[:used], expected)
