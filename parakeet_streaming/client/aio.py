"""Async streaming client over WebSocket.

    async with StreamingClient("ws://localhost:8000", sample_rate=16000) as s:
        sender = asyncio.create_task(s.stream(samples))      # paced like a live source, then finished
        async for msg in s.results():                        # Result / Eou / non-fatal Error
            ...

Audio goes in as float samples at `sample_rate`; the client resamples it to the rate the server
announces in `hello` and sends pcm16 (binary frames on protocol-2 servers, base64 JSON otherwise).
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from parakeet_streaming.client.audio import PcmEncoder, as_samples, load_audio
from parakeet_streaming.client.messages import (Eou, Error, Hello, Message, ProtocolViolation, Result,
                                                StreamClosed, parse_message)

Progress = Callable[[float, float], None]  # (seconds sent, seconds total)
StreamMessage = Result | Eou | Error


@dataclass
class Transcript:
    """The outcome of a whole stream."""

    text: str
    final: Result
    hello: Hello
    utterances: list[Eou] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)


class StreamingClient:
    """One connection = one stream. Use as an async context manager (connects, reads `hello`)."""

    def __init__(self, url: str, *, sample_rate: int | None = None, binary: bool | None = None,
                 api_key: str | None = None, open_timeout: float = 10.0) -> None:
        """`sample_rate`: the rate of the audio you will send (default: the server's, no resampling).
        `binary`: raw binary frames (default: when the server speaks protocol 2 and the URL sets no
        `encoding`); False sends base64 JSON, which every server version reads.
        `api_key`: sent as `Authorization: Bearer KEY` (servers started with `--api-key`).
        Stream options go in the URL, e.g. `ws://host:8000/?timestamps=true`."""
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.sample_rate = sample_rate
        self._binary = binary
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._hello: Hello | None = None
        self._encoder: PcmEncoder | None = None
        self._finished = False
        self._done = False

    # --- connection ------------------------------------------------------------------------

    async def connect(self) -> Hello:
        """Open the connection and read `hello`. Raises ServerError (e.g. `server_full`)."""
        await self._open()
        try:
            first = await asyncio.wait_for(self._ws.recv(), self._open_timeout)
        except ConnectionClosed as exc:
            await self.close()
            raise StreamClosed(f"the server closed the connection before hello ({exc})") from exc
        except BaseException:
            await self.close()
            raise
        msg = parse_message(first)
        if not isinstance(msg, Hello):
            await self.close()
            if isinstance(msg, Error):
                raise msg.exception()
            raise ProtocolViolation(f"expected hello, got {first!r}")
        self._hello = msg
        self.sample_rate = self.sample_rate or msg.sample_rate
        self._encoder = PcmEncoder(self.sample_rate, msg.sample_rate)
        if self._binary is None:
            self._binary = msg.protocol >= 2 and "encoding" not in parse_qs(urlsplit(self.url).query)
        return msg

    async def _open(self) -> None:
        """Open the connection (`self._ws`), up to the point where the server sends `hello`."""
        self._ws = await connect(self.url, max_size=None, compression=None, open_timeout=self._open_timeout,
                                 additional_headers=self._headers)

    async def close(self) -> None:
        """Close the connection. Before the final result this aborts the stream."""
        if self._ws is not None:
            await self._ws.close()

    async def __aenter__(self) -> "StreamingClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def hello(self) -> Hello:
        if self._hello is None:
            raise RuntimeError("not connected: use `async with StreamingClient(...)` or `await connect()`")
        return self._hello

    # --- sending ---------------------------------------------------------------------------

    async def send(self, samples: np.ndarray | Sequence[float]) -> None:
        """Send float mono audio (in [-1, 1], at `sample_rate`)."""
        if self._finished:
            raise RuntimeError("the stream was finished; no more audio can be sent")
        await self._send_pcm(self._require_encoder().push(samples))

    async def finish(self) -> None:
        """No more audio: the server decodes what it has and sends the final result. Idempotent."""
        if self._finished:
            return
        self._finished = True
        await self._send_pcm(self._require_encoder().flush())
        await self.send_message({"type": "close"})

    async def flush(self) -> None:
        """Ask for everything sent so far to be decoded now; the answer is a Result with `flushed`."""
        await self.send_message({"type": "flush"})

    async def send_message(self, msg: dict[str, Any]) -> None:
        """Send any protocol message as JSON (e.g. `{"type": "ping"}`)."""
        await self._require_ws().send(json.dumps(msg))

    async def stream(self, samples: np.ndarray | Sequence[float], *, speed: float = 1.0, chunk_ms: int = 100,
                     on_progress: Progress | None = None) -> None:
        """Send `samples` in `chunk_ms` pieces paced by the audio clock (`speed` 1 = real time,
        0 = as fast as possible), then finish the stream."""
        samples = as_samples(samples)
        rate = self.sample_rate or self.hello.sample_rate
        step = max(1, rate * chunk_ms // 1000)
        total = len(samples) / rate
        start = time.monotonic()
        for offset in range(0, len(samples), step):
            chunk = samples[offset:offset + step]
            await self.send(chunk)
            sent = (offset + len(chunk)) / rate
            if on_progress is not None:
                on_progress(sent, total)
            if speed > 0:
                await asyncio.sleep(max(0.0, start + sent / speed - time.monotonic()))
        await self.finish()

    async def stream_from(self, source: AsyncIterable[np.ndarray]) -> None:
        """Send every block a live source yields (e.g. `microphone()`), then finish the stream."""
        async for block in source:
            await self.send(block)
        await self.finish()

    async def _send_pcm(self, pcm: bytes) -> None:
        if not pcm:
            return
        if self._binary:
            await self._require_ws().send(pcm)
        else:
            await self.send_message({"type": "audio", "data": base64.b64encode(pcm).decode("ascii"),
                                     "encoding": "pcm16", "final": False})

    # --- receiving -------------------------------------------------------------------------

    async def results(self) -> AsyncIterator[StreamMessage]:
        """Server messages until the final result: Result, Eou, and non-fatal Error (the stream goes
        on). A fatal error is raised as ServerError once the stream is over, carrying the final
        result when the server still sent one. StreamClosed if the connection ends without it."""
        ws = self._require_ws()
        fatal: Error | None = None
        final: Result | None = None
        while not self._done:
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                break
            msg: Message | None = parse_message(raw)
            if isinstance(msg, Error) and msg.fatal:
                fatal = msg  # the final result usually follows
            elif isinstance(msg, (Result, Eou, Error)):
                if isinstance(msg, Result) and msg.is_final:
                    self._done, final = True, msg
                yield msg
        if fatal is not None:
            raise fatal.exception(final)
        if not self._done:
            raise StreamClosed("the connection closed before the final result")

    async def transcribe(self, samples: np.ndarray | Sequence[float], *, speed: float = 1.0, chunk_ms: int = 100,
                         on_message: Callable[[StreamMessage], None] | None = None,
                         on_progress: Progress | None = None) -> Transcript:
        """Stream `samples` (see `stream`) while collecting the results. Any server error raises."""
        samples = as_samples(samples)
        sender = asyncio.create_task(self.stream(samples, speed=speed, chunk_ms=chunk_ms, on_progress=on_progress))
        sender.add_done_callback(self._on_sender_done)
        utterances: list[Eou] = []
        results: list[Result] = []
        try:
            async for msg in self.results():
                if on_message is not None:
                    on_message(msg)
                if isinstance(msg, Error):
                    raise msg.exception()
                if isinstance(msg, Eou):
                    utterances.append(msg)
                elif isinstance(msg, Result):
                    results.append(msg)
        except StreamClosed:
            if sender.done() and not sender.cancelled() and _real_failure(sender.exception()):
                raise sender.exception() from None  # type: ignore[misc]
            raise
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return Transcript(results[-1].text, results[-1], self.hello, utterances, results)

    def _on_sender_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and _real_failure(task.exception()) and self._ws is not None:
            asyncio.ensure_future(self._ws.close())  # ends results() instead of waiting forever

    def _require_ws(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("not connected: use `async with StreamingClient(...)` or `await connect()`")
        return self._ws

    def _require_encoder(self) -> PcmEncoder:
        self._require_ws()
        assert self._encoder is not None
        return self._encoder


def _real_failure(exc: BaseException | None) -> bool:
    """A sender failure of its own, not just the server closing the connection under it."""
    return exc is not None and not isinstance(exc, ConnectionClosed)


async def transcribe_file(url: str, path: str | Path, *, speed: float = 1.0, chunk_ms: int = 100,
                          on_message: Callable[[StreamMessage], None] | None = None,
                          on_progress: Progress | None = None, api_key: str | None = None) -> Transcript:
    """Stream a WAV file (any rate; resampled to the server's) and return the transcript.
    `speed` 1 streams in real time, 0 as fast as possible."""
    samples, rate = load_audio(path)
    async with StreamingClient(url, sample_rate=rate, api_key=api_key) as client:
        return await client.transcribe(samples, speed=speed, chunk_ms=chunk_ms, on_message=on_message,
                                       on_progress=on_progress)
