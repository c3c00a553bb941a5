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
