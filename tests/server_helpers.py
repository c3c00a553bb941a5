"""Shared test helpers: an in-process server on OS-chosen ports, WS / TCP clients (one `Client`
face for both transports, and the `transport` fixture), one polling helper (`until` / `wait_until`),
`transcribe` (a clip through an engine as `parakeet-server transcribe --json` reports it) and
server subprocesses."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine import handle
from parakeet_streaming.server import transcript_formats as fmt
from parakeet_streaming.server.app import App
from parakeet_streaming.server.context import ModelInfo

TIMEOUT = 30.0
TRANSPORTS = ["ws", "tcp"]


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `pred` (from a thread without an event loop) until it is true."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:g} s"
        time.sleep(0.01)


async def until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `pred` on the event loop until it is true."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout:g} s"
        await asyncio.sleep(0.01)


def transcribe(engine: Any, samples: np.ndarray) -> dict:
    """One clip through a started engine, as `parakeet-server transcribe --json` reports it."""
    events = asyncio.run(handle.transcribe(engine, samples))
    return fmt.cli_json(fmt.collect(events, len(samples) / 16000))


@pytest.fixture
def engine_factory(request: pytest.FixtureRequest):
    """engine_factory(num_slots) -> (started engine, model or None). The real Engine with the tiny
    random-weight model when it exists, else the fake engine (transport-only checks)."""
    engines = []

    def make(num_slots: int) -> tuple[Any, Any]:
        try:
            from parakeet_streaming.engine.engine import Engine
        except ImportError:
            from fake_engine import FakeEngine

            engine, model = FakeEngine(num_slots), None
        else:
            model = request.getfixturevalue("tiny_model")
            engine = Engine(model, num_slots)
        engine.start()
        engines.append(engine)
        return engine, model

    yield make
    for engine in engines:
        engine.shutdown()


@asynccontextmanager
async def running_server(engine: Any, model: Any = None, **overrides: Any) -> AsyncIterator[App]:
    config = ServerConfig(host="127.0.0.1", port=0, ws_port=0, status_port=0, http_port=0,
                          max_num_streams=getattr(engine, "max_num_streams", 4), **overrides)
    app = App(config, engine, ModelInfo.of(model) if model is not None else ModelInfo("fake", chunk_ms=160))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(drain_seconds=2)


def pcm16(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def pcm16_b64(samples: np.ndarray) -> str:
    return base64.b64encode(pcm16(samples)).decode()


async def recv_until_closed(ws: Any, timeout: float = TIMEOUT, into: list | None = None) -> list[dict]:
    """Every JSON message of a websockets connection until the server closes it (into `into`)."""
    messages = [] if into is None else into
    try:
        while True:
            messages.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except ConnectionClosed:
        return messages


def chunks(samples: np.ndarray, n: int = 2560) -> list[np.ndarray]:
    return [samples[i:i + n] for i in range(0, len(samples), n)]


class Client:
    """Common face of the two transports. `recv()` returns a message dict, or None once closed."""

    async def send(self, msg: dict | str | bytes) -> None: ...
    async def recv(self, timeout: float = TIMEOUT) -> dict | None: ...
    async def close(self) -> None: ...
    async def abort(self) -> None: ...

    async def send_audio(self, samples: np.ndarray, final: bool = False) -> None:
        await self.send({"type": "audio", "data": pcm16_b64(samples), "encoding": "pcm16", "final": final})

    async def collect(self, timeout: float = TIMEOUT) -> list[dict]:
        """Every message until the server closes the connection."""
        out = []
        while (msg := await self.recv(timeout)) is not None:
            out.append(msg)
        return out


class WsClient(Client):
    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, app: App, path: str = "/") -> "WsClient":
        conn = await connect(f"ws://127.0.0.1:{app.ports['ws']}{path}", max_size=None, compression=None)
        return cls(conn)

    async def send(self, msg: dict | str | bytes) -> None:
        await self.conn.send(json.dumps(msg) if isinstance(msg, dict) else msg)

    async def recv(self, timeout: float = TIMEOUT) -> dict | None:
        try:
            return json.loads(await asyncio.wait_for(self.conn.recv(), timeout))
        except ConnectionClosed:
            return None

    async def close(self) -> None:
        await self.conn.close()

    async def abort(self) -> None:
        self.conn.transport.abort()


class TcpClient(Client):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, app: App) -> "TcpClient":
        reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["tcp"], limit=1 << 24)
        return cls(reader, writer)

    async def send(self, msg: dict | str | bytes) -> None:
        if isinstance(msg, dict):
            msg = json.dumps(msg)
        data = msg.encode() if isinstance(msg, str) else msg
        self.writer.write(data if data.endswith(b"\n") or isinstance(msg, bytes) else data + b"\n")
        await self.writer.drain()

    async def recv(self, timeout: float = TIMEOUT) -> dict | None:
        try:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
        except ConnectionError:
            return None
        return json.loads(line) if line else None

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass

    async def abort(self) -> None:
        self.writer.transport.abort()


async def open_client(app: App, transport: str) -> Client:
    return await (WsClient.open(app) if transport == "ws" else TcpClient.open(app))


async def open_stream(app: App, transport: str) -> tuple[Client, dict]:
    client = await open_client(app, transport)
    hello = await client.recv()
    assert hello is not None and hello["type"] == "hello", hello
    return client, hello


async def status(app: App) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", app.ports["status"])
    line = await asyncio.wait_for(reader.readline(), TIMEOUT)
    rest = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    assert rest == b""
    return json.loads(line)


def tokens_of(msgs: list[dict]) -> list[int]:
    return [t for m in msgs if m["type"] == "result" for t in m["token_ids"]]


def finals(msgs: list[dict]) -> list[dict]:
    return [m for m in msgs if m["type"] == "result" and m["is_final"]]


async def transcribe_over(app: App, transport: str, samples: np.ndarray, extra: list | None = None,
                          chunk: int = 2560) -> list[dict]:
    """Stream `samples` in chunks (optionally sending `extra` messages after the first), finalize,
    and return every message after hello."""
    client, _ = await open_stream(app, transport)
    for i, part in enumerate(chunks(samples, chunk)):
        await client.send_audio(part)
        if i == 0:
            for msg in extra or []:
                await client.send(msg)
    await client.send({"type": "audio", "data": "", "final": True})
    return await client.collect()


async def settle(app: App, timeout: float = 10.0) -> None:
    """Wait until every stream is gone from the server and the engine (slots free asynchronously)."""
    await until(lambda: not app.ctx.sessions and app.engine.num_active == 0, timeout, "no streams left")


async def hold_slots(app: App, clients: list[Client], samples: np.ndarray, free: int = 0) -> None:
    """Each client sends `samples` (its first audio, which takes its slot); returns once the engine
    has `free` slots left."""
    for client in clients:
        await client.send_audio(samples)
    await until(lambda: app.engine.num_free == free, what=f"{free} free slots")


CLI = [sys.executable, "-m", "parakeet_streaming.cli"]
DUMMY = ["--load-format", "dummy", "--max-num-streams", "2"]  # the real small architecture, random weights
BANNER = re.compile(r"tcp \S+:(\d+)\s+ws \S+:(\d+)\s+status \S+:(\d+)\s+http \S+:(\d+)")


def start_server_process(extra: list[str], log: Path | None = None, timeout: float = 300
                         ) -> tuple[subprocess.Popen, dict[str, int]]:
    """`parakeet-server serve` as a subprocess on OS-chosen loopback ports; returns once its banner
    names them: (process, {"tcp", "ws", "status", "http"} -> port). stderr goes to `log` if given."""
    err = open(log, "w") if log is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen(
            CLI + ["serve", "--host", "127.0.0.1", "--port", "0", "--ws-port", "0", "--status-port", "0",
                   "--http-port", "0", "--log-level", "warning", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True)
    finally:
        if log is not None:
            err.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            detail = log.read_text() if log is not None else proc.stderr.read()
            raise AssertionError(f"server exited early ({proc.wait(10)}): {detail}")
        if m := BANNER.search(line):
            return proc, dict(zip(("tcp", "ws", "status", "http"), map(int, m.groups())))
    proc.kill()
    raise AssertionError("the server printed no banner")


def stop_server_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then kill if it has not exited within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
