"""clients/typescript against the real server: `npm ci && npm run build && node --test` in a copy of
the package, with the server's URL, a WAV file and its offline transcript passed in the environment.
The runnable examples of docs/client-typescript.md are compiled with the package and run too, and
the browser microphone helper (src/mic.ts) runs in headless Chromium with a WAV file as the mic."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from client_helpers import RecordingEngine, file_is_in, offline_transcript
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # npm and Node.js

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
    async with (running_server(engine, model, api_keys=[API_KEY]) as app, running_server(engine, model) as open_app,
                running_server(engine, model, api_keys=[API_KEY], max_stream_seconds=1.0) as short_app):
        for i, code in enumerate(examples):  # compiled with the package, importing it by its public name
            url = f"ws://127.0.0.1:{open_app.ports['ws']}"
            (work / "src" / f"doc_example_{i}.ts").write_text(code.replace("ws://localhost:8000", url))
        await _run(["npm", "ci", "--no-audit", "--no-fund"], work)
        await _run(["npm", "run", "build"], work)
        env = {**os.environ, "PARAKEET_URL": f"ws://127.0.0.1:{app.ports['ws']}/", "PARAKEET_WAV": str(speech_wav),
               "PARAKEET_EXPECTED": expected, "PARAKEET_SLOTS": str(SLOTS), "PARAKEET_API_KEY": API_KEY,
               "PARAKEET_SHORT_URL": f"ws://127.0.0.1:{short_app.ports['ws']}/"}
        out = await _run(["node", "--test", "dist/test/"], work, env)
        assert "# fail 0" in out and "# pass 0" not in out, out
        for i in range(len(examples)):
            out = await _run(["node", f"dist/src/doc_example_{i}.js"], work)
            assert out.splitlines()[-1] == f"final: {expected}", out


MIC_PAGE = """<!doctype html>
<meta charset="utf-8">
<script type="module">
import { streamMicrophone } from "../src/mic.js";
const params = new URLSearchParams(location.search);
window.runMic = async (seconds) => {
  const seen = [];
  const live = await streamMicrophone(params.get("ws"), { apiKey: params.get("token"), onMessage: (m) => seen.push(m) });
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  const final = await live.stop();
  return {
    final: final.text,
    eous: seen.filter((m) => m.type === "eou").map((m) => m.text),
    partials: seen.filter((m) => m.type === "result" && !m.is_final).length,
    rate: live.microphone.sampleRate,
  };
};
window.ready = true;
</script>
"""


async def test_typescript_microphone_in_chromium(engine_factory, tiny_model, speech, speech_wav, tmp_path):
    """streamMicrophone from the built package, loaded as ES modules by a page in Debian's chromium
    whose fake microphone plays the WAV file: the server must receive the file's audio, and the
    final result must be the engine's transcript of exactly that audio."""
    playwright = pytest.importorskip("playwright.async_api")
    from aiohttp import web

    from server_helpers import transcribe

    chromium = shutil.which("chromium")
    if shutil.which("npm") is None or chromium is None:
        pytest.skip("npm and Debian's chromium are needed")
    work = tmp_path / "typescript"
    shutil.copytree(PACKAGE, work, ignore=shutil.ignore_patterns("node_modules", "dist"))
    await _run(["npm", "ci", "--no-audit", "--no-fund"], work)
    await _run(["npm", "run", "build"], work)
    (work / "dist" / "page").mkdir()
    (work / "dist" / "page" / "index.html").write_text(MIC_PAGE)
    static = web.Application()
    static.router.add_static("/", work / "dist")
    runner = web.AppRunner(static)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    engine, model = engine_factory(1)
    recorder = RecordingEngine(engine)
    seconds = len(speech) / 16000
    try:
        async with running_server(recorder, model, api_keys=[API_KEY]) as app:
            page_url = (f"http://127.0.0.1:{runner.addresses[0][1]}/page/index.html"
                        f"?ws=ws://127.0.0.1:{app.ports['ws']}/&token={API_KEY}")
            async with playwright.async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=chromium, args=[
                    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={speech_wav}%noloop"])
                try:
                    page = await browser.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(page_url)
                    await page.wait_for_function("window.ready === true", timeout=20_000)
                    out = await page.evaluate(f"runMic({seconds + 1.5})")
                    assert not errors, errors
                finally:
                    await browser.close()
    finally:
        await runner.cleanup()
    (_, chunks), = recorder.audio.items()
    received = np.concatenate(chunks)
    assert out["rate"] == 16000
    assert file_is_in(speech, received)
    offline = await asyncio.to_thread(transcribe, engine, received)
    assert out["final"] == offline["text"] and out["final"]
    assert out["eous"] == [u["text"] for u in offline["utterances"] if u["ended"]]
    assert out["partials"] > 0
