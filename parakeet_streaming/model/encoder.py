"""Cache-aware FastConformer encoder, one streaming chunk at a time.

Module and parameter names follow NeMo's `ConformerEncoder`, so a NeMo state_dict loads as is.
Shapes: B streams, T new encoder frames, C = left context (70) cache slots, D = d_model.
Caches are layer-first. NeMo caches each layer's attention input (the output of `norm_self_att`)
and projects all C+T keys and values again at every step; we cache the projected keys `key` and
values `value` (L, B, C, D) instead, which is the same attention (the projections are linear) for a
fraction of the work. `time` (L, B, D, K-1) holds the last K-1 post-GLU frames of the convolution
module and `length` (B,) how many of the C attention slots hold real frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from parakeet_streaming.config import EncoderConfig


@dataclass
class EncoderCache:
    key: Tensor  # (L, B, C, D) projected keys of the last C frames
    value: Tensor  # (L, B, C, D) projected values
    time: Tensor  # (L, B, D, K-1)
    length: Tensor  # (B,) int64


def conv_out_length(length: Tensor) -> Tensor:
    """Length after one causal stride-2 stage (kernel 3, padding 2 left + 1 right)."""
    return torch.div(length, 2, rounding_mode="floor") + 1


class CausalConv2d(nn.Conv2d):
    """Stride-2 conv padded only on the past side in time (and 2/1 in frequency)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (2, 1, 2, 1)))


class Subsampling(nn.Module):
    """dw_striding causal subsampling: time and frequency shrink by `factor` (a power of 2)."""

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
        self.out = nn.Linear(ch * freq, cfg.d_model)

    def forward(self, mel: Tensor, length: Tensor) -> tuple[Tensor, Tensor]:
        """mel (B, T, F) -> (B, T', D). Frames at or past `length` are zeroed before every conv,
        so a padded batch gives each stream what it would get alone."""
        x = mel.unsqueeze(1)
        for layer in self.conv:
            if isinstance(layer, nn.Conv2d):
                x = x * _time_mask(length, x.size(2)).view(-1, 1, x.size(2), 1).to(x.dtype)
                x = layer(x)
                if layer.stride[0] == 2:
                    length = conv_out_length(length)
            else:
                x = layer(x)
        x = x * _time_mask(length, x.size(2)).view(-1, 1, x.size(2), 1).to(x.dtype)
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f)), length


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
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.silu(self.linear1(x)))


class RelPositionAttention(nn.Module):
    """Multi-head self-attention with relative positions (untied u/v biases) over [cache; chunk]."""

    def __init__(self, d_model: int, n_heads: int, bias: bool, untie_biases: bool) -> None:
        super().__init__()
        self.h, self.dk = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model, bias=bias)
        self.linear_k = nn.Linear(d_model, d_model, bias=bias)
        self.linear_v = nn.Linear(d_model, d_model, bias=bias)
        self.linear_out = nn.Linear(d_model, d_model, bias=bias)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        if untie_biases:
            self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.dk))
            self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.dk))

    def project_positions(self, pos: Tensor) -> Tensor:
        """linear_pos of the relative-position rows (W, D) -> (H, W, dk); depends only on weights,
        so it is computed once per chunk length and reused until the weights change."""
        key = (pos.size(0), pos.dtype, pos.device, self.linear_pos.weight._version)
        if getattr(self, "_pos_key", None) != key:
            self._pos_key = key
            self._pos_proj = self.linear_pos(pos).view(-1, self.h, self.dk).transpose(0, 1).contiguous()
        return self._pos_proj

    def forward(self, a: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, mask: Tensor,
                bias_u: Tensor, bias_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a (B,T,D) attends to [cache; a] (n = C+T keys). `pos` holds the rows for relative
        positions C+T-1 ... -(T-1) (W = C+2T-1, descending), all that T queries need.
        `mask` (B,T,n) is True where attention is not allowed. Returns output and new K/V caches."""
        b, t, _ = a.shape
        k_all = torch.cat([k_cache, self.linear_k(a)], dim=1)
        v_all = torch.cat([v_cache, self.linear_v(a)], dim=1)
        n = k_all.size(1)
        q = self.linear_q(a).view(b, t, self.h, self.dk)
        k = k_all.view(b, n, self.h, self.dk).transpose(1, 2)
        v = v_all.view(b, n, self.h, self.dk).transpose(1, 2)
        p = self.project_positions(pos)  # (H, W, dk)
        ac = torch.matmul((q + bias_u).transpose(1, 2), k.transpose(-2, -1))  # (B,H,T,n)
        bd = _rel_shift(torch.matmul((q + bias_v).transpose(1, 2), p.transpose(-2, -1)), n)
        scores = (ac + bd) / math.sqrt(self.dk)
        m = mask.unsqueeze(1)
        attn = torch.softmax(scores.masked_fill(m, -10000.0), dim=-1).masked_fill(m, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, self.h * self.dk)
        c = k_cache.size(1)
        return self.linear_out(out), k_all[:, n - c:], v_all[:, n - c:]


def _rel_shift(bd: Tensor, n: Tensor | int) -> Tensor:
    """(B,H,T,W) scores against positions (T-1+C) ... -(T-1) -> (B,H,T,n) with entry (i, j) the score
    for relative position (C+i) - j, i.e. column (T-1-i) + j of row i."""
    b, h, t, w = bd.shape
    bd = bd.contiguous()
    return bd.as_strided((b, h, t, n), (h * t * w, t * w, w - 1, 1), bd.storage_offset() + t - 1)


class ConvModule(nn.Module):
    """Pointwise -> GLU -> causal depthwise (with cache) -> LayerNorm -> SiLU -> pointwise."""

    def __init__(self, d_model: int, kernel: int, bias: bool) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1, bias=bias)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=bias)
        self.batch_norm = nn.LayerNorm(d_model)  # NeMo's name; it is a LayerNorm for conv_norm_type=layer_norm
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1, bias=bias)

    def forward(self, x: Tensor, cache: Tensor, pad: Tensor) -> tuple[Tensor, Tensor]:
        """x (B,T,D), cache (B,D,K-1), pad (B,T) True on padded frames -> (B,T,D), new cache."""
        g = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        g = g.masked_fill(pad.unsqueeze(1), 0.0)
        full = torch.cat([cache, g], dim=2)
        y = self.depthwise_conv(full)
        y = self.batch_norm(y.transpose(1, 2)).transpose(1, 2)
        y = self.pointwise_conv2(F.silu(y))
        return y.transpose(1, 2), full[:, :, -cache.size(2):]


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

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, t_cache: Tensor, pos: Tensor,
                att_mask: Tensor, pad: Tensor, bias_u: Tensor, bias_v: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = x + 0.5 * self.feed_forward1(self.norm_feed_forward1(x))
        att, k_cache, v_cache = self.self_attn(self.norm_self_att(x), k_cache, v_cache, pos, att_mask, bias_u, bias_v)
        x = x + att
        c, t_cache = self.conv(self.norm_conv(x), t_cache, pad)
        x = x + c
        x = x + 0.5 * self.feed_forward2(self.norm_feed_forward2(x))
        return self.norm_out(x), k_cache, v_cache, t_cache


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

    def initial_cache(self, batch: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> EncoderCache:
        c = self.cfg
        return EncoderCache(
            key=torch.zeros(c.n_layers, batch, c.left_context, c.d_model, device=device, dtype=dtype),
            value=torch.zeros(c.n_layers, batch, c.left_context, c.d_model, device=device, dtype=dtype),
            time=torch.zeros(c.n_layers, batch, c.d_model, c.conv_kernel_size - 1, device=device, dtype=dtype),
            length=torch.zeros(batch, dtype=torch.long, device=device),
        )

    def forward(self, x: Tensor, length: Tensor, cache: EncoderCache) -> tuple[Tensor, EncoderCache]:
        """One streaming step on pre-encoded frames x (B,T,D) with valid lengths (B,).
        Returns encoder output (B,T,D) (frames at or past `length` are padding) and the new cache."""
        if self.pos_enc.xscale is not None:
            x = x * self.pos_enc.xscale
        b, t, _ = x.shape
        c = self.cache_size
        pos = self.pos_enc.positions(c + t - 1, -(t - 1), x.device, x.dtype)
        att_mask, pad = self._masks(length, cache.length, t)
        keys, values, times = [], [], []
        for i, layer in enumerate(self.layers):
            u = layer.self_attn.pos_bias_u if self.cfg.untie_biases else self.pos_bias_u
            v = layer.self_attn.pos_bias_v if self.cfg.untie_biases else self.pos_bias_v
            x, k, val, tm = layer(x, cache.key[i], cache.value[i], cache.time[i], pos, att_mask, pad, u, v)
            keys.append(k)
            values.append(val)
            times.append(tm)
        new_len = torch.clamp(cache.length + length, max=c)
        return x, EncoderCache(torch.stack(keys), torch.stack(values), torch.stack(times), new_len)

    def _masks(self, length: Tensor, cache_len: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """Attention mask (B,T,C+T) and pad mask (B,T); True = masked. Window position 0 is the
        oldest cache slot; the chunk starts at position C."""
        c = self.cache_size
        dev = length.device
        win = torch.arange(c + t, device=dev)
        valid_k = (win.unsqueeze(0) >= (c - cache_len).unsqueeze(1)) & (win.unsqueeze(0) < (c + length).unsqueeze(1))
        q = torch.arange(t, device=dev)
        valid_q = q.unsqueeze(0) < length.unsqueeze(1)
        cs = self.cfg.lookahead + 1
        diff = (q.unsqueeze(1) + c) // cs - win.unsqueeze(0) // cs
        chunk_ok = (diff >= 0) & (diff <= self.cfg.left_context // cs)
        allowed = chunk_ok.unsqueeze(0) & valid_k.unsqueeze(1) & valid_q.unsqueeze(2)
        return ~allowed, ~valid_q
