"""Key terms: per-stream phrase boosting (shallow fusion of a boosting tree with greedy RNN-T decoding).

The maths is NeMo's GPU-PB phrase boosting (`boosting_tree`, per-stream biasing), so boosted
transcripts equal NeMo's token for token:

* Each phrase is tokenized with the model's tokenizer; the token sequences form a trie. A new trie
  node at depth i (0-based) along a phrase with token score `s` (the phrase's weight, else the
  list's `context_score`) scores `s` for i = 0 and `s * depth_scaling + ln(i + 1)` deeper, so later
  tokens of a phrase earn more. A node shared with an earlier phrase keeps the larger of its score
  and `s`. A node's total is its parent's total plus its score.
* Each node falls back (Aho-Corasick failure link) to the longest proper suffix of its path that is
  also a trie path. Falling back from a node that ends no phrase costs the difference of the two
  totals, so a partial match that breaks gives back what it earned; from a node that ends a phrase
  it costs nothing, so a completed phrase keeps its bonus.
* From a state, the score of token v is found along the fallback chain: the first state on it with
  a child for v gives that child's score plus the fallback costs paid on the way; at the root every
  token without a child scores 0 and stays at the root. The stream moves to that child.
* Decoding: blank vs. non-blank is decided on the model's logits alone; when a non-blank wins, the
  label is the argmax of the non-blank logits plus `alpha` times the row of the stream's state.
  Only emitted labels move the state.

A tree is compiled once per phrase list (pure, numpy) as a dense root row plus, per state, the
scores it overrides (CSR); `KeytermTable` pools the trees in use on the device and keeps one state
per slot, and `BatchKeyterms` is the batched view the decoder reads and advances with tensor ops.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

MAX_KEYTERMS = 1000  # phrases per stream
MAX_KEYTERM_TOKENS = 32  # tokens per phrase
MAX_KEYTERM_CHARS = 200
MAX_SCORE = 100.0  # bound on weights, context_score, depth_scaling and alpha


class KeytermError(ValueError):
    """A key-term list that cannot be used (too many, too long, unspellable, bad numbers)."""


@dataclass(frozen=True)
class Keyterm:
    text: str
    weight: float | None = None  # token score of this phrase; None: the list's context_score


@dataclass(frozen=True)
class BoostingParams:
    """NeMo's per-request boosting settings (BoostingTreeModelConfig and boosting_model_alpha)."""

    context_score: float = 1.0  # token score of the first token of a phrase
    depth_scaling: float = 2.0  # multiplies the score of every later token (then + ln(depth))
    alpha: float = 1.0  # weight of the tree's scores against the model's logits

    def check(self) -> None:
        for name, lo in (("context_score", 0.0), ("depth_scaling", 1.0), ("alpha", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not (lo <= v <= MAX_SCORE) \
                    or (lo == 0.0 and v == 0.0):
                bound = f"({lo:g}, {MAX_SCORE:g}]" if lo == 0.0 else f"[{lo:g}, {MAX_SCORE:g}]"
                raise KeytermError(f"{name} must be a number in {bound}, got {v!r}")


@dataclass(frozen=True)
class BoostingTree:
    """A compiled phrase list over a vocabulary of V labels (blank excluded). State 0 is the root."""

    vocab_size: int
    alpha: float
    root_score: np.ndarray  # (V,) float32: score of each label from the root
    root_next: np.ndarray  # (V,) int64: state after each label from the root
    base: np.ndarray  # (S,) float32: fallback cost from each state down to the root
    ptr: np.ndarray  # (S+1,) int64: state s overrides labels tok[ptr[s]:ptr[s+1]]
    tok: np.ndarray  # (N,) int64
    score: np.ndarray  # (N,) float32: the label's score from that state (fallback costs included)
    next: np.ndarray  # (N,) int64
    depth: np.ndarray  # (S,) int64: tokens matched in each state
    is_end: np.ndarray  # (S,) bool: the state completes a phrase
    num_phrases: int

    @property
    def num_states(self) -> int:
        return len(self.base)

    def row(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense (scores * alpha, next states) of one state, for tests and tools."""
        scores = self.base[state] + self.root_score
        nxt = self.root_next.copy()
        a, b = self.ptr[state], self.ptr[state + 1]
        scores[self.tok[a:b]] = self.score[a:b]
        nxt[self.tok[a:b]] = self.next[a:b]
        return scores * np.float32(self.alpha), nxt


def build_tree(phrases: Sequence[Sequence[int]], token_scores: Sequence[float], depth_scaling: float,
               vocab_size: int, alpha: float = 1.0) -> BoostingTree:
    """Trie, failure links and per-state score overrides for token-id phrases (one score each)."""
    children: list[dict[int, int]] = [{}]
    tscore, total, is_end, depth = [0.0], [0.0], [False], [0]
    for tokens, s in zip(phrases, token_scores):
        node = 0
        for i, t in enumerate(tokens):
            last = i == len(tokens) - 1
            child = children[node].get(t)
            if child is None:
                child = len(children)
                children[node][t] = child
                children.append({})
                tscore.append(s * depth_scaling + float(np.log(i + 1)) if i > 0 else s)
                total.append(0.0)
                is_end.append(last)
                depth.append(i + 1)
            else:
                tscore[child] = max(s, tscore[child])  # NeMo compares the unscaled score here
                is_end[child] = is_end[child] or last
            total[child] = total[node] + tscore[child]
            node = child
    n = len(children)
    fail = [0] * n  # the root's children fall back to the root
    queue = deque(children[0].values())  # breadth-first, so a node's fallback is known before its children's
    while queue:
        u = queue.popleft()
        for t, c in children[u].items():
            f = fail[u]
            while f and t not in children[f]:
                f = fail[f]
            fail[c] = children[f].get(t, 0)
            queue.append(c)
    w = np.array(tscore, np.float32)
    backoff = np.array([0.0 if is_end[s] else total[fail[s]] - total[s] for s in range(n)], np.float32)

    root_score = np.zeros(vocab_size, np.float32)
    root_next = np.zeros(vocab_size, np.int64)
    for t, c in children[0].items():
        root_score[t], root_next[t] = w[c], c
    base = np.zeros(n, np.float32)
    ptr = np.zeros(n + 1, np.int64)
    tok: list[int] = []
    score: list[np.float32] = []
    nxt: list[int] = []
    for s in range(n):
        seen: set[int] = set()
        acc = np.float32(0.0)
        c = s
        while c:  # every state on the fallback chain above the root
            for t, child in children[c].items():
                if t not in seen:
                    seen.add(t)
                    tok.append(t)
                    score.append(acc + w[child])
                    nxt.append(child)
            acc = acc + backoff[c]
            c = fail[c]
        base[s] = acc
        ptr[s + 1] = len(tok)
    return BoostingTree(vocab_size, float(alpha), root_score, root_next, base, ptr, np.array(tok, np.int64),
                        np.array(score, np.float32), np.array(nxt, np.int64), np.array(depth, np.int64),
                        np.array(is_end, bool), len(phrases))


class _Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def is_text(self, token_id: int) -> bool: ...

    def id_to_piece(self, token_id: int) -> str: ...


def _keyterm(item: str | Keyterm | tuple, i: int) -> Keyterm:
    if isinstance(item, str):
        item = Keyterm(item)
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        item = Keyterm(*item)
    if not isinstance(item, Keyterm) or not isinstance(item.text, str):
        raise KeytermError(f"key term {i} must be a string or a (text, weight) pair")
    text = " ".join(item.text.split())
    if not text:
        raise KeytermError(f"key term {i} is empty")
    if len(text) > MAX_KEYTERM_CHARS:
        raise KeytermError(f"key term {i} is longer than {MAX_KEYTERM_CHARS} characters")
    wt = item.weight
    if wt is not None and (isinstance(wt, bool) or not isinstance(wt, (int, float)) or not math.isfinite(wt)
                           or not 0.0 < wt <= MAX_SCORE):
        raise KeytermError(f"key term {i} ({text!r}): weight must be a number in (0, {MAX_SCORE:g}], got {wt!r}")
    return Keyterm(text, None if wt is None else float(wt))


def parse_weighted(text: str) -> str | tuple[str, float]:
    """`phrase` or `phrase:weight`: the form of Deepgram's `keywords` (its intensifier is the weight)
    and of --keyterms-file lines. Raises KeytermError for a weight that is not a number in (0, 100]."""
    phrase, colon, weight = text.rpartition(":")
    if not colon:
        return text.strip()
    try:
        value = float(weight)
    except ValueError:
        raise KeytermError(f"{text.strip()!r}: the weight after ':' must be a number") from None
    if not math.isfinite(value) or not 0.0 < value <= MAX_SCORE:
        raise KeytermError(f"{text.strip()!r}: the weight after ':' must be a number in (0, {MAX_SCORE:g}]")
    return phrase.strip(), value


def compile_keyterms(tokenizer: _Tokenizer, keyterms: Sequence[str | Keyterm | tuple],
                     params: BoostingParams = BoostingParams(), max_keyterms: int = MAX_KEYTERMS,
                     max_tokens: int = MAX_KEYTERM_TOKENS) -> BoostingTree | None:
    """Tokenize and compile a phrase list (None when it is empty). Raises KeytermError."""
    if isinstance(keyterms, (str, bytes)) or not isinstance(keyterms, Sequence):
        raise KeytermError("key terms must be a list")
    params.check()
    if len(keyterms) > max_keyterms:
        raise KeytermError(f"at most {max_keyterms} key terms per stream, got {len(keyterms)}")
    items: dict[Keyterm, None] = {}  # first occurrence wins, as NeMo dedups its phrase list
    for i, item in enumerate(keyterms):
        items.setdefault(_keyterm(item, i), None)
    if not items:
        return None
    phrases, scores = [], []
    for i, kt in enumerate(items):
        ids = tokenizer.encode(kt.text)
        bad = [t for t in ids if not tokenizer.is_text(t) or tokenizer.id_to_piece(t) == "<unk>"]
        if bad:
            raise KeytermError(f"key term {kt.text!r} cannot be spelled with this model's vocabulary "
                               f"(it needs {tokenizer.id_to_piece(bad[0])!r})")
        if len(ids) > max_tokens:
            raise KeytermError(f"key term {kt.text!r} is {len(ids)} tokens; at most {max_tokens} per key term")
        phrases.append(ids)
        scores.append(params.context_score if kt.weight is None else kt.weight)
    return build_tree(phrases, scores, params.depth_scaling, tokenizer.vocab_size, params.alpha)


class KeytermCompiler:
    """compile_keyterms for one tokenizer and its limits, with a cache by list and parameters so that
    streams with the same list share one tree. Thread-safe: a transport thread may compile a list
    (and see its KeytermError) before the engine loop ever sees it."""

    def __init__(self, tokenizer: _Tokenizer, max_keyterms: int = MAX_KEYTERMS,
                 max_tokens: int = MAX_KEYTERM_TOKENS, cache_size: int = 64) -> None:
        self.tokenizer, self.max_keyterms, self.max_tokens = tokenizer, max_keyterms, max_tokens
        self._cache: OrderedDict[tuple, BoostingTree | None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def __call__(self, keyterms: Sequence[str | Keyterm | tuple], params: BoostingParams = BoostingParams()
                 ) -> BoostingTree | None:
        try:
            key = (tuple(k if isinstance(k, (str, Keyterm)) else tuple(k) for k in keyterms), params)
            hash(key)
        except TypeError:  # not a list of hashable items: compile_keyterms says what is wrong
            key = None
        with self._lock:
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tree = compile_keyterms(self.tokenizer, keyterms, params, self.max_keyterms, self.max_tokens)
        if key is not None:
            with self._lock:
                self._cache[key] = tree
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return tree


# ------------------------------------------------------------------------------------------- device side
@dataclass
class _Pool:
    """The distinct trees in use, concatenated on the device (state and entry ids made global).

    Lookups have fixed shapes (no reads back to the host), so greedy decoding can advance key terms
    at every symbol without a device sync: a state's overrides are read as `width` entries (the most
    any state of the pool has), the unused ones written to a spare column V that is dropped."""

    root_score: Tensor  # (T, V + 1), the last column a spare
    root_next: Tensor  # (T, V + 1)
    alpha: Tensor  # (T,)
    state_offset: Tensor  # (T,)
    base: Tensor  # (ΣS,)
    ptr: Tensor  # (ΣS + 1,)
    tok: Tensor
    score: Tensor
    next: Tensor
    width: int  # most overrides of one state

    @classmethod
    def of(cls, trees: list[BoostingTree], device: torch.device) -> "_Pool":
        offs = np.cumsum([0] + [t.num_states for t in trees])
        entry_offs = np.cumsum([0] + [len(t.tok) for t in trees])
        ptr = np.concatenate([t.ptr[:-1] + e for t, e in zip(trees, entry_offs)] + [entry_offs[-1:]])

        def dev(x: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        def spare(rows: list[np.ndarray]) -> np.ndarray:
            table = np.stack(rows)
            return np.concatenate([table, np.zeros((len(rows), 1), table.dtype)], axis=1)

        return cls(dev(spare([t.root_score for t in trees])), dev(spare([t.root_next for t in trees])),
                   dev(np.array([t.alpha for t in trees], np.float32)), dev(offs[:-1].astype(np.int64)),
                   dev(np.concatenate([t.base for t in trees])), dev(ptr.astype(np.int64)),
                   dev(np.concatenate([t.tok for t in trees])), dev(np.concatenate([t.score for t in trees])),
                   dev(np.concatenate([t.next for t in trees])), int(np.diff(ptr).max(initial=0)))

    def rows(self, tree: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """(R,) pool tree ids (>= 0) and local states -> alpha-scaled scores (R, V) and next states (R, V)."""
        g = self.state_offset[tree] + state
        v = self.root_score.size(1) - 1
        scores = self.base[g].unsqueeze(1) + self.root_score[tree]
        nexts = self.root_next[tree]
        if self.width:
            pos = self.ptr[g].unsqueeze(1) + torch.arange(self.width, device=g.device)
            used = pos < self.ptr[g + 1].unsqueeze(1)
            pos = pos.clamp(max=self.tok.numel() - 1)
            col = torch.where(used, self.tok[pos], v)
            scores.scatter_(1, col, self.score[pos])
            nexts.scatter_(1, col, self.next[pos])
        return scores[:, :v] * self.alpha[tree].unsqueeze(1), nexts[:, :v]


@dataclass
class BatchKeyterms:
    """Boosting state of the rows of one decode call: rows without a tree score zeros."""

    pool: _Pool
    tree: Tensor  # (B,) pool tree id, -1 for none
    state: Tensor  # (B,) local state
    scores: Tensor  # (B, V) alpha-scaled scores of each row's state
    nexts: Tensor  # (B, V)

    def advance(self, emit: Tensor, labels: Tensor) -> None:
        """Move the rows that emitted a (non-blank) label; fixed shapes, so no device sync."""
        moved = emit & (self.tree >= 0)
        label = labels.clamp(max=self.nexts.size(1) - 1).unsqueeze(1)  # a blank row is not moved
        self.state = torch.where(moved, self.nexts.gather(1, label).squeeze(1), self.state)
        scores, nexts = self.pool.rows(self.tree.clamp(min=0), self.state)
        m = moved.unsqueeze(1)
        self.scores, self.nexts = torch.where(m, scores, self.scores), torch.where(m, nexts, self.nexts)


class KeytermTable:
    """Per-slot key terms: the tree of each slot and its state (one int), the trees pooled on the device."""

    def __init__(self, num_slots: int, vocab_size: int, device: torch.device) -> None:
        self.vocab_size, self.device = vocab_size, device
        self.trees: list[BoostingTree | None] = [None] * num_slots
        self.state = torch.zeros(num_slots, dtype=torch.long, device=device)
        self._slot_tree = torch.full((num_slots,), -1, dtype=torch.long, device=device)
        self._pool: _Pool | None = None

    def set(self, slot: int, tree: BoostingTree | None) -> None:
        """Give a slot a tree (or none) and put it at the root."""
        if tree is not None and tree.vocab_size != self.vocab_size:
            raise ValueError(f"tree over {tree.vocab_size} labels, model has {self.vocab_size}")
        self.state[slot] = 0
        if self.trees[slot] is tree:
            return
        self.trees[slot] = tree
        distinct = list({id(t): t for t in self.trees if t is not None}.values())
        index = {id(t): i for i, t in enumerate(distinct)}
        self._pool = _Pool.of(distinct, self.device) if distinct else None
        ids = [index[id(t)] if t is not None else -1 for t in self.trees]
        self._slot_tree.copy_(torch.tensor(ids, dtype=torch.long))

    def gather(self, slots: Sequence[int], idx: Tensor) -> BatchKeyterms | None:
        """The batch view of some slots; None (no cost) when none of them has key terms."""
        if self._pool is None or all(self.trees[s] is None for s in slots):
            return None
        tree, state = self._slot_tree[idx], self.state[idx]
        scores, nexts = self._pool.rows(tree.clamp(min=0), state)
        none = (tree < 0).unsqueeze(1)
        return BatchKeyterms(self._pool, tree, state, scores.masked_fill(none, 0.0), nexts.masked_fill(none, 0))

    def scatter(self, idx: Tensor, batch: BatchKeyterms | None) -> None:
        if batch is not None:
            self.state[idx] = batch.state
