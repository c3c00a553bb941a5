"""Batched streaming steps: batching, join/leave timing and push sizes never change a stream's output."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parakeet_streaming.engine.runner import Runner


def expected_frames(num_samples: int) -> int:
    n = num_samples // 160
    for _ in range(3):
        n = n // 2 + 1 if n else 0
    return n


def run_alone(model, samples: np.ndarray, push: int = 1600) -> tuple[list[int], int, list[int]]:
    runner = Runner(model, 1)
    runner.open(0)
    tokens, frames = [], []
    for i in range(0, len(samples), push):
        runner.push(0, samples[i:i + push])
        while runner.ready(0):
            out = runner.step([0])[0]
            tokens += out.token_ids
            frames += out.token_frames
    runner.finish(0)
    done = False
    while runner.ready(0):
        out = runner.step([0])[0]
        tokens += out.token_ids
        frames += out.token_frames
        done = out.done
    assert done
    return tokens, out.frames_decoded, frames


def test_whole_stream_is_decoded(tiny_model, speech) -> None:
    tokens, n_frames, frames = run_alone(tiny_model, speech)
    assert n_frames == expected_frames(len(speech))
    assert tokens, "calibrated tiny model should emit tokens on speech"
    assert frames == sorted(frames) and frames[-1] < n_frames


@pytest.mark.parametrize("push", [1, 160, 999, 2560, 100_000])
def test_push_size_does_not_matter(tiny_model, speech, push) -> None:
    clip = speech[: 16000 * 2 + 777] if push == 1 else speech
    assert run_alone(tiny_model, clip, push) == run_alone(tiny_model, clip, 1600)


@pytest.mark.parametrize("tail", [0, 1, 159, 160, 161, 1280, 2559, 2560, 2561])
def test_tail_lengths(tiny_model, speech, tail) -> None:
    """Any length ends deterministically with every valid frame decoded."""
    clip = speech[: 9 * 160 + 199 + 2560 * 3 + tail]
    a = run_alone(tiny_model, clip, 2560)
    b = run_alone(tiny_model, clip, 333)
    assert a == b
    assert a[1] == expected_frames(len(clip))


def test_empty_and_tiny_streams_finish(tiny_model) -> None:
    for n in (0, 100, 159, 160, 500):
        tokens, frames, _ = run_alone(tiny_model, np.zeros(n, dtype=np.float32))
        assert frames == expected_frames(n)


def test_batching_does_not_change_tokens(tiny_model, speech, short_speech) -> None:
    """Streams of different lengths that join at different times and push at different sizes get
    exactly the tokens they get alone."""
    rng = np.random.default_rng(0)
    noisy = (speech[::-1] + 0.01 * rng.standard_normal(len(speech))).astype(np.float32)
    clips = [speech, short_speech, noisy, speech[5000:]]
    alone = [run_alone(tiny_model, c) for c in clips]

    runner = Runner(tiny_model, 6)
    slots = [4, 0, 2, 5]
    starts = [0, 3, 7, 1]  # ticks at which each stream joins
    pushes = [1600, 640, 4000, 2560]
    pos = [0] * 4
    got = {i: ([], []) for i in range(4)}
    finished = [False] * 4
    done = [False] * 4
    tick = 0
    while not all(done):
        for i, slot in enumerate(slots):
            if tick == starts[i]:
                runner.open(slot)
            if tick >= starts[i] and not finished[i]:
                runner.push(slot, clips[i][pos[i]:pos[i] + pushes[i]])
                pos[i] += pushes[i]
                if pos[i] >= len(clips[i]):
                    runner.finish(slot)
                    finished[i] = True
        ready = [s for i, s in enumerate(slots) if tick >= starts[i] and not done[i] and runner.ready(s)]
        if ready:
            for out in runner.step(ready):
                i = slots.index(out.slot)
                got[i][0].extend(out.token_ids)
                got[i][1].extend(out.token_frames)
                done[i] = out.done
        tick += 1
        assert tick < 10_000
    for i in range(4):
        assert got[i][0] == alone[i][0], f"stream {i} tokens changed when batched"
        assert got[i][1] == alone[i][2]


def test_slot_reuse_starts_fresh(tiny_model, speech, short_speech) -> None:
    runner = Runner(tiny_model, 1)
    for clip in (speech, short_speech):
        runner.open(0)
        runner.push(0, clip)
        runner.finish(0)
        tokens = []
        while runner.ready(0):
            tokens += runner.step([0])[0].token_ids
        runner.release(0)
        assert tokens == run_alone(tiny_model, clip)[0]


def test_confidences_are_probabilities(tiny_model, speech) -> None:
    runner = Runner(tiny_model, 1)
    runner.open(0)
    runner.push(0, speech)
    runner.finish(0)
    confs, toks = [], []
    while runner.ready(0):
        out = runner.step([0])[0]
        confs += out.confidences
        toks += out.token_ids
    assert len(confs) == len(toks) and confs
    assert all(0.0 <= c <= 1.0 for c in confs)
    assert len(set(round(c, 6) for c in confs)) > 1


def test_confidence_formula() -> None:
    from parakeet_streaming.model.rnnt import tsallis_confidence

    v = 11
    onehot = torch.full((1, v), -1e4)
    onehot[0, 3] = 0.0
    assert float(tsallis_confidence(onehot)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(tsallis_confidence(torch.zeros(1, v))[0]) == pytest.approx(0.0, abs=1e-6)
    a = tsallis_confidence(torch.tensor([[3.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]))
    b = tsallis_confidence(torch.tensor([[6.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]))
    assert 0 < float(a) < float(b) < 1
