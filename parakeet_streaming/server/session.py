"""One connection = one stream, independent of the transport.

A transport gives the session two coroutines: `recv()` returns the next client message (str for
JSON text, bytes for a binary WebSocket frame, `OVERSIZED` for a message over the size cap, None
when the peer is gone) and `send(text)` writes one JSON message. The session opens an engine
stream, says hello, turns messages into audio for the engine, and writes the engine's events back
in order through a single writer task. It returns when the stream is over; the transport closes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from parakeet_streaming import audio
from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event, Result, ServerFull, StreamFailed, UtteranceEnd
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.metrics import ServerMetrics
from parakeet_streaming.server.security import Authenticator

log = logging.getLogger("parakeet_streaming.session")


class _Oversized:
    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED = _Oversized()  # what a transport's recv() returns for a message over the size cap

Recv = Callable[[], Awaitable["str | bytes | _Oversized | None"]]
Send = Callable[[str], Awaitable[None]]


class EngineLike(Protocol):
    def open_stream(self, sink: Callable[[Event], None]) -> Any: ...  # concurrent Future[int]
    def send_audio(self, stream_id: int, samples: np.ndarray, final: bool = False) -> None: ...
    def finalize(self, stream_id: int) -> None: ...
    def abort(self, stream_id: int) -> None: ...
    def flush(self, stream_id: int) -> None: ...
    def set_endpointing(self, stream_id: int, silence_ms: int) -> None: ...


@dataclass
class ServerContext:
    """What every session shares: the engine, the flags, the model facts hello reports."""

    engine: EngineLike
    config: ServerConfig
    model_name: str = "unknown"
    model_rate: int = 16000
    chunk_ms: int | None = None
    sessions: set["Session"] = field(default_factory=set)
    draining: bool = False
    auth: Authenticator = field(default_factory=Authenticator)  # no keys: open
    metrics: ServerMetrics = field(default_factory=ServerMetrics)

    @property
    def connected_streams(self) -> int:
        return len(self.sessions)


@dataclass
class StreamOptions:
    """Per-connection defaults (e.g. from WebSocket query parameters)."""

    encoding: str = "pcm16"
    sample_rate: int | None = None  # None: config.sample_rate
    half_close_ok: bool = False  # TCP: EOF after finalizing still gets the final result
    bytes_are_json: bool = False  # TCP hands over undecoded lines; WebSocket bytes are raw audio
    timestamps: bool = False  # results carry token_start_ms and words (?timestamps=true or a config message)
    endpoint_silence_ms: int | None = None  # this stream's silence endpointing (None: the server's)


class Session:
    def __init__(self, ctx: ServerContext, recv: Recv, send: Send, *,
                 options: StreamOptions | None = None, peer: str = "?", transport: str = "?") -> None:
        self.ctx = ctx
        self._recv, self._send_text = recv, send
        self.options = options or StreamOptions()
        self.peer, self.transport = peer, transport
        self.stream_id: int | None = None
        self._out: asyncio.Queue[Event | dict[str, Any]] = asyncio.Queue()
        self._rate = self.options.sample_rate or ctx.config.sample_rate
        self._resampler = audio.Resampler(self._rate, ctx.model_rate)
        self._audio_s = 0.0
        self._finalized = False  # the engine was told no more audio will come
        self._engine_done = False  # final result or failure received: nothing to abort
        self._fatal_sent = False  # a fatal error was reported: no more input is accepted
        self._outcome = "aborted"
        self._started = time.monotonic()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        if self.ctx.draining:
            self.ctx.metrics.reject(proto.SHUTTING_DOWN)
            await self._send_quiet(proto.error(proto.SHUTTING_DOWN, "server is shutting down", fatal=True))
            return
        if not await self._open():
            return
        self.ctx.sessions.add(self)
        log.info("stream %d opened (%s %s)", self.stream_id, self.transport, self.peer)
        if self.options.endpoint_silence_ms is not None:  # from the URL; ahead of any audio
            self.ctx.engine.set_endpointing(self.stream_id, self.options.endpoint_silence_ms)
        writer = reader = None
        try:
            await self._send(self._hello())
            writer = asyncio.create_task(self._write_loop())
            reader = asyncio.create_task(self._read_loop())
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done() and self._finalized and self.options.half_close_ok:
                await writer  # the peer half-closed after finalizing: still deliver the final result
        except Exception:  # noqa: BLE001 - a send failure means the peer is gone
            pass
        finally:
            for task in (writer, reader):
                if task is not None and not task.done():
                    task.cancel()
                elif task is not None and not task.cancelled():
                    task.exception()  # retrieved: a failed send is just a departed peer
            if not self._engine_done:
                self.ctx.engine.abort(self.stream_id)
            self.ctx.sessions.discard(self)
            log.info("stream %d closed (%s): %.2f s audio, %.2f s wall", self.stream_id, self._outcome,
                     self._audio_s, time.monotonic() - self._started)

    def stop(self, code: str = proto.SHUTTING_DOWN, message: str = "server is shutting down") -> None:
        """End the stream from the server side: fatal error, then the final result, then close."""
        self._fail(proto.ProtocolError(code, message, fatal=True))

    async def _open(self) -> bool:
        loop = asyncio.get_running_loop()

        def sink(event: Event) -> None:  # engine thread
            try:
                loop.call_soon_threadsafe(self._out.put_nowait, event)
            except RuntimeError:  # loop closed: the server is gone, nobody to tell
                pass

        try:
            future = self.ctx.engine.open_stream(sink)
            self.stream_id = await asyncio.wrap_future(future)
        except ServerFull:
            log.info("connection rejected: server full (%s %s)", self.transport, self.peer)
            self.ctx.metrics.reject(proto.SERVER_FULL)
            await self._send_quiet(proto.error(proto.SERVER_FULL, "no free stream slot; try again later",
                                               fatal=True))
            return False
        return True

    def _hello(self) -> dict[str, Any]:
        return proto.hello(self.stream_id, self._rate, model=self.ctx.model_name, chunk_ms=self.ctx.chunk_ms)

    # --- reading -----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Returns when the peer is gone. Keeps reading after finalizing, to notice a disconnect."""
        idle = self.ctx.config.idle_timeout
        while True:
            try:
                if self._finalized or not idle or idle <= 0:
                    raw = await self._recv()
                else:
                    raw = await asyncio.wait_for(self._recv(), idle)
            except asyncio.TimeoutError:
                self._fail(proto.ProtocolError(proto.IDLE_TIMEOUT, f"no message for {idle:g} s", fatal=True))
                continue
            except Exception:  # noqa: BLE001 - transport error: the peer is gone
                return
            if raw is None:
                return
            self._handle_raw(raw)

    def _handle_raw(self, raw: str | bytes | _Oversized) -> None:
        if self._fatal_sent:
            return  # after a fatal error the server accepts no more input
        try:
            self._handle(self._parse(raw))
        except proto.ProtocolError as exc:
            if exc.fatal:
                self._fail(exc)
            else:
                self._queue(proto.error_from(exc))
        except audio.AudioError as exc:
            self._queue(proto.error(exc.code, str(exc)))
        except Exception:  # noqa: BLE001 - never let one stream take the server down
            log.exception("stream %s: internal error", self.stream_id)
            self._fail(proto.ProtocolError(proto.INTERNAL, "internal server error", fatal=True))

    def _parse(self, raw: str | bytes | _Oversized) -> proto.ClientMessage:
        cap = self.ctx.config.max_message_bytes
        if raw is OVERSIZED or len(raw) > cap:
            raise proto.ProtocolError(proto.MESSAGE_TOO_LARGE, f"message larger than {cap} bytes", fatal=True)
        if isinstance(raw, bytes) and not self.options.bytes_are_json:
            return proto.parse_binary(raw)
        return proto.parse_text(raw)

    def _handle(self, msg: proto.ClientMessage) -> None:
        if isinstance(msg, proto.Ping):
            self._queue(proto.pong())
        elif isinstance(msg, proto.Audio):
            self._on_audio(msg)
        elif isinstance(msg, proto.Close):
            self._finalize()
        elif isinstance(msg, proto.Flush):
            self._on_flush()
        elif isinstance(msg, proto.Config):
            if msg.timestamps is not None:
                self.options.timestamps = msg.timestamps
            if msg.endpoint_silence_ms is not None and not self._finalized:
                self.ctx.engine.set_endpointing(self.stream_id, msg.endpoint_silence_ms)

    def _on_audio(self, msg: proto.Audio) -> None:
        if self._finalized:
            if msg.data or msg.samples:
                raise proto.ProtocolError(proto.AUDIO_AFTER_FINAL, "audio after the stream was finalized; dropped")
            return
        samples = self._decode(msg)
        if msg.sample_rate is not None and msg.sample_rate != self._rate:
            self._change_rate(msg.sample_rate)
        samples, over = self._within_budget(samples)
        out = self._resampler.push(samples)
        final = msg.final or over
        if final:
            out = np.concatenate([out, self._resampler.flush()])
        self._audio_s += len(samples) / self._rate
        self._send_audio(out, final)
        if over:
            limit = self.ctx.config.max_stream_seconds
            self._fail(proto.ProtocolError(proto.STREAM_TOO_LONG,
                                           f"stream exceeded {limit:g} s of audio; finalized", fatal=True))

    def _decode(self, msg: proto.Audio) -> np.ndarray:
        if msg.samples is not None:
            return audio.from_samples(msg.samples)
        return audio.decode(msg.data or b"", msg.encoding or self.options.encoding)

    def _change_rate(self, rate: int) -> None:
        tail = self._resampler.flush()
        if tail.size:
            self.ctx.engine.send_audio(self.stream_id, tail)
        self._rate = rate
        self._resampler = audio.Resampler(rate, self.ctx.model_rate)

    def _within_budget(self, samples: np.ndarray) -> tuple[np.ndarray, bool]:
        """The part of `samples` within --max-stream-seconds, and whether the limit was passed."""
        room = self.ctx.config.max_stream_seconds - self._audio_s
        fits = max(0, int(round(room * self._rate)))
        if len(samples) <= fits:
            return samples, False
        return samples[:fits], True

    def _send_audio(self, samples: np.ndarray, final: bool) -> None:
        if samples.size:
            self.ctx.engine.send_audio(self.stream_id, samples, final=final)
        elif final:
            self.ctx.engine.finalize(self.stream_id)
        self._finalized = self._finalized or final

    def _finalize(self) -> None:
        if not self._finalized:
            self._send_audio(self._resampler.flush(), final=True)

    def _on_flush(self) -> None:
        """Everything received is decoded and answered with a `flushed` result; the stream goes on.
        The resampler is drained too (its tail belongs before the flush) and starts afresh."""
        if self._finalized:
            return
        tail = self._resampler.flush()
        if tail.size:
            self.ctx.engine.send_audio(self.stream_id, tail)
        self._resampler = audio.Resampler(self._rate, self.ctx.model_rate)
        self.ctx.engine.flush(self.stream_id)

    def _fail(self, exc: proto.ProtocolError) -> None:
        """A fatal error: report it once, stop taking input, finalize so the transcript is kept."""
        if self._fatal_sent:
            return
        self._fatal_sent = True
        self._outcome = exc.code
        self._queue(proto.error_from(exc))
        self._finalize()

    # --- writing -----------------------------------------------------------------------------

    def _queue(self, msg: dict[str, Any]) -> None:
        self._out.put_nowait(msg)

    async def _write_loop(self) -> None:
        """Sends everything in order; returns after the final result (or a stream failure)."""
        while True:
            item = await self._out.get()
            if isinstance(item, dict):
                await self._send(item)
            elif isinstance(item, Result):
                self._engine_done = self._engine_done or item.is_final
                await self._send(proto.result(item, self.options.timestamps))
                if item.is_final:
                    self._outcome = "final" if self._outcome == "aborted" else self._outcome
                    return
            elif isinstance(item, UtteranceEnd):
                await self._send(proto.eou(item, self.options.timestamps))
            elif isinstance(item, StreamFailed):
                self._engine_done = True
                self._outcome = item.code
                await self._send(proto.error(item.code, item.message, fatal=True))
                return

    async def _send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "error":
            self.ctx.metrics.error(msg["code"])
        await self._send_text(proto.dumps(msg))

    async def _send_quiet(self, msg: dict[str, Any]) -> None:
        try:
            await self._send(msg)
        except Exception:  # noqa: BLE001 - peer already gone; nothing to do
            pass
