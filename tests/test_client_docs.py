"""The code blocks of docs/client-python.md that connect to ws://localhost:8000 run as written
(URL pointed at an in-process server, speech.wav in the working directory)."""
from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest
from client_helpers import offline_transcript
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

pytest.importorskip("parakeet_streaming.engine.engine")

DOC = Path(__file__).resolve().parents[1] / "docs" / "client-python.md"
BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S) if "ws://localhost:8000" in b]


def test_doc_has_runnable_blocks():
    assert len(BLOCKS) >= 4


@pytest.fixture(scope="module")
def expected(tiny_model, speech_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return offline_transcript(tiny_model, speech_wav, tmp_path_factory.mktemp("client_docs"))


@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_doc_block_runs(index, engine_factory, tiny_model, speech_wav, expected, tmp_path):
    code = BLOCKS[index]
    if "Microphone()" in code:
        pytest.skip("needs a sound card")
    shutil.copy(speech_wav, tmp_path / "speech.wav")
    engine, model = engine_factory(2)
    async with running_server(engine, model) as app:
        script = tmp_path / "block.py"
        script.write_text(code.replace("ws://localhost:8000", f"ws://127.0.0.1:{app.ports['ws']}"))
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), cwd=tmp_path,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    if "ServerError" in code:
        assert out.decode().strip() == "no API key needed here"
    else:
        assert any(line.endswith(expected) for line in out.decode().splitlines()), out.decode()
