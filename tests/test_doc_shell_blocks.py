"""The shell blocks of docs/operations.md and docs/client-python.md that start a server in the
background run as written, one after the other, in bash: `parakeet-server serve ... &`, the wait on
/readyz, then the clients, on the documented default ports. Whatever a block leaves running is
stopped before the next one."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocess servers with the real small architecture

DOCS = Path(__file__).resolve().parents[1] / "docs"
DEFAULT_PORTS = (8000, 8765, 8050, 8080)
# What each block prints when it worked, keyed by a word only that block has.
EXPECTED = {"curl -i localhost:8080/healthz": ["HTTP/1.1 200"], "/metrics": ["parakeet_active_streams"],
            "keys.txt": ["hello", "unauthorized"], "cert.pem": ["'type': 'hello'"],
            "--drain-seconds": ["exit 0"], "parakeet-client stream speech.wav": ["final:"]}


def background_blocks() -> list[tuple[str, str]]:
    out = []
    for doc in ("operations.md", "client-python.md"):
        for block in re.findall(r"```bash\n(.*?)```", (DOCS / doc).read_text(), re.S):
            if re.search(r"parakeet-server serve .*&\s*(#.*)?$", block, re.M):
                out.append((doc, block))
    return out


BLOCKS = background_blocks()


def test_the_docs_have_such_blocks() -> None:
    assert len(BLOCKS) >= 6
    for _, block in BLOCKS:
        assert sum(key in block for key in EXPECTED) == 1, block
        assert "readyz" in block.split("&", 1)[1], f"connects before the server is ready:\n{block}"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _stop_group(pgid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.mark.parametrize("doc,block", BLOCKS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(BLOCKS)])
def test_block_runs_as_written(doc, block, speech_wav, tmp_path) -> None:
    if "openssl" in block and shutil.which("openssl") is None:
        pytest.skip("openssl is needed for this block")
    if shutil.which("curl") is None:
        pytest.skip("curl is needed")
    busy = [p for p in DEFAULT_PORTS if not _port_free(p)]
    if busy:
        pytest.skip(f"the documented default ports {busy} are in use by another process")
    shutil.copy(speech_wav, tmp_path / "speech.wav")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "output.txt"  # a file, not a pipe: the background server keeps it open
    with open(log, "w") as sink:
        proc = subprocess.Popen(["bash", "-c", block], cwd=tmp_path, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=600)
    finally:
        _stop_group(proc.pid)
    out = log.read_text()
    assert proc.returncode == 0, out
    needles = next(v for k, v in EXPECTED.items() if k in block)
    for needle in needles:
        assert needle in out, out
