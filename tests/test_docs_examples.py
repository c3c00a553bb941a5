"""The client examples in docs/examples run against the real server (`parakeet-server serve` as a
subprocess, tiny random-weight model in a .nemo file) and print the transcript `transcribe` gives."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest
from server_helpers import CLI, start_server_process, stop_server_process
from test_loader import write_nemo

pytestmark = pytest.mark.slow  # a subprocess server

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
TIMEOUT = 120


@pytest.fixture(scope="module")
def tiny_nemo(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nemo(tiny_model, tmp_path_factory.mktemp("docs_model") / "tiny.nemo")


@pytest.fixture(scope="module")
def server(tiny_nemo: Path, tmp_path_factory: pytest.TempPathFactory):
    """`parakeet-server serve` on OS-chosen ports -> {"tcp": port, "ws": port, "status": port}."""
    log = tmp_path_factory.mktemp("docs_server") / "stderr.log"
    proc, ports = start_server_process(["--model", str(tiny_nemo), "--max-num-streams", "4"], log=log)
    try:
        yield ports
    finally:
        stop_server_process(proc)


@pytest.fixture(scope="module")
def expected(tiny_nemo: Path, speech_wav: Path) -> str:
    """The offline transcript of the same file with the same model."""
    out = subprocess.run(CLI + ["transcribe", str(speech_wav), "--model", str(tiny_nemo), "--json"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    text = json.loads(out.stdout)["text"]
    assert text  # the tiny model is calibrated to emit tokens on this speech
    return text


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def run_example(cmd: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    return out, time.monotonic() - started


def check_transcript(out: subprocess.CompletedProcess, expected: str) -> None:
    assert out.returncode == 0, f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    lines = out.stdout.splitlines()
    assert lines and lines[-1] == f"final: {expected}", out.stdout
    assert [line for line in lines if line.startswith("partial: ")], out.stdout
    assert "error" not in out.stderr, out.stderr


@pytest.mark.parametrize("mode", ["json-realtime", "binary-fast"])
def test_python_websocket_example(server, speech_wav, expected, mode) -> None:
    cmd = [sys.executable, str(EXAMPLES / "stream_file.py"), str(speech_wav), "--url", f"ws://127.0.0.1:{server['ws']}"]
    cmd += ["--speed", "1"] if mode == "json-realtime" else ["--speed", "0", "--binary"]
    out, elapsed = run_example(cmd)
    check_transcript(out, expected)
    if mode == "json-realtime":
        assert elapsed >= 0.9 * wav_seconds(speech_wav), elapsed  # really paced at real time


def test_python_tcp_example(server, speech_wav, expected) -> None:
    out, elapsed = run_example([sys.executable, str(EXAMPLES / "stream_file_tcp.py"), str(speech_wav),
                                "--host", "127.0.0.1", "--port", str(server["tcp"]), "--speed", "4"])
    check_transcript(out, expected)
    assert elapsed >= 0.9 * wav_seconds(speech_wav) / 4, elapsed


def test_typescript_example(server, speech_wav, expected, tmp_path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the TypeScript example")
    src = EXAMPLES / "typescript"
    work = tmp_path / "typescript"
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("node_modules", "dist"))
    for cmd in (["npm", "ci", "--no-audit", "--no-fund"], ["npx", "--no-install", "tsc"]):
        build = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=300)
        assert build.returncode == 0, f"{' '.join(cmd)}:\n{build.stdout}\n{build.stderr}"
    out, elapsed = run_example(["node", "dist/stream.js", str(speech_wav), "--url", f"ws://127.0.0.1:{server['ws']}",
                                "--speed", "2"], cwd=work)
    check_transcript(out, expected)
    assert elapsed >= 0.9 * wav_seconds(speech_wav) / 2, elapsed
