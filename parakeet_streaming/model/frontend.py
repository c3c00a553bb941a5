"""Streaming log-mel front end that reproduces NeMo's whole-signal features frame by frame.

NeMo computes, on the whole signal: preemphasis, a centred STFT (zero padding of n_fft/2 on both
sides) with a symmetric Hann window of win_length inside n_fft, the power spectrum, a Slaney mel
filterbank and log(x + guard); frame t is centred on sample hop*t and `len // hop` frames are valid.
Frame t only touches samples [hop*t - n_fft/2, hop*t + n_fft/2) (zero outside the signal), so it can
be produced as soon as the last sample its window weights is known: `SampleBuffer` keeps the samples
still needed, `MelFrontend.frames` turns a batch of sample segments into frames on the segments'
device (the model's: the STFT and mel run on the GPU when the model is there).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from parakeet_streaming.config import FeatureConfig


def slaney_mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> Tensor:
    """(n_mels, n_fft//2+1) triangular filters on the Slaney mel scale with Slaney area norm."""

    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        lin = f / (200.0 / 3)
        log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
        return np.where(f >= 1000.0, log, lin)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        lin = m * (200.0 / 3)
        log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
        return np.where(m >= 15.0, log, lin)

    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2:] - mel_pts[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


class Featurizer(nn.Module):
    """Holds NeMo's checkpoint buffers `window` (win_length,) and `fb` (1, n_mels, n_fft//2+1)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=False))
        fmax = cfg.highfreq if cfg.highfreq is not None else cfg.sample_rate / 2
        fb = slaney_mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.lowfreq, fmax)
        self.register_buffer("fb", fb.unsqueeze(0))


class MelFrontend(nn.Module):
    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.featurizer = Featurizer(cfg)

    def padded_window(self) -> Tensor:
        """The analysis window zero-padded (centred) to n_fft, as torch.stft applies it."""
        n_fft, win = self.cfg.n_fft, self.featurizer.window
        key = (win.data_ptr(), win._version, win.device)
        if getattr(self, "_window_key", None) != key:
            left = (n_fft - win.numel()) // 2
            self._window_key = key
            self._window = torch.nn.functional.pad(win.float(), (left, n_fft - win.numel() - left))
        return self._window

    def reach(self) -> int:
        """Offset from a frame's centre of the last sample with non-zero window weight."""
        nz = torch.nonzero(self.padded_window()).flatten()
        return int(nz[-1]) - self.cfg.n_fft // 2

    @torch.no_grad()
    def frames(self, segments: Tensor) -> Tensor:
        """Preemphasised-signal segments (B, hop*(F-1) + n_fft) -> log-mel frames (B, F, n_mels)."""
        cfg = self.cfg
        x = segments.float().unfold(1, cfg.n_fft, cfg.hop_length) * self.padded_window()
        spec = torch.fft.rfft(x, dim=-1)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power, self.featurizer.fb[0].float().t())
        return torch.log(mel + cfg.log_guard)


class SampleBuffer:
    """The samples of one stream that frames still need, with absolute indexing."""

    def __init__(self, cfg: FeatureConfig, reach: int) -> None:
        self.cfg, self.reach = cfg, reach
        self.half = cfg.n_fft // 2
        self.start = 0  # absolute index of data[0]
        self.data = np.zeros(0, dtype=np.float32)
        self.total = 0  # samples pushed so far
        self.finished = False

    def push(self, samples: np.ndarray) -> None:
        self.data = np.concatenate([self.data, np.asarray(samples, dtype=np.float32)])
        self.total += len(samples)

    def frames_available(self) -> int:
        """Number of leading frames whose every weighted sample is known (all valid ones at the end)."""
        if self.finished:
            return self.total // self.cfg.hop_length
        return max(0, (self.total - 1 - self.reach) // self.cfg.hop_length + 1)

    def segment(self, f0: int, f1: int) -> np.ndarray:
        """Preemphasised samples for frames [f0, f1): absolute [hop*f0 - n_fft/2, hop*(f1-1) + n_fft/2)."""
        out = np.empty(self.cfg.hop_length * (f1 - 1 - f0) + 2 * self.half, dtype=np.float32)
        self.segment_into(out, f0, f1)
        return out

    def segment_into(self, out: np.ndarray, f0: int, f1: int) -> int:
        """`segment(f0, f1)` written into the start of `out` (a row of a step's buffer); its length."""
        hop, a = self.cfg.hop_length, self.cfg.preemph
        lo, hi = hop * f0 - self.half, hop * (f1 - 1) + self.half
        y = out[: hi - lo]
        x = self._take(lo - 1, hi)
        if a:
            np.subtract(x[1:], a * x[:-1], out=y)
        else:
            y[:] = x[1:]
        y[max(0, self.total - lo):] = 0.0  # NeMo zeroes the preemphasised signal past its end
        return hi - lo

    def discard_before_frame(self, f: int) -> None:
        """Forget samples no frame >= f needs."""
        keep_from = self.cfg.hop_length * f - self.half - 1
        if keep_from > self.start:
            self.data = self.data[keep_from - self.start:]
            self.start = keep_from

    def _take(self, lo: int, hi: int) -> np.ndarray:
        out = np.zeros(hi - lo, dtype=np.float32)
        s, e = max(lo, self.start), min(hi, self.start + len(self.data))
        if e > s:
            out[s - lo:e - lo] = self.data[s - self.start:e - self.start]
        return out
