"""Blocking wrapper around the async client: its coroutines run on a private event-loop thread.

    with SyncStreamingClient("ws://localhost:8000", sample_rate=16000) as s:
        s.send(samples); s.finish()
        for msg in s.results():
            print(msg)
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Sequence, TypeVar

import numpy as np

from parakeet_streaming.client.aio import Progress, StreamingClient, StreamMessage, Transcript, transcribe_file
from parakeet_streaming.client.messages import Hello

T = TypeVar("T")


class SyncStreamingClient:
    """Same methods as StreamingClient, blocking. Safe to send from one thread and read results in another."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._client = StreamingClient(url, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="parakeet-client", daemon=True)
        self._thread.start()

    def _run(self, coro: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()  # type: ignore[arg-type]

    def connect(self) -> Hello:
        return self._run(self._client.connect())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> "SyncStreamingClient":
        try:
            self.connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hello(self) -> Hello:
        return self._client.hello

    def send(self, samples: np.ndarray | Sequence[float]) -> None:
        self._run(self._client.send(samples))

    def finish(self) -> None:
        self._run(self._client.finish())

    def flush(self) -> None:
        self._run(self._client.flush())

    def send_message(self, msg: dict[str, Any]) -> None:
        self._run(self._client.send_message(msg))

    def stream(self, samples: np.ndarray | Sequence[float], *, speed: float = 1.0, chunk_ms: int = 100,
               on_progress: Progress | None = None) -> None:
        self._run(self._client.stream(samples, speed=speed, chunk_ms=chunk_ms, on_progress=on_progress))

    def results(self) -> Iterator[StreamMessage]:
        agen = self._client.results()
        while True:
            try:
                yield self._run(agen.__anext__())
            except StopAsyncIteration:
                return

    def transcribe(self, samples: np.ndarray | Sequence[float], *, speed: float = 1.0, chunk_ms: int = 100,
                   on_message: Callable[[StreamMessage], None] | None = None,
                   on_progress: Progress | None = None) -> Transcript:
        """Callbacks run on the client's event-loop thread."""
        return self._run(self._client.transcribe(samples, speed=speed, chunk_ms=chunk_ms, on_message=on_message,
                                                 on_progress=on_progress))


def transcribe_file_sync(url: str, path: str | Path, **kwargs: Any) -> Transcript:
    """Blocking `transcribe_file` (same arguments). Not for use inside a running event loop."""
    return asyncio.run(transcribe_file(url, path, **kwargs))
