"""Graceful drain: stop accepting, let open streams finish up to a deadline, finalize the rest, exit 0."""
from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from server_helpers import (TcpClient, WsClient, chunks, engine_factory, finals, open_stream,  # noqa: F401
                            DUMMY, start_server_process,
                            running_server, settle, tokens_of, transcribe_over, until)
from websockets.asyncio.client import connect

pytest.importorskip("parakeet_streaming.engine.engine")


async def http_status(port: int, path: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status


async def refused(host_port: tuple[str, int]) -> bool:
    try:
        _, writer = await asyncio.open_connection(*host_port)
    except OSError:
        return True
    writer.close()
    return False


async def test_drain_lets_open_streams_finish_then_finalizes_the_rest(engine_factory, speech, short_speech):
    engine, model = engine_factory(3)
    async with running_server(engine, model) as app:
        reference = await transcribe_over(app, "ws", speech)
        await settle(app)
        talker, _ = await open_stream(app, "ws")  # keeps streaming through the drain, then ends itself
        silent, _ = await open_stream(app, "tcp")  # never ends: finalized at the deadline
        parts = chunks(speech)
        half = len(parts) // 2
        for part in parts[:half]:
            await talker.send_audio(part)
        await silent.send_audio(short_speech)

        started = time.monotonic()
        drain = asyncio.create_task(app.drain(3.0))
        await until(lambda: app.ctx.draining)
        assert await http_status(app.ports["http"], "/readyz") == 503
        assert await http_status(app.ports["http"], "/healthz") == 200
        assert await refused(("127.0.0.1", app.ports["ws"])) and await refused(("127.0.0.1", app.ports["tcp"]))

        for part in parts[half:]:  # the stream goes on normally during the drain
            await talker.send_audio(part)
        await talker.send({"type": "close"})
        talked = await talker.collect()
        assert not [m for m in talked if m["type"] == "error"]
        assert tokens_of(talked) == tokens_of(reference) and finals(talked)[0]["text"] == finals(reference)[0]["text"]
        assert time.monotonic() - started < 2.5  # it did not have to wait for the deadline

        quiet = await silent.collect()
        waited = time.monotonic() - started
        errors = [m for m in quiet if m["type"] == "error"]
        assert [(e["code"], e["fatal"]) for e in errors] == [("shutting_down", True)]
        assert quiet[-1]["is_final"] and quiet[-1]["audio_ms"] >= len(short_speech) / 16 - 1
        assert 2.8 <= waited < 8
        await asyncio.wait_for(drain, 10)
        assert not app.ctx.sessions


@pytest.mark.slow  # a dummy-weight subprocess server
async def test_sigterm_drains_a_stream_in_progress_and_exits_0(short_speech):
    proc, ports = start_server_process([*DUMMY, "--drain-seconds", "20"])
    try:
        while await http_status(ports["http"], "/readyz") != 200:
            assert proc.poll() is None
            await asyncio.sleep(0.1)
        client = WsClient(await connect(f"ws://127.0.0.1:{ports['ws']}/"))
        assert (await client.recv())["type"] == "hello"
        parts = chunks(short_speech)
        await client.send_audio(parts[0])

        proc.send_signal(signal.SIGTERM)
        while await http_status(ports["http"], "/readyz") != 503:
            await asyncio.sleep(0.05)
        assert await refused(("127.0.0.1", ports["ws"])) and await refused(("127.0.0.1", ports["tcp"]))
        assert proc.poll() is None  # still serving the open stream

        for part in parts[1:]:
            await client.send_audio(part)
        await client.send({"type": "close"})
        msgs = await client.collect()
        assert not [m for m in msgs if m["type"] == "error"]
        final = finals(msgs)
        assert len(final) == 1 and msgs[-1] is final[0]
        assert final[0]["audio_ms"] >= len(short_speech) / 16 - 1  # every sample was decoded
        assert await asyncio.to_thread(proc.wait, 15) == 0  # well before the 20 s deadline
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.slow  # a dummy-weight subprocess server
async def test_sigterm_finalizes_streams_at_the_deadline(short_speech):
    proc, ports = start_server_process([*DUMMY, "--drain-seconds", "1"])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["tcp"])
        client = TcpClient(reader, writer)
        assert (await client.recv())["type"] == "hello"
        await client.send_audio(short_speech)
        proc.send_signal(signal.SIGTERM)
        msgs = await client.collect()
        assert [m["code"] for m in msgs if m["type"] == "error"] == ["shutting_down"]
        assert msgs[-1]["is_final"] and msgs[-1]["audio_ms"] >= len(short_speech) / 16 - 1
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
