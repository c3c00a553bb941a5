"""docs/examples/endpointing.py and timestamps.py against a real `parakeet-server serve` subprocess
(tiny random-weight model in a .nemo file, silence endpointing on)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from integration_helpers import write_wav
from server_helpers import CLI, start_server_process, stop_server_process
from test_docs_examples import EXAMPLES, TIMEOUT, expected, tiny_nemo  # noqa: F401
from test_endpointing import PAUSE_S, sentences, speech_end_ms  # noqa: F401

pytestmark = pytest.mark.slow  # a subprocess server

SILENCE_MS = 500




def offline_text(nemo: Path, wav: Path) -> str:
    out = subprocess.run(CLI + ["transcribe", str(wav), "--model", str(nemo)], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    return out.stdout.rstrip("\n")


@pytest.fixture(scope="module")
def ws_url(tiny_nemo: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("feature_server") / "stderr.log"
    proc, ports = start_server_process(["--model", str(tiny_nemo), "--max-num-streams", "2",
                                        "--endpoint-silence-ms", str(SILENCE_MS)], log=log)
    try:
        yield f"ws://127.0.0.1:{ports['ws']}"
    finally:
        stop_server_process(proc)


def run(script: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    return out.stdout.splitlines()


def test_endpointing_example(ws_url, tiny_nemo, sentences, tmp_path) -> None:
    a, b = sentences
    wav = write_wav(tmp_path / "paused.wav", np.concatenate([a, np.zeros(int(PAUSE_S * 16000), np.float32), b]), 16000)
    lines = run("endpointing.py", str(wav), "--url", ws_url, "--speed", "0")
    silence = [int(m.group(1)) for line in lines if (m := re.match(r"eou \d+ \(silence\) at (\d+) ms: ", line))]
    end = speech_end_ms(a)
    assert any(end + SILENCE_MS - 100 <= ms <= end + SILENCE_MS + 100 for ms in silence), lines
    assert lines[-1] == f"final: {offline_text(tiny_nemo, wav)}"


def test_timestamps_example_with_a_flush(ws_url, tiny_nemo, speech_wav, tmp_path) -> None:
    from conftest import read_wav

    lines = run("timestamps.py", str(speech_wav), "--url", ws_url, "--speed", "0", "--flush-at", "1.5")
    head = write_wav(tmp_path / "head.wav", read_wav(speech_wav)[:24000], 16000)
    (flushed,) = [line for line in lines if line.startswith("flushed: ")]
    assert flushed == f"flushed: {offline_text(tiny_nemo, head)}"
    words = [line.split(" ", 3) for line in lines if line.startswith("word ")]
    assert len(words) >= 3
    spans = [tuple(map(int, w[1].split("-"))) for w in words]
    assert all(s < e for s, e in spans) and [s for s, _ in spans] == sorted(s for s, _ in spans)
    final = lines[-1].removeprefix("final: ")
    # random tokens may start the segment after the flush mid-word: compare without spaces
    assert "".join(w[3] for w in words).replace(" ", "") == final.replace(" ", "")


def test_transcribe_cli_takes_the_endpoint_flags(tiny_nemo, sentences, tmp_path) -> None:
    import json

    a, b = sentences
    wav = write_wav(tmp_path / "paused.wav", np.concatenate([a, np.zeros(int(PAUSE_S * 16000), np.float32), b]), 16000)
    out = subprocess.run(CLI + ["transcribe", str(wav), "--model", str(tiny_nemo), "--json",
                                "--endpoint-silence-ms", str(SILENCE_MS)], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    silence = [u["audio_ms"] for u in result["utterances"] if u.get("reason") == "silence"]
    end = speech_end_ms(a)
    assert any(end + SILENCE_MS - 100 <= ms <= end + SILENCE_MS + 100 for ms in silence), result["utterances"]
    assert result["text"] == offline_text(tiny_nemo, wav)  # endpoints never change the transcript
    assert len(result["token_start_ms"]) == len(result["token_ids"]) and result["words"]
