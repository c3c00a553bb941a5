"""Key terms (per-stream phrase boosting) against NeMo 3.0.0's GPU-PB per-stream biasing.

tests/golden/keyterms/ (scripts/make_golden.py --keyterms) holds, for the saved small and large
models, NeMo's boosted tokens of speech.wav for four streams batched together with different phrase
lists (one without), both over the whole-file encoder output and streamed chunk by chunk, and NeMo's
full score table of a boosting tree over random token phrases."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parakeet_streaming.engine.runner import Runner
from parakeet_streaming.model.boosting import BoostingParams, Keyterm, KeytermError, build_tree, compile_keyterms
from parakeet_streaming.model.loader import load_model

GOLDEN = Path(__file__).parent / "golden"
KT = GOLDEN / "keyterms"
CASES = sorted(KT.glob("*_R*.json"))

if not CASES:
    pytest.skip("no key-term references (run scripts/make_golden.py --keyterms)", allow_module_level=True)

_models: dict = {}


def model_for(family: str, r: int):
    if (family, r) not in _models:
        model = load_model(str(GOLDEN / family / "model.nemo"))
        model.set_att_context_size((70, r))
        _models[family, r] = model
    return _models[family, r]


def keyterms_of(stream: dict) -> tuple[list, BoostingParams]:
    weights = stream["weights"] or [None] * len(stream["keyterms"])
    terms = [Keyterm(t, w) for t, w in zip(stream["keyterms"], weights)]
    if not terms:
        return [], BoostingParams()
    return terms, BoostingParams(stream["context_score"], stream["depth_scaling"], stream["alpha"])


def run(model, jobs: list[tuple[int, np.ndarray, list, BoostingParams]], num_slots: int = 6):
    """Stream every (slot, samples, keyterms, params) together in one runner; per slot the new
    tokens of each step that decoded something and all confidences."""
    runner = Runner(model, num_slots)
    for slot, samples, terms, params in jobs:
        runner.open(slot, terms or None, params)
        runner.push(slot, samples)
        runner.finish(slot)
    counts = {slot: [] for slot, *_ in jobs}
    tokens = {slot: [] for slot, *_ in jobs}
    confs = {slot: [] for slot, *_ in jobs}
    while True:
        ready = [slot for slot, *_ in jobs if runner.ready(slot)]
        if not ready:
            return tokens, counts, confs
        for out in runner.step(ready):
            if out.frames_decoded:
                tokens[out.slot] += out.token_ids
                confs[out.slot] += out.confidences
                counts[out.slot].append(len(out.token_ids))


def clean_chunks(r: int, mel_len: int, n_chunks: int) -> int:
    """Chunks before the one that feeds NeMo's extra all-zero mel frame (see test_golden.py)."""
    end, k = 1 + 8 * r, 0
    while k < n_chunks and end <= mel_len:
        k += 1
        end += 8 * (r + 1)
    return k


@pytest.fixture(scope="module", params=CASES, ids=lambda p: p.stem)
def case(request):
    doc = json.loads(request.param.read_text())
    r = doc["att_context_size"][1]
    model = model_for(doc["family"], r)
    ref = dict(np.load(GOLDEN / doc["family"] / f"ref_speech_R{r}.npz"))
    slots = [4, 1, 5, 0]  # not in stream order, to show nothing depends on it
    jobs = [(slot, ref["samples"], *keyterms_of(s)) for slot, s in zip(slots, doc["streams"])]
    tokens, counts, confs = run(model, jobs)
    return doc, ref, model, [tokens[s] for s in slots], [counts[s] for s in slots], [confs[s] for s in slots]


def test_keyterm_tokens_equal_nemo(case) -> None:
    doc, _, model, *_ = case
    for s in doc["streams"]:
        assert [model.tokenizer.encode(t) for t in s["keyterms"]] == s["keyterm_token_ids"]


def test_batched_boosted_streams_equal_nemo_streaming(case) -> None:
    """Four streams with different lists in one batch: per chunk, NeMo's cache-aware streaming with
    per-stream biasing (up to the chunk where NeMo's buffer feeds its extra zero mel frame)."""
    doc, ref, model, tokens, counts, _ = case
    r = doc["att_context_size"][1]
    for i, s in enumerate(doc["streams"]):
        k = clean_chunks(r, int(ref["mel_len"][0]), len(s["stream_token_counts"]))
        assert k >= 3
        n = sum(s["stream_token_counts"][:k])
        assert counts[i][:k] == s["stream_token_counts"][:k], f"stream {i}"
        assert tokens[i][:n] == s["stream_tokens"][:n], f"stream {i}"


def test_batched_boosted_streams_equal_nemo_offline(case) -> None:
    """Whole streams: NeMo's boosted greedy over the whole file, token for token, every stream."""
    doc, ref, _, tokens, _, confs = case
    for i, s in enumerate(doc["streams"]):
        assert tokens[i] == s["offline_tokens"], f"stream {i}"
        assert len(confs[i]) == len(tokens[i])
    assert tokens[0] == ref["offline_tokens"].tolist()  # the stream without key terms is untouched
    assert np.max(np.abs(np.array(confs[0]) - ref["offline_token_conf_tsallis"])) <= 1e-4
    outputs = [tuple(t) for t in tokens]
    assert len(set(outputs)) == len(outputs), "every list changes the transcript its own way"


def test_fixtures_exercise_the_tree(case) -> None:
    """The references cover deep matches, completed phrases and broken partial matches (fallback)."""
    doc, _, model, tokens, *_ = case
    seen = {"deep": 0, "complete": 0, "broken": 0}
    for s, toks in zip(doc["streams"][1:], tokens[1:]):
        tree = compile_keyterms(model.tokenizer, *keyterms_of(s))
        state = 0
        for t in toks:
            nxt = int(tree.row(state)[1][t])
            seen["deep"] += int(tree.depth[nxt] >= 2)
            seen["complete"] += int(tree.is_end[nxt])
            seen["broken"] += int(state != 0 and tree.depth[nxt] != tree.depth[state] + 1)
            state = nxt
    assert all(v > 0 for v in seen.values()), seen


# ------------------------------------------------------------------------------------- the tree alone
def test_tree_equals_nemo_score_table() -> None:
    """Every state of NeMo's tree (60 random phrases over 8 tokens: shared prefixes, phrases inside
    phrases, duplicates, per-phrase weights): the same score for every label and the same next state."""
    ref = dict(np.load(KT / "tree_small.npz"))
    phrases = [[t for t in row if t >= 0] for row in ref["phrases"].tolist()]
    cs = float(ref["context_score"])
    assert cs == 1.2
    scores = [w if w != 0.0 else cs for w in ref["weights"].tolist()]
    vocab = ref["scores"].shape[1]
    tree = build_tree(phrases, scores, float(ref["depth_scaling"]), vocab)
    paths = [tuple(t for t in row if t >= 0) for row in ref["state_paths"].tolist()]
    assert tree.num_states == len(paths)
    ours = {}
    for path in paths:
        state = 0
        for t in path:
            state = int(tree.row(state)[1][t])
        ours[path] = state
    assert len(set(ours.values())) == len(paths)
    for nemo_state, path in enumerate(paths):
        s, nxt = tree.row(ours[path])
        np.testing.assert_array_equal(s, ref["scores"][nemo_state])
        assert [ours[paths[j]] for j in ref["next"][nemo_state]] == nxt.tolist()


def test_broken_match_gives_back_and_complete_phrase_keeps() -> None:
    """The scores mean what docs/keyterms.md says: a partial match that breaks gives back what it
    earned, a completed phrase keeps it, deeper tokens earn more."""
    tree = build_tree([[1, 2, 3], [4]], [1.0, 1.0], 2.0, 10)
    s0, n0 = tree.row(0)
    assert s0[1] == 1.0 and s0[4] == 1.0 and s0[7] == 0.0
    s1, n1 = tree.row(int(n0[1]))
    assert s1[2] == np.float32(2.0 + np.log(2)) and s1[7] == -1.0 and s1[4] == 0.0  # -1 back, +1 for "4"
    s2, n2 = tree.row(int(n1[2]))
    assert s2[3] == np.float32(2.0 + np.log(3)) and s2[7] == np.float32(-(1.0 + 2.0 + np.log(2)))
    s3, _ = tree.row(int(n2[3]))
    assert s3[7] == 0.0 and s3[1] == 1.0  # complete: nothing given back


# ------------------------------------------------------------------------------------- the runner
def small_case():
    doc = json.loads((KT / "small_R1.json").read_text())
    model = model_for("small", 1)
    ref = dict(np.load(GOLDEN / "small" / "ref_speech_R1.npz"))
    return doc, model, ref


def test_zero_keyterms_identical_and_free() -> None:
    doc, model, ref = small_case()
    samples = ref["samples"]
    plain = run(model, [(0, samples, [], BoostingParams())])
    runner = Runner(model, 4)
    runner.open(1)
    runner.open(2, keyterms=[])
    runner.open(3, keyterms=None)
    assert runner.table.keyterms.gather([1, 2, 3], __import__("torch").tensor([1, 2, 3])) is None
    for slot in (1, 2, 3):
        runner.push(slot, samples)
        runner.finish(slot)
    tokens = {1: [], 2: [], 3: []}
    confs = {1: [], 2: [], 3: []}
    while any(runner.ready(s) for s in (1, 2, 3)):
        for out in runner.step([s for s in (1, 2, 3) if runner.ready(s)]):
            tokens[out.slot] += out.token_ids
            confs[out.slot] += out.confidences
    for slot in (1, 2, 3):
        assert tokens[slot] == plain[0][0] == ref["offline_tokens"].tolist()
        assert np.max(np.abs(np.array(confs[slot]) - plain[2][0])) <= 1e-6


def test_batch_invariance_with_mixed_lists_and_ragged_streams() -> None:
    """Each stream's output is NeMo's for its own list whatever else is in the batch: other lists,
    other lengths (speech_short ends early), other slot orders."""
    doc, model, ref = small_case()
    short = dict(np.load(GOLDEN / "small" / "ref_speech_short_R1.npz"))["samples"]
    streams = doc["streams"]
    terms = [keyterms_of(s) for s in streams]
    alone = [run(model, [(0, ref["samples"], *terms[i])])[0][0] for i in range(4)]
    assert alone == [s["offline_tokens"] for s in streams]
    short_alone = [run(model, [(0, short, *terms[i])])[0][0] for i in (1, 2)]
    jobs = [(3, short, *terms[1]), (0, ref["samples"], *terms[2]), (2, ref["samples"], *terms[3]),
            (1, short, *terms[2]), (5, ref["samples"], *terms[1])]
    tokens = run(model, jobs)[0]
    assert tokens[0] == alone[2] and tokens[2] == alone[3] and tokens[5] == alone[1]
    assert tokens[3] == short_alone[0] and tokens[1] == short_alone[1]


def test_no_leak_between_streams_or_across_slot_reuse() -> None:
    doc, model, ref = small_case()
    samples = ref["samples"]
    streams = doc["streams"]
    runner = Runner(model, 2)

    def stream(slot: int, terms=None, params=BoostingParams()) -> list[int]:
        runner.open(slot, terms, params)
        runner.push(slot, samples)
        runner.finish(slot)
        out: list[int] = []
        while runner.ready(slot):
            out += runner.step([slot])[0].token_ids
        runner.release(slot)
        return out

    assert stream(1, *keyterms_of(streams[3])) == streams[3]["offline_tokens"]
    assert stream(1) == ref["offline_tokens"].tolist()  # the slot forgot its list
    assert stream(1, *keyterms_of(streams[1])) == streams[1]["offline_tokens"]
    # set_keyterms before the first step is the same as open(keyterms=...); removing them restores.
    runner.open(0)
    runner.set_keyterms(0, *keyterms_of(streams[2]))
    runner.push(0, samples)
    runner.finish(0)
    out: list[int] = []
    while runner.ready(0):
        out += runner.step([0])[0].token_ids
    assert out == streams[2]["offline_tokens"]
    runner.restart(0)  # a new segment keeps the list
    runner.push(0, samples)
    runner.finish(0)
    out = []
    while runner.ready(0):
        out += runner.step([0])[0].token_ids
    assert out == streams[2]["offline_tokens"]
    runner.open(0, *keyterms_of(streams[2]))
    runner.set_keyterms(0, None)
    runner.push(0, samples)
    runner.finish(0)
    out = []
    while runner.ready(0):
        out += runner.step([0])[0].token_ids
    assert out == ref["offline_tokens"].tolist()


def test_same_list_compiles_once_and_is_shared() -> None:
    _, model, _ = small_case()
    runner = Runner(model, 3)
    runner.open(0, ["good morning", ("kitchen", 2.0)])
    runner.open(1, ["good morning", ("kitchen", 2.0)])
    runner.open(2, ["good morning"])
    trees = runner.table.keyterms.trees
    assert trees[0] is trees[1] and trees[2] is not trees[0]
    assert runner.keyterm_count(0) == 2 and runner.keyterm_count(2) == 1
    # A tree compiled elsewhere (a transport thread) is taken as it is.
    tree = runner.compile_keyterms(["kitchen window"])
    runner.set_keyterms(2, tree)
    assert runner.table.keyterms.trees[2] is tree and runner.compile_keyterms(["kitchen window"]) is tree


@pytest.mark.parametrize("terms, params, match", [
    (["a"] * 1001, BoostingParams(), "at most 1000 key terms"),
    (["  "], BoostingParams(), "key term 0 is empty"),
    ("hello", BoostingParams(), "must be a list"),
    ([42], BoostingParams(), "key term 0 must be a string"),
    ([["hello", 2.0, 3]], BoostingParams(), "key term 0 must be a string"),
    (["x" * 201], BoostingParams(), "longer than 200"),
    (["hello " * 12], BoostingParams(), "at most 32 per key term"),
    (["HELLO"], BoostingParams(), "cannot be spelled"),
    (["<EOU>"], BoostingParams(), "cannot be spelled"),
    ([("hello", -1.0)], BoostingParams(), "weight must be a number"),
    ([("hello", float("nan"))], BoostingParams(), "weight must be a number"),
    (["hello"], BoostingParams(context_score=0.0), "context_score"),
    (["hello"], BoostingParams(depth_scaling=0.5), "depth_scaling"),
    (["hello"], BoostingParams(alpha=1e9), "alpha"),
])
def test_limits_and_bad_lists_raise_keyterm_error(terms, params, match) -> None:
    _, model, ref = small_case()
    runner = Runner(model, 2)
    with pytest.raises(KeytermError, match=match):
        runner.open(1, terms, params)
    assert not runner.ready(1)  # the slot was not opened
    runner.open(1, ["good morning"])
    with pytest.raises(KeytermError, match=match):
        runner.set_keyterms(1, terms, params)
    assert runner.keyterm_count(1) == 1  # the old list stays


def test_limits_are_per_runner() -> None:
    _, model, _ = small_case()
    runner = Runner(model, 1, max_keyterms=2, max_keyterm_tokens=4)
    with pytest.raises(KeytermError, match="at most 2 key terms"):
        runner.open(0, ["good", "morning", "kitchen"])
    with pytest.raises(KeytermError, match="at most 4 per key term"):
        runner.open(0, ["temperature degrees"])
    runner.open(0, ["good", "morning"])


def test_many_distinct_lists_batched_equal_each_alone() -> None:
    """Eight streams, each with its own list of 100 phrases (so eight trees pooled on the device), in a
    batch of ten slots with two streams without lists, one stream released half-way: every stream
    decodes exactly as it does alone."""
    import random

    model = model_for("large", 1)
    samples = dict(np.load(GOLDEN / "large" / "ref_speech_R1.npz"))["samples"]
    words = "hello world turn the lights off please what time is it open door good morning kitchen".split()
    rng = random.Random(7)
    pools = [rng.sample(words, 6) for _ in range(8)]
    lists = [[" ".join(rng.choices(pool, k=rng.randint(1, 3))) for _ in range(100)] for pool in pools]
    slots = [7, 2, 9, 0, 4, 1, 8, 3]
    alone = {s: run(model, [(0, samples, terms, BoostingParams())])[0][0] for s, terms in zip(slots, lists)}
    runner = Runner(model, 10)
    for s, terms in zip(slots, lists):
        runner.open(s, terms)
    for s in (5, 6):
        runner.open(s)
    for s in range(10):
        runner.push(s, samples)
        runner.finish(s)
    tokens = {s: [] for s in range(10)}
    step = 0
    while any(runner.ready(s) for s in range(10)):
        for out in runner.step([s for s in range(10) if runner.ready(s)]):
            tokens[out.slot] += out.token_ids
        step += 1
        if step == 20:
            runner.release(6)  # its tree slot is gone from the pool; the others are unaffected
    for s in slots:
        assert tokens[s] == alone[s], s
    plain = run(model, [(0, samples, [], BoostingParams())])[0][0]
    assert tokens[5] == plain and len({tuple(t) for t in alone.values()}) > 1
