"""The runnable examples of docs/integrations (docs/examples/integrations/*.py) against the real
server (`parakeet-server serve` as a subprocess, the tiny model in a .nemo file), each with the
third-party client it shows: their transcript is the native protocol's for the same file."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from integration_helpers import RATE, RATE_24K, pcm16, same_words, two_utterances, two_utterances_24k  # noqa: F401
from integration_helpers import write_wav
from server_helpers import start_server_process, stop_server_process
from test_loader import write_nemo
from websockets.sync.client import connect

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples" / "integrations"
TIMEOUT = 180


def needs(*modules: str) -> None:
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            pytest.skip(f"{name} is not installed (the integrations extra)")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory: pytest.TempPathFactory):
    nemo = write_nemo(tiny_model, tmp_path_factory.mktemp("integrations_model") / "tiny.nemo")
    log = tmp_path_factory.mktemp("integrations_server") / "stderr.log"
    proc, ports = start_server_process(["--model", str(nemo), "--max-num-streams", "4"], log=log)
    try:
        yield ports
    finally:
        stop_server_process(proc)


@pytest.fixture(scope="module")
def wavs(two_utterances, two_utterances_24k, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("integrations_audio")
    return {RATE: write_wav(folder / "speech16k.wav", two_utterances, RATE),
            RATE_24K: write_wav(folder / "speech24k.wav", two_utterances_24k, RATE_24K)}


@pytest.fixture(scope="module")
def expected(server, two_utterances, two_utterances_24k) -> dict[int, str]:
    """The native protocol's transcript of each file, from the same server."""
    out = {}
    for rate, samples in ((RATE, two_utterances), (RATE_24K, two_utterances_24k)):
        with connect(f"ws://127.0.0.1:{server['ws']}/?sample_rate={rate}", max_size=None) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "hello"
            data = pcm16(samples)
            for i in range(0, len(data), 8192):
                ws.send(data[i:i + 8192])
            ws.send(json.dumps({"type": "close"}))
            msgs = []
            while not (msgs and msgs[-1].get("is_final")):
                msgs.append(json.loads(ws.recv(timeout=30)))
        out[rate] = msgs[-1]["text"]
        assert out[rate]
    return out


def run(script: str, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr[-4000:]}"
    lines = out.stdout.splitlines()
    assert lines and lines[-1].startswith("final: "), out.stdout
    return lines


def check(lines: list[str], expected: str, streamed: str) -> None:
    assert same_words(lines[-1][len("final: "):], expected), (lines[-1], expected)
    assert any(line.startswith(streamed) for line in lines), lines  # text arrived before the end


def test_deepgram_sdk_example(server, wavs, expected):
    needs("deepgram")
    lines = run("deepgram_sdk.py", str(wavs[RATE]), "--url", f"ws://127.0.0.1:{server['ws']}")
    check(lines, expected[RATE], "partial: ")


def test_openai_realtime_example(server, wavs, expected):
    needs("openai", "soxr")
    lines = run("openai_realtime.py", str(wavs[RATE_24K]), "--url", f"ws://127.0.0.1:{server['ws']}/v1")
    check(lines, expected[RATE_24K], "delta: ")


@pytest.mark.parametrize("service, rate", [("deepgram", RATE), ("openai", RATE_24K)])
def test_pipecat_example(server, wavs, expected, service, rate):
    needs("pipecat", "deepgram", "openai")
    lines = run("pipecat_stt.py", str(wavs[rate]), "--service", service, "--url", f"ws://127.0.0.1:{server['ws']}")
    check(lines, expected[rate], "segment: ")


@pytest.mark.parametrize("plugin, rate", [("deepgram", RATE), ("openai", RATE_24K)])
def test_livekit_example(server, wavs, expected, plugin, rate):
    needs("livekit.agents", "livekit.plugins.deepgram", "livekit.plugins.openai")
    lines = run("livekit_stt.py", str(wavs[rate]), "--plugin", plugin, "--url", f"http://127.0.0.1:{server['ws']}")
    check(lines, expected[rate], "segment: ")
    if plugin == "deepgram":
        assert "end of speech" in lines
