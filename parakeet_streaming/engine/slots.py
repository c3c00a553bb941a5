"""Device-side state of every stream, preallocated once and indexed by slot.

Per slot: the encoder state (updated in place by the encoder), the RNN-T decoder state, the
last `PRE_ENCODE_CACHE` mel frames that the next chunk is prefixed with, and the key-term boosting
tree and its state (model/boosting.py). A step gathers the small decoder and mel rows of its slots
and writes them back; nothing is allocated per stream except a stream's own key-term tree.

`scratch_slots` adds encoder state past the last slot that no stream owns: the padding rows of a
bucketed (CUDA-graph) encoder step write there (engine/graphs.py).
"""
from __future__ import annotations

import torch
from torch import Tensor

from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.boosting import KeytermTable
from parakeet_streaming.model.encoder import EncoderState
from parakeet_streaming.model.rnnt import DecoderState

PRE_ENCODE_CACHE = 9  # mel frames of left context for the causal subsampling (chunks after the first)


class SlotTable:
    def __init__(self, model: ASRModel, num_slots: int, device: torch.device, dtype: torch.dtype,
                 scratch_slots: int = 0) -> None:
        self.num_slots = num_slots
        self.enc: EncoderState = model.encoder.initial_state(num_slots + scratch_slots, model.chunk_frames,
                                                             device, dtype)
        dec_dtype = next(model.decoder.parameters()).dtype  # float32 unless the whole model is cast
        with torch.no_grad():
            self._sos = model.greedy.initial_state(1, device, dec_dtype)
        self.dec = DecoderState(
            h=self._sos.h.repeat(1, num_slots, 1), c=self._sos.c.repeat(1, num_slots, 1),
            g=self._sos.g.repeat(num_slots, 1),
        )
        n_mels = model.config.features.n_mels
        # Zeros, as NeMo's streaming buffer pads a short pre-encode context with zero frames.
        self.mel_ctx = torch.zeros(num_slots, PRE_ENCODE_CACHE, n_mels, device=device, dtype=torch.float32)
        self.keyterms = KeytermTable(num_slots, model.config.decoder.vocab_size, device)

    def reset(self, slot: int) -> None:
        self.enc.reset(slot)
        self.dec.h[:, slot] = self._sos.h[:, 0]
        self.dec.c[:, slot] = self._sos.c[:, 0]
        self.dec.g[slot] = self._sos.g[0]
        self.mel_ctx[slot].zero_()
        self.keyterms.state[slot] = 0  # back to the root of the slot's tree (the tree is the Runner's to set)

    def gather(self, idx: Tensor) -> tuple[DecoderState, Tensor]:
        """Decoder state and mel context of some slots (small; the encoder state is used in place)."""
        dec = DecoderState(self.dec.h[:, idx], self.dec.c[:, idx], self.dec.g[idx])
        return dec, self.mel_ctx[idx]

    def scatter(self, idx: Tensor, dec: DecoderState, mel_ctx: Tensor) -> None:
        self.dec.h[:, idx] = dec.h
        self.dec.c[:, idx] = dec.c
        self.dec.g[idx] = dec.g
        self.mel_ctx[idx] = mel_ctx
