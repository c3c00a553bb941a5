"""The NeMo key-term fixture of the small model (tests/golden/keyterms/small_R1.json, made by
scripts/make_golden.py --keyterms) for the socket-level key-term tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parakeet_streaming.model.loader import load_model

GOLDEN = Path(__file__).parent / "golden"
CASE = GOLDEN / "keyterms" / "small_R1.json"


def skip_without_case() -> None:
    if not CASE.exists():
        pytest.skip("no key-term references (run scripts/make_golden.py --keyterms)", allow_module_level=True)


def load_case() -> tuple[dict, dict, object]:
    """(the case's JSON, the small model's golden reference, the NeMo-saved small model at [70,1]);
    the `keyterm_case` fixture (conftest.py)."""
    doc = json.loads(CASE.read_text())
    ref = dict(np.load(GOLDEN / "small" / "ref_speech_R1.npz"))
    model = load_model(str(GOLDEN / "small" / "model.nemo"))
    model.set_att_context_size((70, 1))
    return doc, ref, model
