"""Cache-aware FastConformer encoder, one streaming chunk at a time.

Module and parameter names follow NeMo's `ConformerEncoder`, so a NeMo state_dict loads as is.
Shapes: S slots (streams), B streams in a step, T new encoder frames, C = left context (70),
D = d_model, L layers.

State lives in preallocated per-slot storage (`EncoderState`) and is updated in place:
- NeMo caches each layer's attention input (the output of `norm_self_att`) and projects all C+T
  keys and values again at every step. We keep the projected keys and values instead (the same
  attention, the projections being linear), in a ring of N = C + T_chunk frames per slot: encoder
  frame f of a stream lives at ring position f mod N, so a step writes only its T new frames and
  nothing is shifted, concatenated or copied back.
  Stored per head, (L, S, H, N, dk), so a step's keys of contiguous slots are one strided view
  that the attention matmuls read without copying.
- `time` (L, S, D, K-1): the last K-1 post-GLU frames of each convolution module.
- `frames` (S,): encoder frames each slot has seen; ring positions and validity follow from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parakeet_streaming.config import EncoderConfig
from parakeet_streaming.model.linear import Linear, linear


@dataclass
class EncoderState:
    key: Tensor  # (L, S, H, N, dk) ring of projected keys
    value: Tensor  # (L, S, H, N, dk) ring of projected values
    time: Tensor  # (L, S, D, K-1)
    frames: Tensor  # (S,) int64

    def reset(self, slot: int) -> None:
        self.time[:, slot].zero_()
        self.frames[slot] = 0  # ring contents are masked until rewritten

    def ordered(self, store: Tensor, slot: int, layer: int, context: int) -> Tensor:
        """The last min(frames, context) entries of `key` or `value` for a slot, oldest first
        (what NeMo's attention cache holds, projected), for inspection and tests."""
        n, f = store.size(3), int(self.frames[slot])
        rows = store[layer, slot][:, [i % n for i in range(max(0, f - context), f)]]  # (H, n, dk)
        return rows.transpose(0, 1).reshape(rows.size(1), -1)


@dataclass
class StepBatch:
    """Which slots a step covers and where its frames go. Built once per step, shared by layers."""

    idx: Tensor  # (B,) slot of each batch row
    rows: slice | Tensor  # a slice when the slots are contiguous (views, no copies), else idx
    write_slot: Tensor  # (n_valid,) slot of each valid new frame
    write_pos: Tensor  # (n_valid,) its ring position
    write_src: Tensor | None  # (n_valid,) flat (b * T + t) of the same frames in the step's (B*T) rows; None: all
    ring_index: Tensor  # (B, 1, T, N) column of each ring key in the positional scores
    att_mask: Tensor  # (B, T, N) True = masked
    pad: Tensor  # (B, T) True on padded frames
    pos: Tensor  # (C + 2T - 1, D) relative position rows, descending

    def take(self, cache: Tensor) -> Tensor:
        """The batch's rows of a per-slot cache: a view, or one copy (index_select: a row memcpy
        each, faster than advanced indexing's element loop)."""
        return cache[self.rows] if isinstance(self.rows, slice) else cache.index_select(0, self.rows)

    def put(self, cache: Tensor, rows: Tensor) -> None:
        """Write the batch's rows back into a per-slot cache (index_copy_: a row memcpy each)."""
        if isinstance(self.rows, slice):
            cache[self.rows] = rows
        else:
            cache.index_copy_(0, self.rows, rows)


@dataclass(frozen=True)
class HostLayout:
    """What the caller knows on the host about a step's rows, so that the encoder reads nothing
    back from the device (and the step can be captured in a CUDA graph)."""

    start: int | None  # the first slot when the slots are contiguous (cache rows as views); None: gather
    full: bool  # every row has all T frames valid

    @classmethod
    def of(cls, slots: Sequence[int], lengths: Sequence[int], t: int) -> "HostLayout":
        s0 = slots[0]
        contiguous = list(slots) == list(range(s0, s0 + len(slots)))
        return cls(s0 if contiguous else None, all(n == t for n in lengths))


def conv_out_length(length: Tensor) -> Tensor:
    """Length after one causal stride-2 stage (kernel 3, padding 2 left + 1 right)."""
    return torch.div(length, 2, rounding_mode="floor") + 1


def subsampled_length(length: int, factor: int) -> int:
    """conv_out_length of every stage, on the host."""
    for _ in range(int(math.log2(factor))):
        length = length // 2 + 1
    return length


class CausalConv2d(nn.Conv2d):
    """Stride-2 conv padded only on the past side in time (and 2/1 in frequency).

    Computed as a conv with symmetric padding 2 whose extra last row/column is dropped: the same
    windows, without materialising a padded copy of the input."""

    def forward(self, x: Tensor) -> Tensor:
        t, f = x.shape[2:]
        y = F.conv2d(x, self.weight, self.bias, stride=2, padding=2, groups=self.groups)
        return y[:, :, : t // 2 + 1, : f // 2 + 1]


class Subsampling(nn.Module):
    """dw_striding causal subsampling: time and frequency shrink by `factor` (a power of 2).

    Module layout is NeMo's (conv.0 = first conv, then [depthwise, pointwise, ReLU] per stage).
    The forward pass keeps activations channels-last (B, T, F, C), where oneDNN's depthwise conv is
    fast and the pointwise convs are plain matmuls; the first stage is a matmul over 3x3 patches."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        ch, stages = cfg.subsampling_conv_channels, int(math.log2(cfg.subsampling_factor))
        layers: list[nn.Module] = [CausalConv2d(1, ch, 3, stride=2), nn.ReLU()]
        for _ in range(stages - 1):
            layers += [CausalConv2d(ch, ch, 3, stride=2, groups=ch), nn.Conv2d(ch, ch, 1), nn.ReLU()]
        self.conv = nn.Sequential(*layers)
        freq = cfg.feat_in
        for _ in range(stages):
            freq = freq // 2 + 1
        self.out = Linear(ch * freq, cfg.d_model)

    def forward(self, mel: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        """mel (B, T, F) -> (B, T', D). Every stage's output is zero at and past its valid length,
        so a padded batch gives each stream what it would get alone."""
        mel = mel * _time_mask(length, mel.size(1)).unsqueeze(2).to(mel.dtype)
        length = conv_out_length(length)
        x = self._first_stage(mel, length)  # (B, T1, F1, C)
        stages = list(self.conv)[2:]
        for depthwise, pointwise in zip(stages[0::3], stages[1::3]):
            y = depthwise(x.permute(0, 3, 1, 2))  # a channels-last view in, channels-last out
            length = conv_out_length(length)
            # Plain F.linear: packing gains nothing measurable on these many short rows (bench, both
            # dtypes) and would change bfloat16 rounding here.
            w = pointwise.weight.view(pointwise.out_channels, -1)
            x = _relu_(F.linear(y.permute(0, 2, 3, 1), w, pointwise.bias))
            x.mul_(_time_mask(length, x.size(1)).view(-1, x.size(1), 1, 1).to(x.dtype))
        b, t, f, c = x.shape
        return self.out(x.transpose(2, 3).reshape(b, t, c * f)), length

    def _first_stage(self, mel: Tensor, out_length: Tensor) -> Tensor:
        """Conv 1 -> C channels as one matmul over the 3x3 patches, plus a constant-1 column for the
        bias; patches of padded output frames are zeroed, so those outputs are exactly 0."""
        conv = self.conv[0]
        b, t, f = mel.shape
        h, w = t // 2 + 1, f // 2 + 1
        xp = F.pad(mel, (2, 1, 2, 1))
        cols = [xp[:, i:i + 2 * h - 1:2, j:j + 2 * w - 1:2] for i in range(3) for j in range(3)]
        cols.append(torch.ones_like(cols[0]))
        patches = torch.stack(cols, dim=-1)  # (B, H, W, 10)
        patches.mul_(_time_mask(out_length, h).view(b, h, 1, 1).to(patches.dtype))
        weight = torch.cat([conv.weight.view(conv.out_channels, 9), conv.bias.view(-1, 1)], dim=1)
        return _relu_(torch.matmul(patches, weight.t()))


def _relu_(x: Tensor) -> Tensor:
    """In-place ReLU. bfloat16's clamp is not vectorized on the CPU; its int16 view is (negative
    bit patterns are the negative numbers and -0.0), and clearing them is the same ReLU."""
    if x.dtype == torch.bfloat16:
        x.view(torch.int16).clamp_min_(0)
        return x
    return x.relu_()


def _time_mask(length: Tensor, size: int) -> Tensor:
    return torch.arange(size, device=length.device).unsqueeze(0) < length.unsqueeze(1)


class RelPositionalEncoding(nn.Module):
    """Transformer-XL sinusoids for relative positions, computed on demand and cached."""

    def __init__(self, d_model: int, xscale: float | None) -> None:
        super().__init__()
        self.d_model, self.xscale = d_model, xscale
        self._table: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def positions(self, first: int, last: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Rows for relative positions first, first-1, ..., last (descending), shape (n, D)."""
        key = (first * 100003 + last, device, dtype)
        if key not in self._table:
            pos = torch.arange(first, last - 1, -1, dtype=torch.float32).unsqueeze(1)
            div = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32) * -(math.log(10000.0) / self.d_model))
            pe = torch.zeros(pos.size(0), self.d_model)
            pe[:, 0::2] = torch.sin(pos * div)
            pe[:, 1::2] = torch.cos(pos * div)
            self._table[key] = pe.to(device=device, dtype=dtype)
        return self._table[key]


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool) -> None:
        super().__init__()
        self.linear1 = Linear(d_model, d_ff, bias=bias)
        self.linear2 = Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        l1 = self.linear1
        return self.linear2(linear(l1, "weight", x, l1.weight, l1.bias, silu=True))


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (untied u/v biases) over [cache; chunk]."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, untie_biases: bool) -> None:
        super().__init__()
        self.h, self.dk = n_heads, d_model // n_heads
        self.linear_q = Linear(d_model, d_model, bias=bias)
        self.linear_k = Linear(d_model, d_model, bias=bias)
        self.linear_v = Linear(d_model, d_model, bias=bias)
        self.linear_out = Linear(d_model, d_model, bias=bias)
        self.linear_pos = Linear(d_model, d_model, bias=False)
        if untie_biases:
            self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.dk))
            self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.dk))

    def project_positions(self, pos: Tensor) -> Tensor:
        """linear_pos of the relative-position rows (W, D) -> (H, W, dk); depends only on weights,
        so it is computed once per chunk length and reused until the weights change."""
        weight = self.linear_pos.weight  # a method on dynamically quantized Linear modules
        version = weight._version if isinstance(weight, Tensor) else id(self.linear_pos)
        if getattr(self, "_pos_version", None) != version:
            self._pos_version, self._pos_proj = version, {}
        # One entry per chunk length, kept: a CUDA graph of a step reads its entry by address.
        key = (pos.size(0), pos.dtype, pos.device)
        if key not in self._pos_proj:
            self._pos_proj[key] = self.linear_pos(pos).view(-1, self.h, self.dk).transpose(0, 1).contiguous()
        return self._pos_proj[key]

    def forward(self, a: Tensor, key: Tensor, value: Tensor, batch: StepBatch, bias_u: Tensor,
                bias_v: Tensor) -> Tensor:
        """a (B,T,D) attends to the ring keys/values (S,N,D) of its slots, after the T new frames are
        written into them. Scores against the positional rows are gathered by each ring key's
        relative position to each query."""
        b, t, d = a.shape
        for store, proj in ((key, self.linear_k), (value, self.linear_v)):
            new = proj(a).view(b * t, self.h, self.dk)
            if batch.write_src is not None:
                new = new[batch.write_src]
            store[batch.write_slot, :, batch.write_pos] = new
        k, v = batch.take(key), batch.take(value)  # (B, H, N, dk)
        q = self.linear_q(a).view(b, t, self.h, self.dk)
        p = self.project_positions(batch.pos)  # (H, W, dk)
        ac = torch.matmul((q + bias_u).transpose(1, 2), k.transpose(-2, -1))  # (B,H,T,N)
        # Positional scores as one (H, B*T, W) batched matmul: no broadcast copy of p per stream.
        qv = (q + bias_v).permute(2, 0, 1, 3).reshape(self.h, b * t, self.dk)
        bd = torch.bmm(qv, p.transpose(1, 2)).view(self.h, b, t, -1).transpose(0, 1)  # (B,H,T,W)
        bd = torch.gather(bd, 3, batch.ring_index.expand(-1, self.h, -1, -1))
        scores = (ac + bd) / math.sqrt(self.dk)
        m = batch.att_mask.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill_(m, -10000.0), dim=-1).masked_fill_(m, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.dk)
        return self.linear_out(out)


class ConvModule(nn.Module):
    """Pointwise -> GLU -> causal depthwise (with cache) -> LayerNorm -> SiLU -> pointwise."""

    def __init__(self, d_model: int, kernel: int, bias: bool) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias)
        self.batch_norm = nn.LayerNorm(d_model)  # NeMo's name; it is a LayerNorm for conv_norm_type=layer_norm
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=bias)

    def forward(self, x: Tensor, cache: Tensor, batch: StepBatch) -> Tensor:
        """x (B,T,D); cache (S,D,K-1) per slot, updated in place with the last K-1 GLU frames
        (padded frames zeroed, as NeMo does)."""
        pw1, pw2 = self.pointwise_conv1, self.pointwise_conv2  # 1x1 convs, applied as matmuls
        g = F.glu(linear(pw1, "weight", x, pw1.weight, pw1.bias), dim=-1)
        g = g.masked_fill(batch.pad.unsqueeze(2), 0.0)
        full = torch.cat([batch.take(cache), g.transpose(1, 2)], dim=2)
        batch.put(cache, full[:, :, -cache.size(2):])
        y = self.batch_norm(self.depthwise_conv(full).transpose(1, 2))
        return linear(pw2, "weight", F.silu(y), pw2.weight, pw2.bias)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        d, bias = cfg.d_model, cfg.use_bias
        self.norm_feed_forward1 = nn.LayerNorm(d)
        self.feed_forward1 = FeedForward(d, d * cfg.ff_expansion_factor, bias)
        self.norm_self_att = nn.LayerNorm(d)
        self.self_attn = RelPositionAttention(d, cfg.n_heads, bias, cfg.untie_biases)
        self.norm_conv = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conv_kernel_size, bias)
        self.norm_feed_forward2 = nn.LayerNorm(d)
        self.feed_forward2 = FeedForward(d, d * cfg.ff_expansion_factor, bias)
        self.norm_out = nn.LayerNorm(d)

    def forward(self, x: Tensor, key: Tensor, value: Tensor, time: Tensor, batch: StepBatch,
                bias_u: Tensor, bias_v: Tensor) -> Tensor:
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        x = x + self.self_attn(self.norm_self_att(x), key, value, batch, bias_u, bias_v)
        x = x + self.conv(self.norm_conv(x), time, batch)
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pre_encode = Subsampling(cfg)
        self.pos_enc = RelPositionalEncoding(cfg.d_model, math.sqrt(cfg.d_model) if cfg.xscaling else None)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.n_layers))
        if not cfg.untie_biases:
            dk = cfg.d_model // cfg.n_heads
            self.pos_bias_u = nn.Parameter(torch.zeros(cfg.n_heads, dk))
            self.pos_bias_v = nn.Parameter(torch.zeros(cfg.n_heads, dk))

    @property
    def cache_size(self) -> int:
        return self.cfg.left_context

    def initial_state(self, slots: int, chunk_frames: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> EncoderState:
        """Storage for `slots` streams whose chunks have at most `chunk_frames` encoder frames."""
        c = self.cfg
        ring = c.left_context + chunk_frames
        kv = (c.n_layers, slots, c.n_heads, ring, c.d_model // c.n_heads)
        return EncoderState(
            key=torch.zeros(kv, device=device, dtype=dtype),
            value=torch.zeros(kv, device=device, dtype=dtype),
            time=torch.zeros(c.n_layers, slots, c.d_model, c.conv_kernel_size - 1, device=device, dtype=dtype),
            frames=torch.zeros(slots, dtype=torch.long, device=device),
        )

    def forward(self, x: Tensor, length: Tensor, state: EncoderState, idx: Tensor,
                layout: HostLayout | None = None) -> Tensor:
        """One streaming step for the slots `idx` on pre-encoded frames x (B,T,D) with valid lengths
        (B,). Returns the encoder output (B,T,D); frames at or past `length` are padding. Without
        `layout` the encoder reads the slots' layout back from the device."""
        if self.pos_enc.xscale is not None:
            x = x * self.pos_enc.xscale
        batch = self._batch(idx, length, x.size(1), state, x.dtype, layout)
        for i, layer in enumerate(self.layers):
            u = layer.self_attn.pos_bias_u if self.cfg.untie_biases else self.pos_bias_u
            v = layer.self_attn.pos_bias_v if self.cfg.untie_biases else self.pos_bias_v
            x = layer(x, state.key[i], state.value[i], state.time[i], batch, u, v)
        state.frames[idx] += length
        return x

    def _batch(self, idx: Tensor, length: Tensor, t: int, state: EncoderState, dtype: torch.dtype,
               layout: HostLayout | None) -> StepBatch:
        """Ring positions, masks and positional gather indices for one step.

        Window position j = 0 is the oldest of the C cache frames, the chunk starts at j = C
        (NeMo's layout). A ring key holding stream frame f sits at j = f - (head - C), where head is
        the number of frames the slot had seen before this step."""
        c, n, dev = self.cache_size, state.key.size(3), idx.device
        if t > n - c:
            raise ValueError(f"a chunk of {t} frames does not fit a ring of {n} with {c} of context")
        head = state.frames[idx]  # (B,)
        b = idx.numel()
        tt = torch.arange(t, device=dev)
        new_f = head.unsqueeze(1) + tt  # (B,T) stream frame index of each new frame
        if layout is not None and layout.full:  # every new frame is written: no data-dependent shapes
            write_slot = idx.unsqueeze(1).expand(-1, t).reshape(-1)
            write_pos = (new_f % n).reshape(-1)
            write_src = None
        else:
            valid_new = tt.unsqueeze(0) < length.unsqueeze(1)
            write_slot = idx.unsqueeze(1).expand(-1, t)[valid_new]
            write_pos = (new_f % n)[valid_new]
            write_src = (torch.arange(b, device=dev).unsqueeze(1) * t + tt)[valid_new]
        # Stream frame held by each ring position after the write: the newest f < head+len, f = r mod N.
        end = (head + length).unsqueeze(1)  # (B,1)
        r = torch.arange(n, device=dev).unsqueeze(0)
        held = end - 1 - ((end - 1 - r) % n)  # (B,N)
        j = held - (head.unsqueeze(1) - c)  # window position
        valid_k = (held >= 0) & (j >= 0) & (j < c + length.unsqueeze(1))
        q = tt.unsqueeze(0)
        valid_q = q < length.unsqueeze(1)
        cs = self.cfg.lookahead + 1
        diff = (q.unsqueeze(2) + c) // cs - j.unsqueeze(1).clamp(min=0) // cs  # (B,T,N)
        chunk_ok = (diff >= 0) & (diff <= self.cfg.left_context // cs)
        allowed = chunk_ok & valid_k.unsqueeze(1) & valid_q.unsqueeze(2)
        # Relative position (C + i) - j is column (T-1-i) + j of the positional scores.
        ring_index = ((t - 1 - q).unsqueeze(2) + j.unsqueeze(1)).clamp(0, c + 2 * t - 2).unsqueeze(1)
        if layout is None:
            start = int(idx[0])
            layout = HostLayout(start if bool(torch.equal(idx, torch.arange(start, start + b, device=dev))) else None,
                                False)
        rows = idx if layout.start is None else slice(layout.start, layout.start + b)
        return StepBatch(
            idx=idx, rows=rows, write_slot=write_slot, write_pos=write_pos,
            write_src=write_src, ring_index=ring_index, att_mask=~allowed, pad=~valid_q,
            pos=self.pos_enc.positions(c + t - 1, -(t - 1), dev, dtype),
        )
