"""Bucketed steady-state encoder steps (engine/graphs.py): the bucketing and padding logic, and a
runner with `cuda_graphs=True` run on the CPU (the same padded path, without capture) giving every
stream what the plain runner gives it, with the padding rows never touching a real slot."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from parakeet_streaming.engine.graphs import BucketedGraphs, bucket_for, buckets, pad_slots
from parakeet_streaming.engine.runner import Runner


def test_buckets_cover_every_batch_with_bounded_padding() -> None:
    assert buckets(1) == [1]
    assert buckets(5) == [1, 2, 3, 4, 6]
    sizes = buckets(512)
    assert sizes[:10] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32] and sizes[-1] == 512
    assert sizes == sorted(set(sizes))
    for n in range(1, 513):
        b = bucket_for(n, sizes)
        assert b >= n and b - n < b / 3
        assert all(s < n for s in sizes if s < b)  # the smallest that fits
    for bad in (0, 513):
        with pytest.raises(ValueError):
            bucket_for(bad, sizes)


def test_pad_slots() -> None:
    assert pad_slots([4, 1, 7], 4, scratch=9) == [4, 1, 7, 9]
    assert pad_slots([2], 1, scratch=9) == [2]
    with pytest.raises(ValueError):
        pad_slots([1, 2, 3], 2, scratch=9)


def test_bucketed_call_pads_and_unpads() -> None:
    seen = []

    def fn(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), slots.clone()))
        return x.sum(dim=(1, 2)) * 10 + slots

    graphs = BucketedGraphs(fn, (2, 3), torch.float32, torch.device("cpu"), max_batch=16, scratch=99, capture=True)
    x = torch.arange(5 * 6, dtype=torch.float32).view(5, 2, 3)
    out = graphs(x, torch.tensor([3, 0, 4, 1, 2]))
    assert torch.equal(out, x.sum(dim=(1, 2)) * 10 + torch.tensor([3, 0, 4, 1, 2]))
    padded_x, padded_slots = seen[-1]
    assert padded_slots.tolist() == [3, 0, 4, 1, 2, 99]  # bucket 6, the scratch slot last
    assert torch.equal(padded_x[:5], x) and not padded_x[5:].any()
    graphs(x[:2], torch.tensor([7, 8]))  # a smaller bucket after a bigger one: its own buffers
    assert seen[-1][1].tolist() == [7, 8]
    assert graphs.captured() == []  # capture only on CUDA
    assert graphs.prepare([9]) == [] and 12 in graphs._buckets and len(seen) == 2  # built, not run
    with pytest.raises(ValueError):
        graphs(torch.zeros(2, 3, 3), torch.tensor([0, 1]))


def stream_all(runner: Runner, clips: list[np.ndarray], slots: list[int], starts: list[int], push: int = 2560,
               snapshot_tick: int = 12):
    """Stream every clip in its slot, each from its start tick on; per slot tokens, confidences, frames,
    and the encoder state (conv caches) at `snapshot_tick` with the slots then still streaming."""
    got = {s: ([], [], []) for s in slots}
    snapshot: tuple[torch.Tensor, list[int]] | None = None
    pos = [0] * len(clips)
    done: set[int] = set()
    tick = 0
    while len(done) < len(slots):
        for i, s in enumerate(slots):
            if tick == starts[i]:
                runner.open(s)
            if tick >= starts[i] and pos[i] < len(clips[i]):
                runner.push(s, clips[i][pos[i]:pos[i] + push])
                pos[i] += push
                if pos[i] >= len(clips[i]):
                    runner.finish(s)
        ready = [s for i, s in enumerate(slots) if tick >= starts[i] and s not in done and runner.ready(s)]
        for out in runner.step(ready) if ready else []:
            got[out.slot][0].extend(out.token_ids)
            got[out.slot][1].extend(out.confidences)
            got[out.slot][2].extend(out.token_frames)
            if out.done:
                done.add(out.slot)
        if tick == snapshot_tick:
            snapshot = (runner.table.enc.time.clone(), [s for i, s in enumerate(slots) if tick >= starts[i]
                                                        and s not in done])
        tick += 1
    return got, snapshot


def test_padded_steady_steps_equal_plain_steps(tiny_model, speech, short_speech) -> None:
    """Five to seven streams joining and ending at different ticks: all-steady steps (padded to
    their bucket), steps mixing steady rows with first or tail chunks (split), and eager ones."""
    rng = np.random.default_rng(1)
    noisy = (speech[::-1] + 0.01 * rng.standard_normal(len(speech))).astype(np.float32)
    clips = [speech, short_speech, noisy, speech[3000:], speech[:20000], short_speech[::-1].copy(), noisy[5000:]]
    slots = [6, 0, 3, 2, 5, 1, 8]  # not contiguous
    starts = [0, 0, 0, 1, 1, 4, 9]
    decoded: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"plain": [], "graphs": []}
    results, runners, snapshots = {}, {}, {}
    greedy = tiny_model.greedy
    decode = greedy.decode
    for mode in ("plain", "graphs"):
        runner = runners[mode] = Runner(tiny_model, 9, cuda_graphs=mode == "graphs")

        def keep(enc, length, *args, mode=mode, **kwargs):  # what the decoder gets: encoder output per step
            decoded[mode].append((enc.clone(), length.clone()))
            return decode(enc, length, *args, **kwargs)

        greedy.decode = keep
        try:
            results[mode], snapshots[mode] = stream_all(runner, clips, slots, starts)
        finally:
            del greedy.decode  # back to the class's method
    assert set(runners["graphs"].graphs._buckets) >= {6, 4}, "all-steady and split steps went through the buckets"
    assert runners["graphs"].table.enc.key.size(1) == 10  # nine slots and the scratch slot
    for s in slots:
        tokens, confs, frames = results["graphs"][s]
        assert tokens == results["plain"][s][0] and frames == results["plain"][s][2]
        assert np.allclose(confs, results["plain"][s][1], atol=1e-5)
        assert tokens, "the tiny model emits on speech"
    assert len(decoded["plain"]) == len(decoded["graphs"])
    for (a, la), (b, lb) in zip(decoded["plain"], decoded["graphs"]):
        assert torch.equal(la, lb) and a.shape == b.shape
        valid = torch.arange(a.size(1)).unsqueeze(0) < la.unsqueeze(1)
        assert torch.allclose(a[valid], b[valid], atol=1e-5)
    # The encoder state of every real slot is the plain runner's: the padding rows wrote elsewhere.
    # (The conv caches are compared mid-stream: after a stream's last, short chunk they hold zeros
    # for the batch's padded frames, which depend on the batch and are never read again.)
    plain, padded = runners["plain"].table.enc, runners["graphs"].table.enc
    for name in ("key", "value"):
        assert torch.allclose(getattr(plain, name), getattr(padded, name)[:, :9], atol=1e-5), name
    assert torch.equal(plain.frames, padded.frames[:9])
    (time_plain, live), (time_padded, live_too) = snapshots["plain"], snapshots["graphs"]
    assert live == live_too and len(live) >= 4
    assert torch.allclose(time_plain[:, live], time_padded[:, live], atol=1e-5)
