"""server/session.py and the native protocol (server/native.py) over in-memory pipes with a fake
engine (the real engine is in test_server_*)."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json

import numpy as np
import pytest
from fake_engine import FakeEngine
from server_helpers import until

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.server.context import ModelInfo, ServerContext
from parakeet_streaming.server.native import NativeStream
from parakeet_streaming.server.session import Link, serve_connection
from parakeet_streaming.server.wire import OVERSIZED, Audio, Request, Send, State


class Pipe:
    """The client end of a session: put messages in, read the server's messages out."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.outbox: asyncio.Queue = asyncio.Queue()

    async def recv(self):
        return await self.inbox.get()

    async def send(self, text: str) -> None:
        await self.outbox.put(json.loads(text))

    def put(self, msg) -> None:
        self.inbox.put_nowait(json.dumps(msg) if isinstance(msg, dict) else msg)

    async def get(self, timeout: float = 5.0) -> dict:
        return await asyncio.wait_for(self.outbox.get(), timeout)

    def drain(self) -> list[dict]:
        out = []
        while not self.outbox.empty():
            out.append(self.outbox.get_nowait())
        return out


@pytest.fixture
def engine():
    e = FakeEngine(max_num_streams=2)
    e.start()
    yield e
    e.shutdown()


class Connection:
    """One client connection through `serve_connection`, as a transport makes it."""

    def __init__(self, ctx: ServerContext, link: Link) -> None:
        self.ctx, self.link = ctx, link

    async def run(self) -> None:
        await serve_connection(self.ctx, self.link)

    def stop(self) -> None:
        for session in list(self.ctx.sessions):
            session.stop()


def make(engine, path: str = "/", send=None, ctx: ServerContext | None = None,
         **overrides) -> tuple[Connection, Pipe, ServerContext]:
    if ctx is None:
        config = ServerConfig(**{"idle_timeout": 5.0, **overrides})
        ctx = ServerContext(engine, config, ModelInfo("fake", 16000, 160))
    pipe = Pipe()
    return Connection(ctx, Link(pipe.recv, send or pipe.send, request=Request(path))), pipe, ctx


def pcm(n: int, value: int = 1000) -> str:
    return base64.b64encode(np.full(n, value, dtype="<i2").tobytes()).decode()


async def run_to_end(session: Connection, pipe: Pipe) -> list[dict]:
    await asyncio.wait_for(session.run(), 10)
    return pipe.drain()


async def test_hello_results_final_last(engine):
    session, pipe, ctx = make(engine)
    pipe.put({"type": "audio", "data": pcm(1600)})
    pipe.put({"type": "audio", "data": pcm(1600), "final": True})
    msgs = await run_to_end(session, pipe)
    assert msgs[0] == {"type": "hello", "stream_id": 0, "sample_rate": 16000, "model": "fake",
                       "encodings": ["pcm16", "f32", "mulaw"], "protocol": 2, "chunk_ms": 160}
    assert [m["is_final"] for m in msgs[1:]] == [False, False, True]
    assert msgs[-1]["text"] == "3200"
    assert not ctx.sessions and engine.num_active == 0


async def test_close_message_finalizes(engine):
    session, pipe, _ = make(engine)
    pipe.put({"type": "audio", "samples": [0.1] * 100})
    pipe.put({"type": "close"})
    msgs = await run_to_end(session, pipe)
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "100"


async def test_non_fatal_errors_lose_nothing(engine):
    session, pipe, _ = make(engine)
    pipe.put({"type": "audio", "data": pcm(100)})
    for bad in ["{", "[]", '{"type":"x"}', '{"type":"audio","data":"%%%"}', '{"type":"audio","encoding":"opus"}',
                '{"type":"audio","data":"AAE="}',  # valid: 2 bytes, one sample
                '{"type":"audio","data":"AAEC"}',  # 3 bytes: odd pcm16
                '{"type":"audio","encoding":"f32","data":"AAEC"}',
                json.dumps({"type": "audio", "encoding": "f32",
                            "data": base64.b64encode(np.array([np.nan], "<f4").tobytes()).decode()}),
                '{"type":"audio","samples":["a"]}']:
        pipe.put(bad)
    pipe.put({"type": "ping"})
    pipe.put({"type": "audio", "data": pcm(100), "final": True})
    msgs = await run_to_end(session, pipe)
    errors = [m for m in msgs if m["type"] == "error"]
    assert [e["code"] for e in errors] == ["bad_json", "bad_json", "unknown_type", "bad_audio",
                                          "unsupported_encoding", "bad_audio", "bad_audio", "bad_audio",
                                          "bad_audio"]
    assert not any(e["fatal"] for e in errors)
    assert {"type": "pong"} in msgs
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "201"  # 100 + 1 ("AAE=") + 100


async def test_server_full(engine):
    first = make(engine)
    sessions = [first, make(engine, ctx=first[2]), make(engine, ctx=first[2])]
    tasks = [asyncio.create_task(s.run()) for s, _, _ in sessions[:2]]
    await sessions[0][1].get()
    await sessions[1][1].get()
    for _, p, _ in sessions[:2]:  # a connection takes its slot with its first audio
        p.put({"type": "audio", "data": pcm(10)})
    await until(lambda: engine.num_free == 0)
    third, pipe, _ = sessions[2]
    msgs = await run_to_end(third, pipe)
    assert msgs == [{"type": "error", "code": "server_full", "message": msgs[0]["message"], "fatal": True}]
    for _, p, _ in sessions[:2]:
        p.put({"type": "close"})
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_audio_after_final(engine):
    session, pipe, _ = make(engine)
    task = asyncio.create_task(session.run())
    await pipe.get()
    pipe.put({"type": "audio", "data": pcm(10), "final": True})
    pipe.put({"type": "audio", "data": pcm(10)})
    await asyncio.wait_for(task, 5)
    msgs = pipe.drain()
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "10"


async def test_audio_after_final_is_reported_while_final_pending(engine):
    stream = NativeStream(Request(), ServerConfig(), ModelInfo("fake", 16000, 160))
    stream.open(0, 0.0)
    stream.receive(json.dumps({"type": "audio", "data": pcm(10), "final": True}), 0.0)
    assert stream.state is State.FINISHING  # the final audio went out, the engine is still decoding
    assert [type(o) for o in stream.outputs()] == [Send, Audio]
    stream.receive(json.dumps({"type": "audio", "data": pcm(10)}), 0.0)
    (out,) = stream.outputs()
    assert json.loads(out.data)["code"] == "audio_after_final"


async def test_stream_too_long_keeps_transcript(engine):
    session, pipe, _ = make(engine, max_stream_seconds=0.25)
    pipe.put({"type": "audio", "data": pcm(3200)})
    pipe.put({"type": "audio", "data": pcm(3200)})  # crosses 4000 samples
    pipe.put({"type": "audio", "data": pcm(3200)})  # ignored after the fatal error
    msgs = await run_to_end(session, pipe)
    err = [m for m in msgs if m["type"] == "error"]
    assert [e["code"] for e in err] == ["stream_too_long"] and err[0]["fatal"]
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "4000"


async def test_idle_timeout_finalizes(engine):
    session, pipe, _ = make(engine, idle_timeout=0.2)
    pipe.put({"type": "audio", "data": pcm(50)})
    msgs = await run_to_end(session, pipe)
    assert msgs[-2]["code"] == "idle_timeout" and msgs[-2]["fatal"]
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "50"


async def test_each_message_moves_the_idle_deadline(engine):
    """Messages closer together than --idle-timeout keep the stream; the timeout counts from the last."""
    session, pipe, _ = make(engine, idle_timeout=0.5)
    run = asyncio.create_task(session.run())
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(9):  # 0.8 s of messages, 0.1 s apart: longer than the idle timeout
        if i:
            await asyncio.sleep(0.1)
        pipe.put({"type": "audio", "data": pcm(10)})
    last = loop.time()
    await asyncio.wait_for(run, 5)
    ended = loop.time()
    msgs = pipe.drain()
    assert [m["code"] for m in msgs if m["type"] == "error"] == ["idle_timeout"]
    assert msgs[-1]["is_final"] and msgs[-1]["text"] == "90"  # every message was read before the timeout
    assert last - started >= 0.8 and 0.45 <= ended - last < 2.5


async def test_disconnect_aborts(engine):
    session, pipe, ctx = make(engine)
    pipe.put({"type": "audio", "data": pcm(50)})
    pipe.put(None)
    await run_to_end(session, pipe)
    await until(lambda: engine.aborted)
    assert engine.aborted == [0] and engine.num_active == 0 and not ctx.sessions


async def test_send_failure_aborts(engine):
    sent = []

    async def broken_send(text: str) -> None:  # the peer is gone once hello is out
        if sent:
            raise ConnectionResetError
        sent.append(text)

    session, pipe, _ = make(engine, send=broken_send)
    pipe.put({"type": "audio", "data": pcm(50)})  # its result cannot be sent
    await asyncio.wait_for(session.run(), 5)
    await until(lambda: engine.aborted)
    assert engine.aborted == [0]


async def test_oversized_is_fatal_but_finalizes(engine):
    session, pipe, _ = make(engine, max_message_bytes=1000)
    pipe.put({"type": "audio", "data": pcm(100)})
    pipe.put({"type": "audio", "data": pcm(1000)})  # > 1000 bytes of JSON
    pipe.put(OVERSIZED)
    msgs = await run_to_end(session, pipe)
    err = [m for m in msgs if m["type"] == "error"]
    assert [e["code"] for e in err] == ["message_too_large"] and err[0]["fatal"]
    assert msgs[-1]["text"] == "100"


async def test_binary_frames_and_stream_defaults(engine):
    session, pipe, _ = make(engine, path="/?encoding=mulaw")
    pipe.put(bytes(80))  # 80 mu-law samples
    pipe.put({"type": "close"})
    msgs = await run_to_end(session, pipe)
    assert msgs[-1]["text"] == "80"


async def test_declared_rate_is_resampled(engine):
    session, pipe, _ = make(engine)
    pipe.put({"type": "audio", "data": pcm(8000), "sample_rate": 8000, "final": True})
    msgs = await run_to_end(session, pipe)
    assert abs(int(msgs[-1]["text"]) - 16000) <= 2


async def test_flush_drains_the_resampler_and_keeps_the_stream(engine):
    session, pipe, _ = make(engine)
    pipe.put({"type": "audio", "data": pcm(800), "sample_rate": 8000})
    pipe.put({"type": "flush"})
    pipe.put({"type": "audio", "data": pcm(800)})
    pipe.put({"type": "close"})
    msgs = await run_to_end(session, pipe)
    (flushed,) = [m for m in msgs if m.get("flushed")]
    assert not flushed["is_final"] and abs(int(flushed["text"]) - 1600) <= 2  # all 800 samples, resampled
    assert abs(int(msgs[-1]["text"]) - 3200) <= 4 and msgs[-1]["is_final"]
    assert not [m for m in msgs if m["type"] == "error"]


async def test_flush_after_final_is_ignored(engine):
    session, pipe, _ = make(engine)
    pipe.put({"type": "audio", "data": pcm(100), "final": True})
    pipe.put({"type": "flush"})
    msgs = await run_to_end(session, pipe)
    assert not [m for m in msgs if m.get("flushed") or m["type"] == "error"] and msgs[-1]["is_final"]


async def test_config_message_turns_timestamps_on(engine):
    session, pipe, _ = make(engine)
    task = asyncio.create_task(session.run())
    await pipe.get()  # hello
    pipe.put({"type": "audio", "data": pcm(100)})
    first = await pipe.get()
    pipe.put({"type": "config", "timestamps": True})
    pipe.put({"type": "config", "timestamps": "yes"})
    pipe.put({"type": "config", "colour": "red"})
    pipe.put({"type": "audio", "data": pcm(100), "final": True})
    await asyncio.wait_for(task, 10)
    msgs = pipe.drain()
    results = [m for m in msgs if m["type"] == "result"]
    assert "words" not in first and "token_start_ms" not in first
    assert all(r["words"] == [] and r["token_start_ms"] == [] for r in results)  # the fake has no timings
    assert [(m["code"], m["fatal"]) for m in msgs if m["type"] == "error"] == [("bad_config", False)] * 2


async def test_stop_for_shutdown(engine):
    session, pipe, _ = make(engine)
    task = asyncio.create_task(session.run())
    await pipe.get()
    pipe.put({"type": "audio", "data": pcm(30)})
    await pipe.get()
    session.stop()
    await asyncio.wait_for(task, 5)
    msgs = pipe.drain()
    assert msgs[0]["code"] == "shutting_down" and msgs[-1]["is_final"] and msgs[-1]["text"] == "30"


# --- the protocol object alone (sans-I/O: no loop, no engine) --------------------------------


def native(path: str = "/", **overrides) -> NativeStream:
    stream = NativeStream(Request(path), ServerConfig(**overrides), ModelInfo("fake", 16000, 160))
    stream.open(3, 100.0)
    return stream


def test_native_states_and_deadlines() -> None:
    stream = native(idle_timeout=30, handshake_timeout=5)
    (hello,) = stream.outputs()
    assert json.loads(hello.data)["stream_id"] == 3 and stream.state is State.WAITING
    assert stream.deadline() == 105.0  # the handshake timeout comes first
    stream.receive(json.dumps({"type": "ping"}), 104.0)  # a message, but no audio
    assert stream.deadline() == 105.0 and stream.state is State.WAITING
    stream.receive(json.dumps({"type": "audio", "data": pcm(160)}), 104.5)
    assert stream.state is State.STREAMING and stream.deadline() == 134.5  # now only the idle timeout
    stream.receive(json.dumps({"type": "close"}), 106.0)
    assert stream.state is State.FINISHING and stream.deadline() is None
    outs = stream.outputs()
    assert [type(o).__name__ for o in outs] == ["Send", "Audio", "Finish"]
    stream.eof()  # half-closed after finalizing: the final may still go out
    assert stream.state is State.FINISHING and stream.outputs() == []


def test_native_handshake_timeout_closes_without_a_stream() -> None:
    stream = native(handshake_timeout=5)
    stream.outputs()
    stream.timeout(105.0)
    err, close = stream.outputs()
    assert (err.error, json.loads(err.data)["fatal"]) == ("handshake_timeout", True)
    assert type(close).__name__ == "Close" and stream.state is State.CLOSED


def test_native_bad_query_and_refusal() -> None:
    bad = native("/?sample_rate=12")
    err, close = bad.outputs()
    assert err.error == "bad_audio" and json.loads(err.data)["fatal"] and bad.state is State.CLOSED
    refused = NativeStream(Request(), ServerConfig(), ModelInfo())
    refused.refuse("unauthorized", "no key")
    err, close = refused.outputs()
    assert err.error == "unauthorized" and (close.code, close.reason) == (1008, "unauthorized")


async def test_engine_stream_maps_refusals() -> None:
    from parakeet_streaming.engine.events import EngineStopped, StreamFailed
    from parakeet_streaming.engine.handle import EngineStream, StreamRefused

    full = FakeEngine(max_num_streams=0)
    stream = EngineStream(full)
    stream.send(np.zeros(10, np.float32))  # the first audio asks for the slot
    event = await asyncio.wait_for(anext(stream), 5)
    assert isinstance(event, StreamFailed) and event.code == "server_full" and stream.refused

    class Stopped(FakeEngine):
        def open_stream(self, sink, stream_id=None):
            future = concurrent.futures.Future()
            future.set_exception(EngineStopped("gone"))
            return future

    with pytest.raises(StreamRefused) as info:
        await EngineStream(Stopped()).wait_open()
    assert info.value.code == "shutting_down"
