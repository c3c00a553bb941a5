"""What an operator sees in `parakeet-server serve --log-format json` at info level: one JSON object
per line; each refusal (auth, full, bad input) and each HTTP transcription is one line with its code
and the stream id. Driven over real sockets against a subprocess server."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from server_helpers import DUMMY, start_server_process, stop_server_process
from websockets.asyncio.client import connect

pytestmark = pytest.mark.slow  # a subprocess server with the real small architecture

KEY = "ops-key"


async def test_refusals_and_transcriptions_are_one_json_line_each(tmp_path, speech_wav):
    log = tmp_path / "server.log"
    proc, ports = start_server_process(DUMMY + ["--api-key", KEY, "--log-level", "info", "--log-format", "json"],
                                       log=log)
    try:
        async with connect(f"ws://127.0.0.1:{ports['ws']}/") as ws:  # no key
            assert json.loads(await ws.recv())["code"] == "unauthorized"
        async with connect(f"ws://127.0.0.1:{ports['ws']}/?token={KEY}") as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send("this is not json")
            assert json.loads(await ws.recv())["code"] == "bad_json"
        base = f"http://127.0.0.1:{ports['http']}"
        auth = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession() as http:
            for name, data in (("song.mp3", b"ID3" + bytes(500)), ("speech.wav", speech_wav.read_bytes())):
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name)
                form.add_field("model", "parakeet")
                async with http.post(f"{base}/v1/audio/transcriptions", data=form, headers=auth) as resp:
                    assert resp.status == (400 if name == "song.mp3" else 200), await resp.text()
            async with http.get(f"{base}/v1/models") as resp:
                assert resp.status == 401
    finally:
        await asyncio.to_thread(stop_server_process, proc)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)

    def one(**fields) -> dict:
        found = [line for line in lines if all(line.get(k) == v for k, v in fields.items())]
        assert len(found) == 1, (fields, [line["message"] for line in lines])
        assert found[0]["level"] == "info"
        return found[0]

    assert isinstance(one(code="unauthorized", logger="parakeet_streaming.session")["stream_id"], int)
    assert isinstance(one(code="bad_json")["stream_id"], int)
    assert "'song.mp3'" in one(status=400, code="unsupported_format")["message"]
    ok = one(status=200, logger="parakeet_streaming.transcriptions")
    assert isinstance(ok["stream_id"], int) and "speech.wav" in ok["message"] and ok["audio_seconds"] > 1
    assert one(status=401, logger="parakeet_streaming.http")["code"] == "unauthorized"
