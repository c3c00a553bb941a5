"""Intra-op threads (engine/threads.py): the serving thread runs torch on one core, the engine thread
on --threads. Each case runs in its own interpreter: the thread counts are per process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from parakeet_streaming.cli import parse_args

TESTS = Path(__file__).parent

SCRIPT = """
import json, sys, threading
import numpy as np, torch
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from parakeet_streaming.engine.engine import Engine
from parakeet_streaming.engine.events import Result
from parakeet_streaming.engine.threads import reserve_for_engine
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.tokenizer import EOB_PIECE, EOU_PIECE, Tokenizer

threads = reserve_for_engine({requested})
model = ASRModel(tiny_config(), Tokenizer.synthetic(40, (EOU_PIECE, EOB_PIECE)), name="tiny")
model.randomize(0, std=0.2)
engine = Engine(model, 2, threads=threads)
engine.start()
assert engine.ready.wait(60)
seen, done = [], threading.Event()

def sink(event):
    seen.append(torch.get_num_threads())  # sinks run on the engine thread
    if isinstance(event, Result) and event.is_final:
        done.set()

sid = engine.open_stream(sink).result(10)
engine.send_audio(sid, np.zeros(16000, np.float32), final=True)
assert done.wait(60)
engine.shutdown()
print(json.dumps({{"returned": threads, "main": torch.get_num_threads(), "engine": sorted(set(seen))}}))
"""


def run_case(requested: int | None, env_threads: str | None = None) -> dict:
    env = {"PATH": "/usr/bin:/bin"}
    if env_threads is not None:
        env["OMP_NUM_THREADS"] = env_threads
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS), requested=requested)],
                         capture_output=True, text=True, timeout=120, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_engine_thread_gets_the_requested_cores_and_the_serving_thread_one() -> None:
    assert run_case(2) == {"returned": 2, "main": 1, "engine": [2]}


def test_default_is_torch_own_count() -> None:
    """Without --threads the engine uses what torch would have (here OMP_NUM_THREADS=2, whatever the
    machine), although the serving thread was set to one before the engine was built."""
    assert run_case(None, env_threads="2") == {"returned": 2, "main": 1, "engine": [2]}


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_threads_flag_rejects_non_positive_counts(bad: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        parse_args(["serve", "--threads", bad], {})
    assert "--threads: expected a whole number of cores, at least 1" in capsys.readouterr().err


def test_threads_flag_and_env() -> None:
    assert parse_args(["serve", "--threads", "3"], {}).threads == 3
    assert parse_args(["serve"], {"PARAKEET_THREADS": "1"}).threads == 1
    assert parse_args(["transcribe", "x.wav", "--threads", "2"], {}).threads == 2
