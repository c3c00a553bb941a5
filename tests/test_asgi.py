"""parakeet_streaming/deploy/asgi.py mounted in a user's Starlette app under uvicorn, over real
sockets: the mount prefix is stripped before the protocol is picked, a stream gives the tokens of the
websockets port for the same engine, the probes and metrics answer, an unknown path is a 404 and
every response names the instance; OpenAI's file transcription route, driven by the `openai` package,
answers as on the HTTP port. Skipped without uvicorn and starlette (the `ray` extra brings them)."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from contextlib import asynccontextmanager
from typing import AsyncIterator

import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (it comes with ray[serve])")
routing = pytest.importorskip("starlette.routing", reason="starlette is not installed (it comes with ray[serve])")
from starlette.applications import Starlette  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from parakeet_streaming.config import ServerConfig  # noqa: E402
from parakeet_streaming.deploy.asgi import INSTANCE_HEADER, asgi_app  # noqa: E402
from parakeet_streaming.server.context import ModelInfo, ServerContext  # noqa: E402
from parakeet_streaming.server.security import Authenticator  # noqa: E402
from server_helpers import (TIMEOUT, chunks, engine_factory, pcm16, pcm16_b64, recv_until_closed,  # noqa: E402, F401
                            running_server, tokens_of, transcribe_over)


@asynccontextmanager
async def mounted(ctx: ServerContext) -> AsyncIterator[int]:
    """A user's Starlette app with the ASGI app at /asr, served by uvicorn on a free loopback port."""
    app = Starlette(routes=[routing.Mount("/asr", app=asgi_app(ctx))])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn did not start"
        await asyncio.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def http_get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


async def stream_over(url: str, samples: np.ndarray) -> tuple[dict, list[dict], str | None]:
    async with connect(url, open_timeout=TIMEOUT) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        for part in chunks(samples):
            await ws.send(json.dumps({"type": "audio", "data": pcm16_b64(part)}))
        await ws.send(json.dumps({"type": "audio", "data": "", "final": True}))
        messages = await recv_until_closed(ws)
        return hello, messages, ws.response.headers.get(INSTANCE_HEADER)


async def test_mounted_asgi_app_serves_streams_probes_and_metrics(engine_factory, speech):
    engine, model = engine_factory(2)
    async with running_server(engine, model) as reference:
        expected = tokens_of(await transcribe_over(reference, "ws", speech))
    ctx = ServerContext(engine, ServerConfig(max_num_streams=2), ModelInfo.of(model, "replica-a"))
    ctx.metrics.watch(ctx)
    async with mounted(ctx) as port:
        hello, messages, instance = await stream_over(f"ws://127.0.0.1:{port}/asr/", speech)
        assert hello["type"] == "hello" and instance == "replica-a" and hello["instance"] == "replica-a"
        assert messages[-1]["type"] == "result" and messages[-1]["is_final"]
        assert tokens_of(messages) == expected

        status, headers, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready"})
        assert headers.get(INSTANCE_HEADER) == "replica-a"
        status, _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/healthz")
        assert status == 200
        status, headers, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert "parakeet_streams_opened_total 2.0" in body.decode()  # the reference stream and this one
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/nope")
        assert status == 404

        ctx.draining = True  # readiness is the context's: a draining server is not ready
        status, _, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/readyz")
        assert (status, json.loads(body)) == (503, {"status": "draining"})
        async with connect(f"ws://127.0.0.1:{port}/asr/", open_timeout=TIMEOUT) as ws:
            refused = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert refused["type"] == "error" and refused["code"] == "shutting_down"


async def test_deepgram_path_below_the_mount(engine_factory, speech):
    """/asr/v1/listen speaks Deepgram: the prefix is not part of the path that picks the protocol."""
    engine, model = engine_factory(2)
    ctx = ServerContext(engine, ServerConfig(max_num_streams=2), ModelInfo.of(model, "replica-b"))
    async with mounted(ctx) as port:
        url = f"ws://127.0.0.1:{port}/asr/v1/listen?encoding=linear16&sample_rate=16000"
        async with connect(url, open_timeout=TIMEOUT) as ws:
            pcm = pcm16(speech)
            for i in range(0, len(pcm), 5120):
                await ws.send(pcm[i:i + 5120])
            await ws.send(json.dumps({"type": "CloseStream"}))
            messages = await recv_until_closed(ws)
        assert messages[-1]["type"] == "Metadata" and messages[-1]["instance"] == "replica-b", messages[-2:]
        assert any(m["type"] == "Results" for m in messages)

        # Deepgram refuses a bad parameter before the upgrade, with its HTTP status and JSON body
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{port}/asr/v1/listen?encoding=opus", open_timeout=TIMEOUT):
                pass
        assert refused.value.response.status_code == 400
        assert refused.value.response.headers.get(INSTANCE_HEADER) == "replica-b"
        assert json.loads(refused.value.response.body)["err_code"]


async def test_file_transcription_through_the_asgi_app(engine_factory, speech, speech_wav, tmp_path):
    """POST /v1/audio/transcriptions below the mount, with the `openai` package: the text of the
    HTTP port's route for the same file (json, text, streamed events), its errors in OpenAI's shape,
    the API key, and a full server's 429 `server_full`."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("python_multipart", reason="python-multipart is not installed (the `ray` extra brings it)")
    engine, model = engine_factory(1)
    async with running_server(engine, model) as reference:
        ref = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{reference.ports['http']}/v1", api_key="-", max_retries=0)
        with open(speech_wav, "rb") as f:
            expected = (await ref.audio.transcriptions.create(file=f, model="parakeet")).text
    assert expected
    key = "sk-asgi"
    config = ServerConfig(max_num_streams=1, api_keys=[key])
    ctx = ServerContext(engine, config, ModelInfo.of(model, "replica-c"), auth=Authenticator.from_config(config))
    async with mounted(ctx) as port:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/asr/v1", api_key=key, max_retries=0)
        with open(speech_wav, "rb") as f:
            raw = await client.audio.transcriptions.with_raw_response.create(file=f, model="parakeet")
        assert raw.headers[INSTANCE_HEADER] == "replica-c" and raw.parse().text == expected
        with open(speech_wav, "rb") as f:
            text = await client.audio.transcriptions.create(file=f, model="parakeet", response_format="text")
        assert text.strip() == expected
        with open(speech_wav, "rb") as f:
            events = [ev async for ev in await client.audio.transcriptions.create(file=f, model="parakeet",
                                                                               stream=True)]
        assert "".join(ev.delta for ev in events if ev.type == "transcript.text.delta") == expected
        assert events[-1].type == "transcript.text.done" and events[-1].text == expected
        assert [m.id for m in (await client.models.list()).data] == [model.name]

        notes = tmp_path / "notes.txt"
        notes.write_text("not audio")
        with open(notes, "rb") as f, pytest.raises(openai.BadRequestError) as info:
            await client.audio.transcriptions.create(file=f, model="parakeet")
        assert info.value.code == "unsupported_format" and "'notes.txt'" in info.value.body["message"]
        with open(speech_wav, "rb") as f, pytest.raises(openai.AuthenticationError):
            await openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/asr/v1", api_key="wrong",
                                     max_retries=0).audio.transcriptions.create(file=f, model="parakeet")
        status, _, _ = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/asr/healthz")
        assert status == 200  # probes need no key

        async with connect(f"ws://127.0.0.1:{port}/asr/?token={key}", open_timeout=TIMEOUT) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"type": "audio", "data": pcm16_b64(speech[:1600])}))
            for _ in range(500):  # its first audio takes the only slot
                if engine.num_free == 0:
                    break
                await asyncio.sleep(0.02)
            assert engine.num_free == 0
            with open(speech_wav, "rb") as f, pytest.raises(openai.RateLimitError) as info:
                await client.audio.transcriptions.create(file=f, model="parakeet")
            assert info.value.code == "server_full"


async def test_asgi_transcription_client_leaving_frees_the_slot_and_bad_bodies_get_400(engine_factory, speech):
    """A streamed transcription whose client leaves after the first event: the ASGI app sees the
    disconnect, the engine stream is aborted and the slot is free; a body that is not a multipart
    form, or a broken one, is a 400 in OpenAI's shape."""
    import io
    import wave

    import aiohttp

    pytest.importorskip("python_multipart", reason="python-multipart is not installed (the `ray` extra brings it)")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm16(np.tile(speech, 15)))
    seconds = 15 * len(speech) / 16000
    engine, model = engine_factory(1)
    ctx = ServerContext(engine, ServerConfig(max_num_streams=1), ModelInfo.of(model))
    before = engine.stats_snapshot().audio_seconds
    async with mounted(ctx) as port:
        url = f"http://127.0.0.1:{port}/asr/v1/audio/transcriptions"
        form = aiohttp.FormData()
        form.add_field("file", buf.getvalue(), filename="long.wav")
        form.add_field("stream", "true")
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=form) as r:
                assert r.status == 200 and r.content_type == "text/event-stream"
                assert (await r.content.readline()).startswith(b"data: ")
                assert engine.num_active == 1
        for _ in range(1500):
            if engine.num_active == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.num_active == 0
        decoded = engine.stats_snapshot().audio_seconds - before
        assert decoded < seconds - 5, (decoded, seconds)  # aborted, not decoded to the end
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=b"{}", headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
            broken = b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nRIFF"  # no closing boundary
            async with http.post(url, data=broken, headers={"Content-Type": "multipart/form-data; boundary=xyz"}) as r:
                assert r.status == 400, await r.text()
