"""`parakeet-server serve` and `transcribe` as subprocesses, with dummy weights (slow-ish: builds the
real small architecture)."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import numpy as np
import pytest
from server_helpers import CLI, DUMMY, pcm16_b64, start_server_process
from websockets.asyncio.client import connect

pytestmark = pytest.mark.slow  # dummy-weight subprocess servers

pytest.importorskip("parakeet_streaming.engine.engine")

async def test_serve_streams_and_exits_cleanly_on_sigterm(short_speech):
    proc, ports = start_server_process(DUMMY)
    try:
        async with connect(f"ws://127.0.0.1:{ports['ws']}/") as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello" and "dummy" in hello["model"]
            await ws.send(json.dumps({"type": "audio", "data": pcm16_b64(short_speech), "final": True}))
            msgs = [json.loads(m) async for m in ws]
            assert msgs[-1]["type"] == "result" and msgs[-1]["is_final"]
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["status"])
        assert json.loads(await reader.readline())["type"] == "status"
        writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_transcribe_wav(speech_wav):
    out = subprocess.run(CLI + ["transcribe", str(speech_wav), "--load-format", "dummy", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"text", "token_ids", "confidence_scores"} <= result.keys()
    assert len(result["token_ids"]) == len(result["confidence_scores"])
    assert isinstance(np.asarray(result["token_ids"]).sum(), np.integer)
