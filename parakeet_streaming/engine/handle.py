"""One engine stream seen from an asyncio loop: open -> send / flush / finish / abort, `async for event`.

Every transport, the HTTP transcription route and `parakeet-server transcribe` use this handle. The
stream has an id at once and takes its slot lazily, with its first send / flush / finish, so a
connection that never sends audio never holds a slot. A refusal at that point (no free slot, the
engine stopped) is delivered in the event stream as a StreamFailed with the code below; `wait_open`
raises it as StreamRefused instead, for callers that must know before they answer.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Sequence

import numpy as np

from parakeet_streaming.engine.events import EngineStopped, Event, KeytermsRejected, Result, ServerFull, StreamFailed
from parakeet_streaming.engine.interface import EngineAPI
from parakeet_streaming.model.boosting import KeytermError

SERVER_FULL, SHUTTING_DOWN = "server_full", "shutting_down"


class StreamRefused(Exception):
    """The engine would not open the stream: `code` is server_full or shutting_down."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def refusal(exc: BaseException) -> StreamRefused:
    """The one mapping of the engine's open errors to error codes."""
    if isinstance(exc, EngineStopped):
        return StreamRefused(SHUTTING_DOWN, "server is shutting down")
    if isinstance(exc, ServerFull):
        return StreamRefused(SERVER_FULL, "no free stream slot; try again later")
    raise exc


class EngineStream:
    """Construct on the loop. `on_event`: hand events to this callable (on the loop) instead of
    keeping them for `async for`."""

    def __init__(self, engine: EngineAPI, on_event: Callable[[Event], None] | None = None) -> None:
        self.engine = engine
        self.stream_id = engine.new_stream_id()
        self.opened = False
        self.done = False  # a final Result or a StreamFailed was delivered: nothing to abort
        self.refused = False  # the engine would not open it (its StreamFailed says why)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Event] | None = None if on_event else asyncio.Queue()
        self._on_event = on_event or self._queue.put_nowait
        self._future: concurrent.futures.Future | None = None
        self._endpoint_ms: int | None = None
        self._keyterms: Any = None  # compiled, waiting for the open

    # ---- commands ----------------------------------------------------------------------------
    def open(self) -> None:
        if self.opened:
            return
        self.opened = True
        self._future = self.engine.open_stream(self._sink, self.stream_id)
        self._future.add_done_callback(self._opened)
        if self._endpoint_ms is not None:
            self.engine.set_endpointing(self.stream_id, self._endpoint_ms)
        if self._keyterms is not None:
            self.engine.set_keyterms(self.stream_id, self._keyterms)

    async def wait_open(self) -> None:
        self.open()
        try:
            await asyncio.wrap_future(self._future)
        except ServerFull as exc:
            self.done = True
            raise refusal(exc) from exc

    def send(self, samples: np.ndarray, final: bool = False) -> None:
        self.open()
        if len(samples):
            self.engine.send_audio(self.stream_id, samples, final=final)
        elif final:
            self.engine.finalize(self.stream_id)

    def flush(self) -> None:
        self.open()
        self.engine.flush(self.stream_id)

    def finish(self) -> None:
        self.open()
        self.engine.finalize(self.stream_id)

    def set_endpointing(self, silence_ms: int) -> None:
        if self.opened:
            self.engine.set_endpointing(self.stream_id, silence_ms)
        else:
            self._endpoint_ms = silence_ms  # ahead of any audio, once the stream opens

    def set_keyterms(self, keyterms: Sequence[Any]) -> None:
        """This stream's key terms, besides the server's ([]: the server's alone). The list is
        compiled here, on the loop; a bad one is reported as a KeytermsRejected event and the stream
        keeps its previous list."""
        try:
            compiled = self.engine.compile_keyterms(keyterms)
        except KeytermError as exc:
            self._on_event(KeytermsRejected(self.stream_id, str(exc)))
            return
        if self.opened:
            self.engine.set_keyterms(self.stream_id, compiled)
        else:
            self._keyterms = compiled  # ahead of any audio, once the stream opens

    def abort(self) -> None:
        """Free the slot (harmless before the open resolves: the abort follows it in the inbox)."""
        if self.opened and not self.done:
            self.engine.abort(self.stream_id)
        self.done = True

    # ---- events ------------------------------------------------------------------------------
    def __aiter__(self) -> "EngineStream":
        return self

    async def __anext__(self) -> Event:
        if self._queue is None:
            raise TypeError("this stream hands its events to on_event")
        if self.done and self._queue.empty():
            raise StopAsyncIteration
        return await self._queue.get()

    async def __aenter__(self) -> "EngineStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.abort()

    def _sink(self, event: Event) -> None:  # engine thread
        try:
            self._loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # loop closed: nobody left to tell
            pass

    def _deliver(self, event: Event) -> None:
        if isinstance(event, StreamFailed) or (isinstance(event, Result) and event.is_final):
            self.done = True
        self._on_event(event)

    def _opened(self, future: concurrent.futures.Future) -> None:  # any thread
        if future.cancelled() or future.exception() is None:
            return
        failed = refusal(future.exception())
        try:
            self._loop.call_soon_threadsafe(self._refuse, failed)
        except RuntimeError:  # loop closed
            pass

    def _refuse(self, failed: StreamRefused) -> None:
        self.refused = True
        self._deliver(StreamFailed(self.stream_id, failed.code, failed.message))


async def transcribe(engine: EngineAPI, samples: np.ndarray) -> list[Event]:
    """Run one clip through the engine as a client would; its events, ending with the final Result."""
    async with EngineStream(engine) as stream:
        stream.send(samples, final=True)
        events = [event async for event in stream]
    if isinstance(events[-1], StreamFailed):
        raise RuntimeError(f"transcription failed: {events[-1].message}")
    return events
