"""clients/typescript against the real server: `npm ci && npm run build && node --test` in a copy of
the package, with the server's URL, a WAV file and its offline transcript passed in the environment."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from client_helpers import offline_transcript
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

pytest.importorskip("parakeet_streaming.engine.engine")

PACKAGE = Path(__file__).resolve().parents[1] / "clients" / "typescript"
SLOTS = 2
API_KEY = "ts-test-key"


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
    work = tmp_path / "typescript"
    shutil.copytree(PACKAGE, work, ignore=shutil.ignore_patterns("node_modules", "dist"))
    await _run(["npm", "ci", "--no-audit", "--no-fund"], work)
    await _run(["npm", "run", "build"], work)
    engine, model = engine_factory(SLOTS)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        env = {**os.environ, "PARAKEET_URL": f"ws://127.0.0.1:{app.ports['ws']}/", "PARAKEET_WAV": str(speech_wav),
               "PARAKEET_EXPECTED": expected, "PARAKEET_SLOTS": str(SLOTS), "PARAKEET_API_KEY": API_KEY}
        out = await _run(["node", "--test", "dist/test/"], work, env)
    assert "# fail 0" in out and "# pass 0" not in out, out
