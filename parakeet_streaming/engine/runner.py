"""One batched streaming step: new audio -> mel frames -> subsampling -> encoder layers -> greedy RNN-T.

Chunking follows NeMo's cache-aware reference streaming, so every chunk's encoder output and tokens
equal NeMo's: with lookahead R and subsampling factor S (8), the first chunk is 1 + S*R mel frames
with no left context, every later chunk is S*(R+1) new frames prefixed by the previous S+1 frames,
of which the first 2 subsampled frames are dropped. Each chunk yields R+1 encoder frames.

End of stream: the stream's valid mel frames are len // hop (NeMo's own feature length; its extra
all-zero frame is not fed). Whatever is left after the last full chunk, even a single frame, goes
through as one shorter chunk with its true length: padded positions are masked exactly as NeMo masks
a short chunk, so the tail is deterministic and the same whether the stream is alone or batched.

Key terms (model/boosting.py): each stream may have its own phrase list, given at `open` or replaced
with `set_keyterms`; compiled trees are cached by list, so streams with the same list share one.

Host and device: the step's shapes and lengths are known on the host from the plans, so it reads
back from the device only in greedy decoding (its one copy of the emissions, and on a GPU a check
for the end every T iterations: model/rnnt.py) and, in a step with a short tail chunk, where the
encoder picks the frames it writes. The samples go in through one reused (on CUDA: pinned) buffer;
the mel front end runs on the device.
With `cuda_graphs=True`, the rows of a step that are steady-state chunks (not the first, a full
chunk) run the subsampling and encoder through engine/graphs.py (CUDA graphs at bucketed batch sizes
on a CUDA device; on the CPU the same padded path, eagerly); first and tail chunks, which have other
lengths, run eagerly beside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from parakeet_streaming.engine.graphs import BucketedGraphs
from parakeet_streaming.engine.slots import PRE_ENCODE_CACHE, SlotTable
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.boosting import (MAX_KEYTERM_TOKENS, MAX_KEYTERMS, BoostingParams, BoostingTree,
                                               Keyterm, KeytermCompiler)
from parakeet_streaming.model.encoder import HostLayout, subsampled_length
from parakeet_streaming.model.frontend import SampleBuffer
from parakeet_streaming.model.transfer import pinned, to_device

DROP_PRE_ENCODED = 2  # subsampled frames that only the pre-encode context produced
Keyterms = Sequence[str | Keyterm | tuple[str, float]]


@dataclass
class StepOutput:
    slot: int
    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    token_frames: list[int] = field(default_factory=list)
    frames_decoded: int = 0
    samples_covered: int = 0  # stream samples that every decoded frame has seen (all of them when done)
    done: bool = False


@dataclass
class _Cursor:
    audio: SampleBuffer
    chunks: int = 0  # streaming steps taken
    next_frame: int = 0  # first mel frame not yet fed to the encoder
    frames_decoded: int = 0  # encoder frames decoded so far
    done: bool = False


@dataclass
class _Plan:
    slot: int
    first: bool
    f0: int
    n: int  # new mel frames in this chunk


class Runner:
    def __init__(self, model: ASRModel, num_slots: int, device: str | torch.device = "cpu",
                 max_keyterms: int = MAX_KEYTERMS, max_keyterm_tokens: int = MAX_KEYTERM_TOKENS,
                 cuda_graphs: bool = False) -> None:
        self.model = model.to(device)
        self.compile_keyterms = KeytermCompiler(model.tokenizer, max_keyterms, max_keyterm_tokens)
        self.device = torch.device(device)
        self.dtype = next(model.encoder.parameters()).dtype
        self.table = SlotTable(model, num_slots, self.device, self.dtype, scratch_slots=1 if cuda_graphs else 0)
        enc, feat = model.config.encoder, model.config.features
        sub = enc.subsampling_factor
        self.first_frames = 1 + sub * enc.lookahead
        self.chunk_frames = sub * (enc.lookahead + 1)
        self.sample_rate = feat.sample_rate
        self.frame_ms = model.frame_ms
        self.chunk_ms = model.frame_ms * (enc.lookahead + 1)
        self.chunk_samples = self.chunk_frames * feat.hop_length
        self._reach = model.preprocessor.reach()
        self._cursors: list[_Cursor | None] = [None] * num_slots
        # One row per slot of a step's preemphasised samples, reused; rows are packed from the start.
        self._seg_len = feat.hop_length * (max(self.first_frames, self.chunk_frames) - 1) + feat.n_fft
        self._seg = pinned((num_slots * self._seg_len,), torch.float32, self.device)
        self._seg_copied: torch.cuda.Event | None = None
        self.graphs = BucketedGraphs(self._steady_encode, (PRE_ENCODE_CACHE + self.chunk_frames, feat.n_mels),
                                     torch.float32, self.device, num_slots, scratch=num_slots,
                                     capture=self.device.type == "cuda") if cuda_graphs else None

    # ---- per-slot bookkeeping ------------------------------------------------------------
    def open(self, slot: int, keyterms: Keyterms | BoostingTree | None = None,
             boosting: BoostingParams = BoostingParams()) -> None:
        """Start a stream in `slot`, optionally with key terms: a list (compiled here; KeytermError
        leaves the slot as it was) or a tree from `compile_keyterms` (compiled in another thread)."""
        tree = self._tree(keyterms, boosting)
        self._cursors[slot] = _Cursor(SampleBuffer(self.model.config.features, self._reach))
        self.table.reset(slot)
        self.table.keyterms.set(slot, tree)

    def restart(self, slot: int) -> None:
        """A fresh stream in an open slot (new audio, model state from scratch) that keeps its key
        terms: for a new segment after a flush."""
        self._cursor(slot)
        self._cursors[slot] = _Cursor(SampleBuffer(self.model.config.features, self._reach))
        self.table.reset(slot)

    def set_keyterms(self, slot: int, keyterms: Keyterms | BoostingTree | None,
                     boosting: BoostingParams = BoostingParams()) -> None:
        """Replace an open stream's key terms (None or [] removes them); matching restarts from the
        next decoded token. Raises KeytermError and keeps the old list if the new one is unusable."""
        self._cursor(slot)
        self.table.keyterms.set(slot, self._tree(keyterms, boosting))

    def _tree(self, keyterms: Keyterms | BoostingTree | None, boosting: BoostingParams) -> BoostingTree | None:
        if isinstance(keyterms, BoostingTree):
            return keyterms
        return self.compile_keyterms(keyterms, boosting) if keyterms else None

    @torch.inference_mode()
    def prepare_graphs(self) -> list[int]:
        """With `cuda_graphs`, capture every bucket now (start-up) rather than on each one's first
        steady step; touches no stream's state. Returns the captured batch sizes ([] on the CPU)."""
        return self.graphs.prepare() if self.graphs is not None else []

    def keyterm_count(self, slot: int) -> int:
        tree = self.table.keyterms.trees[slot]
        return 0 if tree is None else tree.num_phrases

    def release(self, slot: int) -> None:
        self._cursors[slot] = None
        self.table.keyterms.set(slot, None)

    def push(self, slot: int, samples: np.ndarray) -> None:
        self._cursor(slot).audio.push(samples)

    def finish(self, slot: int) -> None:
        self._cursor(slot).audio.finished = True

    def ready(self, slot: int) -> bool:
        cur = self._cursors[slot]
        if cur is None or cur.done:
            return False
        return cur.audio.finished or cur.audio.frames_available() >= cur.next_frame + self._want(cur)

    def _cursor(self, slot: int) -> _Cursor:
        cur = self._cursors[slot]
        if cur is None:
            raise KeyError(f"slot {slot} is not open")
        return cur

    def _want(self, cur: _Cursor) -> int:
        return self.first_frames if cur.chunks == 0 else self.chunk_frames

    def _plan(self, slot: int) -> _Plan:
        cur = self._cursor(slot)
        avail = cur.audio.frames_available()
        n = min(self._want(cur), avail - cur.next_frame)
        return _Plan(slot, cur.chunks == 0, cur.next_frame, max(n, 0))

    # ---- the batched step ----------------------------------------------------------------
    @torch.inference_mode()
    def step(self, slots: Sequence[int]) -> list[StepOutput]:
        plans = [self._plan(s) for s in slots]
        work = [p for p in plans if p.n > 0]
        emitted = self._run(work) if work else {}
        return [self._advance(p, emitted.get(p.slot)) for p in plans]

    def _run(self, work: list[_Plan]) -> dict[int, tuple[list[int], list[float], list[int], int]]:
        slots = [p.slot for p in work]
        lengths = [p.n if p.first else p.n + PRE_ENCODE_CACHE for p in work]  # subsampling input
        t_list = [self._encoder_frames(p) for p in work]
        idx, n, first, length, t_len = to_device([slots, [p.n for p in work], [p.first for p in work], lengths,
                                                  t_list], self.device)
        first = first.bool()
        dec_state, ctx = self.table.gather(idx)
        keyterms = self.table.keyterms.gather(slots, idx)
        mel_new = self._mel(work)  # (B, F, M) float32
        x, new_ctx = self._pre_encode_input(n, first, length, ctx, mel_new)
        out = self._encode(work, x, idx, first, length, t_len, t_list)
        em, dec_state = self.model.greedy.decode(out.to(dec_state.h.dtype), t_len, dec_state, keyterms)
        self.table.scatter(idx, dec_state, new_ctx)
        self.table.keyterms.scatter(idx, keyterms)
        return {p.slot: (em.tokens[b], em.confidences[b], em.frames[b], t_list[b]) for b, p in enumerate(work)}

    def _encoder_frames(self, plan: _Plan) -> int:
        """Encoder frames a chunk yields: its subsampled length, less the context's (later chunks)."""
        if plan.first:
            return subsampled_length(plan.n, self.model.config.encoder.subsampling_factor)
        full = subsampled_length(plan.n + PRE_ENCODE_CACHE, self.model.config.encoder.subsampling_factor)
        return full - DROP_PRE_ENCODED

    def _encode(self, work: list[_Plan], x: torch.Tensor, idx: torch.Tensor, first: torch.Tensor,
                length: torch.Tensor, t_len: torch.Tensor, t_list: list[int]) -> torch.Tensor:
        """Subsampling and encoder, (B, T, D): with graphs on, the steady-state rows go through them
        and the others (first and tail chunks) run eagerly beside them."""
        steady = [b for b, p in enumerate(work) if not p.first and p.n == self.chunk_frames]
        if self.graphs is None or not steady:
            return self._eager_encode(x, idx, first, length, t_len, [p.slot for p in work], t_list)
        if len(steady) == len(work):
            return self.graphs(x, idx)
        rest = sorted(set(range(len(work))) - set(steady))
        s, r = (to_device([rows], self.device)[0] for rows in (steady, rest))
        out = torch.zeros(len(work), max(t_list), self.model.config.encoder.d_model, dtype=self.dtype,
                          device=self.device)
        out[s] = self.graphs(x[s], idx[s])
        eager = self._eager_encode(x[r], idx[r], first[r], length[r], t_len[r], [work[b].slot for b in rest],
                                   [t_list[b] for b in rest])
        out[r, : eager.size(1)] = eager
        return out

    def _eager_encode(self, x: torch.Tensor, idx: torch.Tensor, first: torch.Tensor, length: torch.Tensor,
                      t_len: torch.Tensor, slots: list[int], t_list: list[int]) -> torch.Tensor:
        sub, _ = self.model.encoder.pre_encode(x.to(self.dtype), length)
        x = self._drop_context(first, sub, max(t_list))
        return self.model.encoder(x, t_len, self.table.enc, idx, layout=HostLayout.of(slots, t_list, x.size(1)))

    def _steady_encode(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Subsampling and encoder for rows that are all steady-state chunks (fixed shapes, nothing
        read back): what engine/graphs.py captures."""
        b, t = x.size(0), self.model.chunk_frames
        length = torch.full((b,), x.size(1), dtype=torch.long, device=x.device)
        sub, _ = self.model.encoder.pre_encode(x.to(self.dtype), length)
        x = sub[:, DROP_PRE_ENCODED:DROP_PRE_ENCODED + t].contiguous()
        t_len = torch.full((b,), t, dtype=torch.long, device=x.device)
        return self.model.encoder(x, t_len, self.table.enc, idx, layout=HostLayout(None, True))

    def _mel(self, work: list[_Plan]) -> torch.Tensor:
        """Log-mel frames of every row's new chunk, (B, F, M), on the device: the samples are packed
        into the reused buffer, copied in one go and turned into frames there."""
        hop, n_fft = self.model.config.features.hop_length, self.model.config.features.n_fft
        width = hop * (max(p.n for p in work) - 1) + n_fft
        if self._seg_copied is not None:
            self._seg_copied.synchronize()  # the previous step's copy has left the buffer
        seg = self._seg[: len(work) * width].view(len(work), width)
        rows = seg.numpy()
        for b, p in enumerate(work):
            used = self._cursor(p.slot).audio.segment_into(rows[b], p.f0, p.f0 + p.n)
            rows[b, used:] = 0.0
        if self.device.type == "cuda":
            seg = seg.to(self.device, non_blocking=True)
            self._seg_copied = torch.cuda.Event()
            self._seg_copied.record()
        else:
            seg = seg.to(self.device)
        return self.model.preprocessor.frames(seg)

    def _pre_encode_input(self, n: torch.Tensor, first: torch.Tensor, length: torch.Tensor, ctx: torch.Tensor,
                          mel_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Subsampling input per stream: [previous 9 frames; new] (later chunks) or [new] (first),
        right-padded; plus the next context, the last 9 frames of [context; new]."""
        b, f_max, _ = mel_new.shape
        full = torch.cat([ctx, mel_new], dim=1)  # (B, 9 + F, M)
        offset = torch.where(first, PRE_ENCODE_CACHE, 0)
        pos = torch.arange(PRE_ENCODE_CACHE + f_max, device=self.device)
        src = (offset.unsqueeze(1) + pos.unsqueeze(0)).clamp(max=full.size(1) - 1)
        x = torch.gather(full, 1, src.unsqueeze(2).expand(-1, -1, full.size(2)))
        x = x * (pos.unsqueeze(0) < length.unsqueeze(1)).unsqueeze(2)
        ctx_src = n.unsqueeze(1) + torch.arange(PRE_ENCODE_CACHE, device=self.device).unsqueeze(0)
        new_ctx = torch.gather(full, 1, ctx_src.unsqueeze(2).expand(-1, -1, full.size(2)))
        return x, new_ctx

    def _drop_context(self, first: torch.Tensor, sub: torch.Tensor, t_max: int) -> torch.Tensor:
        drop = torch.where(first, 0, DROP_PRE_ENCODED)
        src = (drop.unsqueeze(1) + torch.arange(t_max, device=self.device).unsqueeze(0)).clamp(max=sub.size(1) - 1)
        return torch.gather(sub, 1, src.unsqueeze(2).expand(-1, -1, sub.size(2)))

    def _advance(self, plan: _Plan, emitted: tuple[list[int], list[float], list[int], int] | None) -> StepOutput:
        cur = self._cursor(plan.slot)
        out = StepOutput(slot=plan.slot)
        if emitted is not None:
            tokens, confs, frames, t = emitted
            out.token_ids, out.confidences = tokens, confs
            out.token_frames = [cur.frames_decoded + f for f in frames]
            cur.frames_decoded += t
            cur.next_frame = plan.f0 + plan.n
            cur.chunks += 1
            cur.audio.discard_before_frame(cur.next_frame)
        cur.done = cur.audio.finished and cur.next_frame >= cur.audio.frames_available()
        out.frames_decoded, out.done = cur.frames_decoded, cur.done
        out.samples_covered = self._covered(cur)
        return out

    def _covered(self, cur: _Cursor) -> int:
        """Samples up to the last one the newest decoded mel frame depends on."""
        if cur.done:
            return cur.audio.total
        if cur.next_frame == 0:
            return 0
        hop = self.model.config.features.hop_length
        return min(cur.audio.total, hop * (cur.next_frame - 1) + self._reach + 1)
