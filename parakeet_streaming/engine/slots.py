"""Device-side state of every stream, preallocated once and indexed by slot.

Per slot: the encoder caches, the RNN-T decoder state and the last `pre_encode_cache` mel frames
that the next chunk is prefixed with. A batched step gathers the rows of its slots, runs, and writes
the new rows back; nothing is allocated per stream.
"""
from __future__ import annotations

import torch
from torch import Tensor

from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.encoder import EncoderCache
from parakeet_streaming.model.rnnt import DecoderState

PRE_ENCODE_CACHE = 9  # mel frames of left context for the causal subsampling (chunks after the first)


class SlotTable:
    def __init__(self, model: ASRModel, num_slots: int, device: torch.device, dtype: torch.dtype) -> None:
        self.num_slots = num_slots
        self.enc = model.encoder.initial_cache(num_slots, device, dtype)
        with torch.no_grad():
            self._sos = model.greedy.initial_state(1, device, dtype)
        self.dec = DecoderState(
            h=self._sos.h.repeat(1, num_slots, 1), c=self._sos.c.repeat(1, num_slots, 1),
            g=self._sos.g.repeat(num_slots, 1),
        )
        n_mels = model.config.features.n_mels
        # Zeros, as NeMo's streaming buffer pads a short pre-encode context with zero frames.
        self.mel_ctx = torch.zeros(num_slots, PRE_ENCODE_CACHE, n_mels, device=device, dtype=torch.float32)

    def reset(self, slot: int) -> None:
        self.enc.key[:, slot].zero_()
        self.enc.value[:, slot].zero_()
        self.enc.time[:, slot].zero_()
        self.enc.length[slot] = 0
        self.dec.h[:, slot] = self._sos.h[:, 0]
        self.dec.c[:, slot] = self._sos.c[:, 0]
        self.dec.g[slot] = self._sos.g[0]
        self.mel_ctx[slot].zero_()

    def gather(self, idx: Tensor) -> tuple[EncoderCache, DecoderState, Tensor]:
        enc = EncoderCache(self.enc.key[:, idx], self.enc.value[:, idx], self.enc.time[:, idx], self.enc.length[idx])
        dec = DecoderState(self.dec.h[:, idx], self.dec.c[:, idx], self.dec.g[idx])
        return enc, dec, self.mel_ctx[idx]

    def scatter(self, idx: Tensor, enc: EncoderCache, dec: DecoderState, mel_ctx: Tensor) -> None:
        self.enc.key[:, idx] = enc.key
        self.enc.value[:, idx] = enc.value
        self.enc.time[:, idx] = enc.time
        self.enc.length[idx] = enc.length
        self.dec.h[:, idx] = dec.h
        self.dec.c[:, idx] = dec.c
        self.dec.g[idx] = dec.g
        self.mel_ctx[idx] = mel_ctx
