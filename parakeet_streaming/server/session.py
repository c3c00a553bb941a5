"""One connection = one stream, whatever the transport and the wire protocol.

A transport hands over a `Link` (two coroutines, `recv()` and `send()`, plus what it knows of the
request) and calls `serve_connection`. That picks the protocol for the request path
(server/routes.py), checks the API key and admission, then runs a `Session`: a reader task feeds
client messages (and the end of input) to the sans-I/O protocol object, a timer its timeouts, a
writer task feeds it the engine's events and writes what it says, in order. Engine commands go to the
stream's `EngineStream` at once; wire messages go out through the writer alone.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from parakeet_streaming.engine.events import Event, StreamFailed
from parakeet_streaming.engine.handle import EngineStream
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.routes import protocol_for
from parakeet_streaming.server.security import bearer_token
from parakeet_streaming.server.wire import (Audio, Close, Endpointing, Finish, Flush, Keyterms, Message,
                                            ProtocolFactory, Request, Send, State, StreamProtocol)

log = logging.getLogger("parakeet_streaming.session")


@dataclass
class Link:
    """What a transport hands over. `recv()`: the next client message (str: text, bytes: binary,
    OVERSIZED: over the size cap) or None once the peer is gone; `send(data)` raises when it is
    gone; `close(code, reason)` closes with a code (None: the transport closes after
    serve_connection returns)."""

    recv: Callable[[], Awaitable[Message | None]]
    send: Callable[[str | bytes], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]] | None = None
    request: Request = field(default_factory=Request)
    peer: str = "?"


FROM_REQUEST: Any = object()  # serve_connection's default token: the request's Bearer header or ?token=


def peer_name(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


async def serve_connection(ctx: ServerContext, link: Link, *, token: str | None = FROM_REQUEST,
                           protocol: ProtocolFactory | None = None,
                           unauthorized: str = "missing or wrong API key") -> None:
    """Serve one connection to its end; never raises for anything the peer does."""
    factory = protocol or protocol_for(link.request.path)
    session = Session(ctx, link, factory(link.request, ctx.config, ctx.model))
    if token is FROM_REQUEST:
        token = bearer_token(link.request.headers, link.request.path)
    refusal = _admission(ctx, token, unauthorized)
    if refusal is not None:
        await session.refuse(*refusal)
    else:
        await session.run()


def _admission(ctx: ServerContext, token: str | None, unauthorized: str) -> tuple[str, str] | None:
    """Why a new connection is turned away before it is greeted, if it is."""
    if not ctx.auth.check(token):
        return proto.UNAUTHORIZED, unauthorized
    if ctx.draining:
        return proto.SHUTTING_DOWN, "server is shutting down"
    if ctx.engine.num_free <= 0:
        return proto.SERVER_FULL, "no free stream slot; try again later"
    if ctx.pending_connections >= ctx.max_pending_connections:
        return proto.SERVER_FULL, "too many connections are waiting to send audio; try again later"
    return None


class Session:
    def __init__(self, ctx: ServerContext, link: Link, protocol: StreamProtocol) -> None:
        self.ctx, self.link, self.protocol = ctx, link, protocol
        self._wake: asyncio.Queue[Event | None] = asyncio.Queue()  # engine events; None: wire output waits
        self.stream = EngineStream(ctx.engine, on_event=self._wake.put_nowait)
        self._wire: deque[Send | Close] = deque()
        self._audio_s = 0.0
        self._started = time.monotonic()
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None  # due at _timer_at, at or before the protocol's deadline
        self._timer_at = 0.0

    @property
    def label(self) -> str:
        return f"{self.link.request.transport} {self.link.peer}"

    def _log_refusal(self, code: str) -> None:
        """Turned away before any stream: a log line and the rejection counted."""
        self._refused = True
        self.ctx.metrics.reject(code)
        log.info("stream %d refused: %s (%s)", self.stream.stream_id, code, self.label,
                 extra={"stream_id": self.stream.stream_id, "code": code})

    async def refuse(self, code: str, message: str) -> None:
        self._log_refusal(code)
        self.protocol.refuse(code, message)
        self._dispatch()
        try:
            await self._write_pending()
        except Exception:  # noqa: BLE001 - the peer is already gone
            pass
        self._disarm()

    async def run(self) -> None:
        self.ctx.sessions.add(self)
        self.protocol.open(self.stream.stream_id, time.monotonic())
        log.info("stream %d opened (%s)", self.stream.stream_id, self.label,
                 extra={"stream_id": self.stream.stream_id})
        writer = asyncio.create_task(self._write_loop())
        reader = asyncio.create_task(self._read_loop())
        try:
            self._dispatch()
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done() and self.protocol.state is State.FINISHING:
                await writer  # the peer half-closed after finalizing: still deliver the final result
        except Exception:  # noqa: BLE001 - a send failure means the peer is gone
            pass
        finally:
            for task in (writer, reader):
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a failed send is just a departed peer
            self._disarm()
            self.stream.abort()
            self.ctx.sessions.discard(self)
            log.info("stream %d closed (%s): %.2f s audio, %.2f s wall", self.stream.stream_id,
                     self.protocol.outcome, self._audio_s, time.monotonic() - self._started)

    def stop(self, code: str = proto.SHUTTING_DOWN, message: str = "server is shutting down") -> None:
        """End the stream from the server side: fatal error, then the final result, then close."""
        self.protocol.stop(code, message)
        self._dispatch()

    # --- reading -----------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        """Returns when the peer is gone. Keeps reading after finalizing, to notice a disconnect."""
        while True:
            try:
                raw = await self.link.recv()
            except Exception:  # noqa: BLE001 - transport error: the peer is gone
                raw = None
            if raw is None:
                self.protocol.eof()
                self._dispatch()
                return
            self.protocol.receive(raw, time.monotonic())
            self._dispatch()

    def _dispatch(self) -> None:
        """Carry out the protocol's outputs: engine commands now, wire messages via the writer."""
        wire = False
        for out in self.protocol.outputs():
            if isinstance(out, (Send, Close)):
                self._wire.append(out)
                wire = True
            elif isinstance(out, Audio):
                self._audio_s += len(out.samples) / self.ctx.model.sample_rate
                self.stream.send(out.samples, out.final)
            elif isinstance(out, Flush):
                self.stream.flush()
            elif isinstance(out, Finish):
                self.stream.finish()
            elif isinstance(out, Endpointing):
                self.stream.set_endpointing(out.silence_ms)
            elif isinstance(out, Keyterms):
                self.stream.set_keyterms(out.terms)  # a bad list comes back as a KeytermsRejected event
        if wire:
            self._wake.put_nowait(None)
        self._arm()

    # --- timeouts ----------------------------------------------------------------------------
    # One timer per session instead of a timeout around every read (asyncio.wait_for makes a task
    # per message). The deadline moves on with each message; the timer is moved only when the
    # deadline comes sooner, and a timer that fires early re-arms.
    def _arm(self) -> None:
        deadline = self.protocol.deadline()
        if deadline is None or (self._timer is not None and self._timer_at <= deadline):
            return
        self._disarm()
        # call_later, not call_at: the loop's clock need not be time.monotonic() (e.g. uvloop's)
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        deadline, now = self.protocol.deadline(), time.monotonic()
        if deadline is not None and now >= deadline:
            self.protocol.timeout(now)
        self._dispatch()

    # --- writing -----------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        """Writes everything in order; returns after the protocol's Close."""
        while True:
            event = await self._wake.get()
            if event is not None:
                if isinstance(event, StreamFailed) and self.stream.refused:
                    self._log_refusal(event.code)
                self.protocol.engine_event(event)
                self._dispatch()
            if await self._write_pending():
                return

    async def _write_pending(self) -> bool:
        """Send what waits; True once the Close is done."""
        while self._wire:
            out = self._wire.popleft()
            if isinstance(out, Close):
                if self.link.close is not None:
                    await self.link.close(out.code, out.reason)
                return True
            if out.error is not None:
                self.ctx.metrics.error(out.error)
                if not self._refused:  # a refusal has its line already
                    log.info("stream %d: error %s sent (%s)", self.stream.stream_id, out.error, self.label,
                             extra={"stream_id": self.stream.stream_id, "code": out.error})
            await self.link.send(out.data)
        return False
