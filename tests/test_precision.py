"""Accuracy guard for the lower-precision modes (bench/precision.py explains the sharpened fixtures):
on the golden fixtures, bfloat16 / float16 token sequences stay within 2% token edit distance of
float32, and float32 itself is untouched by the precision machinery."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from precision import GOLDEN, edit_distance, fixture_model, set_precision, sharpen, stream_tokens  # noqa: E402

FIXTURES = ["small/ref_speech_R1.npz", "large/ref_speech_R13.npz", "variant/ref_speech_R4.npz"]


@pytest.fixture(scope="module", params=FIXTURES)
def sharpened(request):
    ref = GOLDEN / request.param
    samples = np.load(ref)["samples"]
    model = sharpen(fixture_model(ref), samples)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return ref, samples, state, stream_tokens(model, samples)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_within_two_percent(sharpened, dtype) -> None:
    ref, samples, state, reference = sharpened
    assert len(reference) >= 15
    model = fixture_model(ref)
    model.load_state_dict(state)
    tokens = stream_tokens(set_precision(model, dtype), samples)
    assert edit_distance(reference, tokens) <= 0.02 * len(reference)


def test_sharpening_keeps_float32_decisions(sharpened) -> None:
    """The fitted joint reproduces the fixture's float32 tokens: the guard measures rounding only."""
    ref, samples, _, reference = sharpened
    original = stream_tokens(fixture_model(ref), samples)
    assert edit_distance(original, reference) <= 0.02 * len(original)


def test_edit_distance() -> None:
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2], [2, 1]) == 2
