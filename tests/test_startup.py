"""`parakeet-server serve` as a new user meets it: bad flags fail at once, before any model work,
in one line with exit 2; model errors too (the traceback only with --log-level debug); a start says
what it loads before it loads it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

CLI = [sys.executable, "-m", "parakeet_streaming.cli"]
PORTS = ["--host", "127.0.0.1", "--port", "0", "--ws-port", "0", "--status-port", "0", "--http-port", "0"]


def run_cli(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI with its dummy-design cache and Hugging Face cache in tmp_path (both start empty)."""
    full_env = {**os.environ, "PARAKEET_CACHE_DIR": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
                "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("parakeet-server"), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("flags,env,needles", [
    (["--dtype", "int8"], {}, ["--dtype", "int8", "bfloat16"]),
    (["--att-context-size", "70,99"], {}, ["--att-context-size 70,99"]),
    (["--model-size", "large", "--att-context-size", "70,4"], {}, ["70,4", "trained with", "[70, 13]"]),
    (["--model", "/no/such/model.nemo", "--load-format", "auto"], {}, ["/no/such/model.nemo", "no such file"]),
    (["--device", "no-such-device"], {}, ["--device no-such-device"]),
    (["--cuda-graphs"], {}, ["--cuda-graphs needs --device cuda", "cpu"]),
    (["--threads", "0"], {}, ["--threads", "at least 1"]),
    (["--port", "9123", "--ws-port", "9123"], {}, ["--port and --ws-port", "9123"]),
    ([], {"PARAKEET_MAX_NUM_STREAMS": "many"}, ["PARAKEET_MAX_NUM_STREAMS", "integer"]),
])
def test_bad_flags_fail_before_any_model_work(tmp_path, flags, env, needles) -> None:
    out = run_cli(["serve", *PORTS, "--load-format", "dummy", *flags], tmp_path, env)
    assert_one_line_error(out, *needles)
    assert not (tmp_path / "cache").exists(), "the dummy model was built before the flags were checked"


def test_a_busy_port_fails_before_any_model_work(tmp_path, busy_port) -> None:
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--ws-port", str(busy_port), "--status-port", "0",
            "--http-port", "0", "--load-format", "dummy"]
    out = run_cli(args, tmp_path)
    assert_one_line_error(out, f"127.0.0.1:{busy_port}", "--ws-port", "in use")
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_build_is_one_line(tmp_path) -> None:
    out = run_cli(["serve", *PORTS, "--load-format", "dummy", "--device", "cuda"], tmp_path)
    assert_one_line_error(out, "--device cuda", "--device cpu")
    assert not (tmp_path / "cache").exists()


def test_model_errors_are_one_line_and_the_traceback_comes_with_debug(tmp_path) -> None:
    junk = tmp_path / "model.nemo"
    junk.write_bytes(b"not a tar archive" * 100)
    args = ["serve", *PORTS, "--model", str(junk), "--log-level", "warning"]
    assert_one_line_error(run_cli(args, tmp_path), str(junk), "not a .nemo archive")
    debug = run_cli(args[:-1] + ["debug"], tmp_path)
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("parakeet-server: ")


def test_offline_without_a_cached_model_is_one_line(tmp_path) -> None:
    out = run_cli(["serve", *PORTS, "--log-level", "warning"], tmp_path)
    assert_one_line_error(out, "no copy is cached", "--model /path/to/model.nemo")


def test_the_start_says_what_it_loads_before_loading(tmp_path) -> None:
    """The first lines name the model, dummy or real, device and dtype, and where the weights come
    from; read as they are printed, while the model is still being built."""
    env = {**os.environ, "PARAKEET_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen(CLI + ["serve", *PORTS, "--load-format", "dummy"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = [proc.stderr.readline() for _ in range(3)]
    finally:
        proc.kill()
        proc.wait()
    assert "starting with model small (dummy weights) on cpu (float32)" in lines[0], lines
    assert "is up: /healthz answers" in lines[1], lines
    assert "building small with dummy weights" in lines[2] and "no download" in lines[2], lines


def test_probes_answer_while_the_model_loads_and_a_signal_ends_the_load(tmp_path) -> None:
    """The HTTP port is up before the model: /healthz 200, /readyz 503 "loading" with the phase,
    transcriptions 503; here the load hangs in its download (a Hugging Face endpoint that never
    answers), and SIGTERM ends the process at once with exit 0."""
    import http.client
    import json
    import re
    import signal

    with socket.socket() as hub:  # accepts connections, never answers
        hub.bind(("127.0.0.1", 0))
        hub.listen(16)
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{hub.getsockname()[1]}", "HF_HOME": str(tmp_path),
               "HF_HUB_ETAG_TIMEOUT": "600", "HF_HUB_DOWNLOAD_TIMEOUT": "600"}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.Popen(CLI + ["serve", *PORTS], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=env)
        try:
            port = None
            for line in proc.stderr:
                if m := re.search(r"http 127\.0\.0\.1:(\d+) is up", line):
                    port = int(m.group(1))
                    break
            assert port, "no 'http ... is up' line"

            def get(path: str, method: str = "GET") -> tuple[int, dict]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request(method, path)
                resp = conn.getresponse()
                return resp.status, json.loads(resp.read() or b"{}")

            deadline = time.monotonic() + 60
            while (ready := get("/readyz"))[1].get("phase") != "downloading the checkpoint (or reading the cached one)":
                assert time.monotonic() < deadline, ready
                time.sleep(0.2)
            assert ready[0] == 503 and ready[1]["status"] == "loading"
            assert get("/healthz") == (200, {"status": "ok"})
            status, body = get("/v1/audio/transcriptions", "POST")
            assert status == 503 and body["error"]["code"] == "model_loading"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert proc.stdout.read() == ""  # no banner: the streaming ports never opened
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_the_banner_and_the_last_lines_of_a_start(tmp_path) -> None:
    """Once loaded: the banner names the model and its chunk with every port, and the log says when
    the warm-up step is done."""
    import re

    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(CLI + ["serve", *PORTS, "--load-format", "dummy"], stdout=subprocess.PIPE,
                                stderr=err, text=True)
    try:
        banner = proc.stdout.readline()
        deadline = time.monotonic() + 120
        while "ready for streams" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(60)
    assert re.search(r"model small \(dummy weights\) on cpu \(float32\), 64 stream slots, chunk 160 ms \| tcp",
                     banner), banner
    assert "warming up: one step through the model" in log.read_text()
