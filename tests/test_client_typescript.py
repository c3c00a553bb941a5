"""clients/typescript against the real server: `npm ci && npm run build && node --test` in a copy of
the package, with the server's URL, a WAV file and its offline transcript passed in the environment.
The runnable examples of docs/client-typescript.md are compiled with the package and run too."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest
from client_helpers import offline_transcript
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

pytest.importorskip("parakeet_streaming.engine.engine")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clients" / "typescript"
DOC = ROOT / "docs" / "client-typescript.md"
SLOTS = 2
API_KEY = "ts-test-key"


def doc_examples() -> list[str]:
    """The ```ts blocks of the docs page that follow a "Runs in the tests:" line."""
    return re.findall(r"Runs in the tests:\n\n```ts\n(.*?)```", DOC.read_text(), re.S)


async def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    text = out.decode()
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{text}"
    return text


async def test_typescript_client(engine_factory, tiny_model, speech_wav, tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the TypeScript client")
    expected = offline_transcript(tiny_model, speech_wav, tmp_path)
    examples = doc_examples()
    assert len(examples) >= 2
    work = tmp_path / "typescript"
    shutil.copytree(PACKAGE, work, ignore=shutil.ignore_patterns("node_modules", "dist"))
    shutil.copy(speech_wav, work / "speech.wav")
    engine, model = engine_factory(SLOTS)
    async with running_server(engine, model, api_keys=[API_KEY]) as app, running_server(engine, model) as open_app:
        for i, code in enumerate(examples):  # compiled with the package, importing it by its public name
            url = f"ws://127.0.0.1:{open_app.ports['ws']}"
            (work / "src" / f"doc_example_{i}.ts").write_text(code.replace("ws://localhost:8000", url))
        await _run(["npm", "ci", "--no-audit", "--no-fund"], work)
        await _run(["npm", "run", "build"], work)
        env = {**os.environ, "PARAKEET_URL": f"ws://127.0.0.1:{app.ports['ws']}/", "PARAKEET_WAV": str(speech_wav),
               "PARAKEET_EXPECTED": expected, "PARAKEET_SLOTS": str(SLOTS), "PARAKEET_API_KEY": API_KEY}
        out = await _run(["node", "--test", "dist/test/"], work, env)
        assert "# fail 0" in out and "# pass 0" not in out, out
        for i in range(len(examples)):
            out = await _run(["node", f"dist/src/doc_example_{i}.js"], work)
            assert out.splitlines()[-1] == f"final: {expected}", out
