"""The demo page at `/` on the HTTP port, end to end in headless Chromium (Debian's, driven by
Playwright): a WAV file is the fake microphone, the page streams it over the WebSocket port, and the
transcript the page shows must equal what the engine makes of the audio the server received. That
audio must also be the file's (Chrome resamples it, so it is compared by correlation)."""
from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from client_helpers import RecordingEngine, file_is_in
from server_helpers import engine_factory, running_server  # noqa: F401 - fixture

pytestmark = pytest.mark.slow  # a browser

pytest.importorskip("parakeet_streaming.engine.engine")
playwright = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
API_KEY = "demo-key"


def artifacts_dir(tmp_path: Path) -> Path:
    path = Path(os.environ.get("PARAKEET_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


async def test_demo_page_transcribes_fake_microphone(engine_factory, tiny_model, speech, speech_wav, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is needed (apt-get install chromium)")
    from server_helpers import transcribe

    engine, model = engine_factory(2)
    recorder = RecordingEngine(engine)
    seconds = len(speech) / 16000
    async with running_server(recorder, model, api_keys=[API_KEY]) as app:
        page_url = (f"http://127.0.0.1:{app.ports['http']}/?ws=ws://127.0.0.1:{app.ports['ws']}/"
                    f"&token={API_KEY}")
        async with playwright.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}%noloop", "--autoplay-policy=no-user-gesture-required"])
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(page_url)
                await page.click("#start")
                await page.wait_for_function("document.getElementById('status').textContent.startsWith('listening')",
                                             timeout=20_000)
                partials: list[str] = []
                for _ in range(int(seconds * 4) + 8):  # the file plays in real time; then some silence
                    await asyncio.sleep(0.25)
                    partials.append(await page.text_content("#partial") or "")
                await page.screenshot(path=str(artifacts_dir(tmp_path) / "browser-demo-live.png"))
                await page.click("#stop")
                await page.wait_for_function("document.getElementById('status').textContent === 'done'",
                                             timeout=30_000)
                shown = (await page.text_content("#final")).strip()
                lines = [t.strip() for t in await page.locator("#utterances li").all_text_contents()]
                await page.screenshot(path=str(artifacts_dir(tmp_path) / "browser-demo.png"), full_page=True)
                assert not errors, errors
            finally:
                await browser.close()
    (stream_id, chunks), = recorder.audio.items()
    received = np.concatenate(chunks)
    assert file_is_in(speech, received)
    offline = await asyncio.to_thread(transcribe, engine, received)
    assert shown == offline["text"] and shown
    assert lines == [u["text"] for u in offline["utterances"] if u["text"]]
    assert any(partials), "the live partial line never showed text"


async def test_demo_files_are_served_without_a_key(engine_factory, tiny_model):
    """The page names the configured --ws-port; it and its scripts load without the API key."""
    import aiohttp

    engine, model = engine_factory(1)
    async with running_server(engine, model, api_keys=[API_KEY]) as app:
        app.ctx.config.ws_port = 8123  # what a real server would have been started with
        base = f"http://127.0.0.1:{app.ports['http']}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert '<meta name="parakeet-ws-port" content="8123">' in await r.text()
            for path in ("/demo.js", "/capture-worklet.js"):
                async with http.get(base + path) as r:
                    assert r.status == 200 and r.content_type == "application/javascript"
            async with http.post(base + "/v1/audio/transcriptions") as r:
                assert r.status == 401  # everything else still needs the key
