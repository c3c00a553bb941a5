"""Endpointing for models without an end-of-utterance token: a VAD and a trailing-silence rule.

Two signals can end an utterance after `silence_ms` of trailing silence:
- `vad`: Silero VAD's speech probability per 32 ms of audio. The utterance ends `silence_ms` after
  the last speech frame, once speech was heard since the previous end. Robust to a decoder that
  emits stray tokens on noise, so it is the default.
- `tokens`: the decoder emitted no non-blank token for `silence_ms` (80 ms encoder frames) after at
  least one token. Needs no extra model, but follows the decoder: hallucinated tokens keep an
  utterance open, and a token-less stretch of speech ends it.
`either` ends the utterance on whichever fires first.

The VAD runs on the engine thread, batched over every stream that received audio since the last
iteration (one tiny forward per 32 ms frame index, not per stream), right before the ASR step.
Running it there rather than in each session keeps it off the event loop (no per-message torch
call holding the GIL next to the sockets), batches it across streams, and puts its decisions on
the same thread and timeline as the decoder, which must place the end between two tokens.

Model state is not reset at a silence endpoint (as at `<EOU>`): only the utterance count moves on.
"""
from __future__ import annotations

import importlib.util
import warnings
from bisect import insort
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

SIGNALS = ("vad", "tokens", "either")
DEFAULT_SILENCE_MS_WITHOUT_EOU = 500  # the `large` default; OpenAI Realtime's server VAD uses 500 too
HYSTERESIS = 0.15  # speech continues until the probability falls this far below the threshold


@dataclass(frozen=True)
class EndpointConfig:
    silence_ms: int = 0  # 0: off
    signal: str = "vad"
    threshold: float = 0.5  # VAD speech probability

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ValueError(f"endpoint signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.silence_ms < 0:
            raise ValueError(f"endpoint silence must be >= 0 ms, got {self.silence_ms}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be in (0, 1), got {self.threshold}")

    @property
    def enabled(self) -> bool:
        return self.silence_ms > 0

    @property
    def uses_vad(self) -> bool:
        return self.enabled and self.signal in ("vad", "either")

    @property
    def uses_tokens(self) -> bool:
        return self.enabled and self.signal in ("tokens", "either")


def resolve(silence_ms: int | None, signal: str, threshold: float, model_has_eou: bool) -> EndpointConfig:
    """The flags -> a config. No explicit silence: off for models with `<EOU>`, else the default."""
    if silence_ms is None:
        silence_ms = 0 if model_has_eou else DEFAULT_SILENCE_MS_WITHOUT_EOU
    return EndpointConfig(int(silence_ms), signal, threshold)


# --- Silero VAD ------------------------------------------------------------------------------


class SileroVAD(nn.Module):
    """Silero VAD v5+ (16 kHz), batched, with the LSTM state passed in and out.

    Input: (B, 64 + 512) samples, the last 64 samples of the previous frame then the new frame.
    Output: (B,) speech probability and the new (h, c).
    """

    FRAME, CONTEXT, RATE = 512, 64, 16000

    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, 256, stride=128, bias=False)  # real and imaginary DFT rows
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = nn.functional.pad(x.unsqueeze(1), (0, self.CONTEXT), mode="reflect")
        spec = self.stft_conv(x)
        mag = torch.sqrt(spec[:, :129].square() + spec[:, 129:].square())
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            mag = torch.relu(conv(mag))
        h, c = self.lstm_cell(mag.squeeze(-1), (h, c))
        p = torch.sigmoid(self.final_conv(torch.relu(h).unsqueeze(-1)))
        return p.reshape(p.size(0), -1).mean(1), h, c


def silero_weights_dir() -> Path:
    """The model files the `silero-vad` package ships, found without importing the package
    (its __init__ sets torch's global thread count to 1)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the silero-vad package is not installed (pip install silero-vad)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


# The package's TorchScript model (its current version; the .safetensors file it also ships holds
# older weights) -> our module's parameter names.
_JIT_NAMES = {
    "stft.forward_basis_buffer": "stft_conv.weight", "decoder.rnn.weight_ih": "lstm_cell.weight_ih",
    "decoder.rnn.weight_hh": "lstm_cell.weight_hh", "decoder.rnn.bias_ih": "lstm_cell.bias_ih",
    "decoder.rnn.bias_hh": "lstm_cell.bias_hh", "decoder.decoder.2.weight": "final_conv.weight",
    "decoder.decoder.2.bias": "final_conv.bias",
    **{f"encoder.{i}.reparam_conv.{k}": f"conv{i + 1}.{k}" for i in range(4) for k in ("weight", "bias")},
}


def load_silero() -> SileroVAD:
    """Silero VAD's 16 kHz weights, read from the TorchScript file (no torchaudio/onnxruntime); if this
    torch cannot load TorchScript any more, the package's .safetensors copy (older weights)."""
    from safetensors.torch import load_file

    net = SileroVAD()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            jit = torch.jit.load(str(silero_weights_dir() / "silero_vad.jit"), map_location="cpu")
        tensors = {**dict(jit._model.named_parameters()), **dict(jit._model.named_buffers())}
        state = {ours: tensors[theirs].detach().clone() for theirs, ours in _JIT_NAMES.items()}
    except (AttributeError, RuntimeError, KeyError):
        state = load_file(str(silero_weights_dir() / "silero_vad_16k.safetensors"))
    net.load_state_dict(state)
    return net.eval()


class VadBank:
    """Silero VAD for every stream slot: preallocated state, frames of all slots run batched."""

    def __init__(self, num_slots: int, sample_rate: int, net: SileroVAD | None = None) -> None:
        if sample_rate != SileroVAD.RATE:
            raise ValueError(f"the VAD runs at {SileroVAD.RATE} Hz; the model's rate is {sample_rate}")
        self.net = net or load_silero()
        self.frame_ms = SileroVAD.FRAME * 1000 // SileroVAD.RATE
        self.h = torch.zeros(num_slots, 128)
        self.c = torch.zeros(num_slots, 128)
        self.context = torch.zeros(num_slots, SileroVAD.CONTEXT)
        self._pending: list[np.ndarray] = [np.zeros(0, np.float32)] * num_slots
        self._frames_done = [0] * num_slots
        self._origin = [0] * num_slots  # stream sample where the slot's VAD started

    def reset(self, slot: int, start_sample: int = 0) -> None:
        """Fresh state; the next pushed sample is the stream's sample `start_sample`."""
        self.h[slot] = 0
        self.c[slot] = 0
        self.context[slot] = 0
        self._pending[slot] = np.zeros(0, np.float32)
        self._frames_done[slot] = 0
        self._origin[slot] = start_sample

    def push(self, slot: int, samples: np.ndarray) -> None:
        self._pending[slot] = np.concatenate([self._pending[slot], samples])

    def has_frames(self, slot: int) -> bool:
        return len(self._pending[slot]) >= SileroVAD.FRAME

    @torch.inference_mode()
    def run(self, slots: Sequence[int]) -> dict[int, tuple[int, list[float]]]:
        """Every complete frame of `slots` -> {slot: (start ms of its first new frame, probabilities)}."""
        n = SileroVAD.FRAME
        frames = {s: len(self._pending[s]) // n for s in slots}
        start = {s: (self._origin[s] + self._frames_done[s] * n) * 1000 // SileroVAD.RATE for s in slots}
        out: dict[int, tuple[int, list[float]]] = {s: (start[s], []) for s in slots if frames[s]}
        for j in range(max(frames.values(), default=0)):
            batch = [s for s in out if frames[s] > j]
            idx = torch.tensor(batch)
            new = torch.from_numpy(np.stack([self._pending[s][j * n:(j + 1) * n] for s in batch]))
            x = torch.cat([self.context[idx], new], dim=1)
            p, self.h[idx], self.c[idx] = self.net(x, self.h[idx], self.c[idx])
            self.context[idx] = new[:, -SileroVAD.CONTEXT:]
            for s, prob in zip(batch, p.tolist()):
                out[s][1].append(prob)
        for s in out:
            self._pending[s] = self._pending[s][frames[s] * n:]
            self._frames_done[s] += frames[s]
        return out


# --- the endpoint rule of one stream ---------------------------------------------------------


@dataclass
class Endpointer:
    """When one stream's utterances end by silence; all times are ms of the stream's audio.

    The VAD side records candidate endpoints as soon as it has heard `silence_ms` of silence after
    speech. The decoder side asks `due(limit)` while walking a step's tokens in time order: an
    endpoint at E <= limit ends the utterance before the tokens that start at or after E.
    """

    config: EndpointConfig
    frame_ms: int = 80  # decoder frame
    _last_end: int = -1  # when the previous utterance ended (any reason)
    _candidates: list[tuple[int, int]] = field(default_factory=list)  # (speech end, endpoint), sorted
    _in_speech: bool = False
    _speech_end: int | None = None
    _candidate_made: bool = False
    _token_end: int | None = None  # end of the frame of the utterance's last token

    def on_vad(self, start_ms: int, frame_ms: int, probs: Sequence[float]) -> None:
        cfg = self.config
        for j, p in enumerate(probs):
            t1 = start_ms + (j + 1) * frame_ms
            if p >= cfg.threshold or (self._in_speech and p >= cfg.threshold - HYSTERESIS):
                self._in_speech, self._speech_end, self._candidate_made = True, t1, False
                continue
            self._in_speech = False
            if self._speech_end is not None and not self._candidate_made and t1 - self._speech_end >= cfg.silence_ms:
                insort(self._candidates, (self._speech_end, self._speech_end + cfg.silence_ms))
                self._candidate_made = True

    def on_token(self, start_ms: int) -> None:
        self._token_end = start_ms + self.frame_ms

    def ended(self, at_ms: int) -> None:
        """The utterance ended at `at_ms` (by this rule, the model's <EOU>, or a flush)."""
        self._last_end = max(self._last_end, at_ms)
        self._token_end = None
        self._candidates = [c for c in self._candidates if c[0] > self._last_end]

    def due(self, limit_ms: int) -> int | None:
        """The earliest endpoint at or before `limit_ms`, if any (the caller then calls `ended`)."""
        times = []
        if self.config.uses_vad:
            self._candidates = [c for c in self._candidates if c[0] > self._last_end]
            if self._candidates and self._candidates[0][1] <= limit_ms:
                times.append(self._candidates[0][1])
        if self.config.uses_tokens and self._token_end is not None:
            end = self._token_end + self.config.silence_ms
            if end <= limit_ms:
                times.append(end)
        return min(times) if times else None
