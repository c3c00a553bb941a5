"""A stream's incoming audio policy, shared by every wire protocol: the client's declared rate
resampled to the model's (the resampler's tail drained at a flush, a rate change and the end), and
the --max-stream-seconds budget. Sans-I/O: samples in, model-rate samples out."""
from __future__ import annotations

import numpy as np

from parakeet_streaming import audio


class AudioIntake:
    def __init__(self, rate: int, model_rate: int, max_seconds: float) -> None:
        self.rate, self.model_rate, self.max_seconds = rate, model_rate, max_seconds
        self.seconds = 0.0  # client audio taken so far
        self._resampler = audio.Resampler(rate, model_rate)

    def push(self, samples: np.ndarray, rate: int | None = None) -> tuple[np.ndarray, bool]:
        """Client samples (at `rate`, default the current one) -> (model-rate samples, over budget).
        Over budget, only the part within it is taken (the caller then ends the stream with drain())."""
        head = self.drain() if rate is not None and rate != self.rate else None
        if head is not None:
            self.rate = rate
            self._resampler = audio.Resampler(rate, self.model_rate)
        fits = max(0, int(round((self.max_seconds - self.seconds) * self.rate)))
        over = len(samples) > fits
        samples = samples[:fits] if over else samples
        self.seconds += len(samples) / self.rate
        out = self._resampler.push(samples)
        return (out if head is None or not head.size else np.concatenate([head, out])), over

    def drain(self) -> np.ndarray:
        """The resampler's tail: everything taken so far is out; later audio starts afresh."""
        tail = self._resampler.flush()
        if not self._resampler.passthrough:
            self._resampler = audio.Resampler(self.rate, self.model_rate)
        return tail
