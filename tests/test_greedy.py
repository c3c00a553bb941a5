"""Greedy decoding by label looping (model/rnnt.py) against a plain frame loop written from NeMo's
description: per frame, emit labels until blank wins or `max_symbols` are out, feeding every label to
the LSTM; key terms looked up row by row in the compiled tree on the host (BoostingTree.row).
Random weights and encoder frames, ragged lengths, both loop schedules (CPU and sync-free)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.boosting import BoostingTree, KeytermTable, build_tree
from parakeet_streaming.model.rnnt import DecoderState, GreedyDecoder, tsallis_confidence
from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE, Tokenizer

VOCAB = 40


def frame_loop(greedy: GreedyDecoder, enc: torch.Tensor, lengths: list[int], state: DecoderState,
               trees: list[BoostingTree | None], kt_state: list[int]):
    """The reference: NeMo's frame-synchronous greedy loop over the batch, with host bookkeeping."""
    b, t, _ = enc.shape
    f_all = greedy.joint.enc(enc)
    h, c, g = state.h, state.c, state.g
    tokens, confs, frames = [[] for _ in range(b)], [[] for _ in range(b)], [[] for _ in range(b)]
    for ti in range(t):
        active = torch.tensor([ti < n for n in lengths])
        for _ in range(greedy.max_symbols):
            logits = greedy.joint.logits(f_all[:, ti], g)
            k = logits.argmax(-1)
            if any(trees):
                scores = torch.stack([torch.from_numpy(tree.row(s)[0]) if tree is not None
                                      else torch.zeros(VOCAB) for tree, s in zip(trees, kt_state)])
                boosted = (logits[:, :greedy.blank].float() + scores).argmax(-1)
                k = torch.where(k == greedy.blank, k, boosted)
            emit = active & (k != greedy.blank)
            if not emit.any():
                break
            conf = tsallis_confidence(logits)
            for r in emit.nonzero().flatten().tolist():
                tokens[r].append(int(k[r]))
                confs[r].append(float(conf[r]))
                frames[r].append(ti)
                if trees[r] is not None:
                    kt_state[r] = int(trees[r].row(kt_state[r])[1][int(k[r])])
            out, h2, c2 = greedy.decoder.step(torch.where(emit, k, greedy.blank), h, c)
            g2 = greedy.joint.pred(out)
            m = emit.view(1, -1, 1)
            h, c = torch.where(m, h2, h), torch.where(m, c2, c)
            g = torch.where(emit.unsqueeze(1), g2, g)
            active = emit
    return (tokens, confs, frames), DecoderState(h, c, g)


@pytest.fixture(scope="module")
def greedy() -> GreedyDecoder:
    model = ASRModel(tiny_config(max_symbols=3), Tokenizer.synthetic(VOCAB, (EOU_PIECE, EOB_PIECE)), name="tiny")
    model.randomize(3, std=0.3)
    return model.greedy


def random_trees(rng: np.random.Generator) -> list[BoostingTree]:
    def phrases(n: int) -> list[list[int]]:
        return [rng.integers(0, VOCAB, rng.integers(1, 4)).tolist() for _ in range(n)]

    return [build_tree(phrases(6), [3.0] * 6, 2.0, VOCAB, alpha=1.5),
            build_tree(phrases(2), [5.0, 1.0], 1.0, VOCAB)]


def set_blank_bias(greedy: GreedyDecoder, shift: float) -> None:
    bias = greedy.joint.joint_net[2].bias
    with torch.no_grad():
        bias[greedy.blank] = shift


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("blank_bias", [-30.0, 5.0, 7.0, 30.0])  # always emit, mixed, mostly blank, never
@pytest.mark.parametrize("with_keyterms", [False, True])
def test_label_looping_equals_frame_loop(greedy, sync_free, blank_bias, with_keyterms) -> None:
    set_blank_bias(greedy, blank_bias)
    rng = np.random.default_rng(int(abs(blank_bias) * 10) + 7 * with_keyterms)
    b, t = 7, 6
    lengths = [6, 0, 3, 6, 1, 5, 2]
    trees: list[BoostingTree | None] = [None] * b
    table = KeytermTable(b, VOCAB, torch.device("cpu"))
    if with_keyterms:
        pool = random_trees(rng)
        trees = [pool[0], None, pool[1], pool[0], None, pool[1], pool[0]]
        for slot, tree in enumerate(trees):
            table.set(slot, tree)
    state = greedy.initial_state(b, "cpu", torch.float32)
    ref_state, kt_state = state, [0] * b
    ours_state = state
    emitted_any, hits = 0, 0
    with torch.inference_mode():
        for call in range(3):  # state (and key-term state) carried across calls
            enc = torch.from_numpy(rng.standard_normal((b, t, 64)).astype(np.float32))
            (tokens, confs, frames), ref_state = frame_loop(greedy, enc, lengths, ref_state, trees, kt_state)
            idx = torch.arange(b)
            keyterms = table.gather(list(range(b)), idx)
            em, ours_state = greedy.decode(enc, torch.tensor(lengths), ours_state, keyterms, sync_free=sync_free)
            table.scatter(idx, keyterms)
            assert em.tokens == tokens
            assert em.frames == frames
            assert em.confidences == confs
            for name in ("h", "c", "g"):
                assert torch.equal(getattr(ours_state, name), getattr(ref_state, name))
            if with_keyterms:
                assert table.state.tolist() == kt_state
            emitted_any += sum(map(len, tokens))
            hits += sum(fr.count(f) == greedy.max_symbols for fr in frames for f in set(fr))
            assert all(not tokens[r] for r in range(b) if lengths[r] == 0)
    most = 3 * sum(lengths) * greedy.max_symbols  # three calls, every valid frame emitting max_symbols
    if blank_bias < 0:
        assert emitted_any == most
    elif blank_bias >= 30:
        assert emitted_any == 0
    else:  # some frames reach max_symbols, others emit less or nothing
        assert 0 < hits and 0 < emitted_any < most


def test_keyterms_change_the_decisions(greedy) -> None:
    """The key-term case above is not vacuous: the trees change which labels win."""
    set_blank_bias(greedy, -30.0)
    rng = np.random.default_rng(0)
    trees = random_trees(rng)
    table = KeytermTable(2, VOCAB, torch.device("cpu"))
    table.set(0, trees[0])
    enc = torch.from_numpy(rng.standard_normal((2, 6, 64)).astype(np.float32))
    with torch.inference_mode():
        state = greedy.initial_state(2, "cpu", torch.float32)
        plain, _ = greedy.decode(enc, torch.tensor([6, 6]), state)
        boosted, _ = greedy.decode(enc, torch.tensor([6, 6]), state, table.gather([0, 1], torch.arange(2)))
    assert boosted.tokens[0] != plain.tokens[0]
    assert boosted.tokens[1] == plain.tokens[1]


@pytest.mark.parametrize("sync_free", [False, True])
@pytest.mark.parametrize("t", [0, 3])
def test_nothing_to_decode(greedy, sync_free, t) -> None:
    set_blank_bias(greedy, -30.0)  # every valid frame would emit
    with torch.inference_mode():
        state = greedy.initial_state(3, "cpu", torch.float32)
        enc = torch.randn(3, t, 64)
        em, new = greedy.decode(enc, torch.zeros(3, dtype=torch.long), state, sync_free=sync_free)
    assert em.tokens == [[], [], []] and em.frames == [[], [], []]
    for name in ("h", "c", "g"):
        assert torch.equal(getattr(new, name), getattr(state, name))
