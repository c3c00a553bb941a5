"""A stand-in Engine with the real interface (engine/interface.py: EngineAPI) and threading model,
for session and transport tests.

Every `send_audio` emits one Result whose single token id is the running sample count mod 1000;
the final Result's text is the total number of samples received, so a test can tell lost audio.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
from typing import Callable

import numpy as np

from parakeet_streaming.engine.events import EngineStats, Event, Result, ServerFull


class FakeEngine:
    def __init__(self, max_num_streams: int = 4) -> None:
        self.max_num_streams = max_num_streams
        self._inbox: queue.Queue = queue.Queue()
        self._sinks: dict[int, Callable[[Event], None]] = {}
        self._totals: dict[int, int] = {}
        self._ids = itertools.count(0)
        self.stats = EngineStats(free_slots=max_num_streams)
        self._lock = threading.Lock()
        self.aborted: list[int] = []
        self.endpointing: dict[int, int] = {}
        self.keyterms: dict[int, object] = {}
        self.received: dict[int, list[np.ndarray]] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def phase(self) -> str:
        return "ready" if self._thread.is_alive() else "stopped"

    def stats_snapshot(self) -> EngineStats:
        return EngineStats(self.num_active, self.num_free, streams_opened=self.stats.streams_opened)

    def new_stream_id(self) -> int:
        return next(self._ids)

    def shutdown(self, timeout: float = 10.0) -> None:
        self._inbox.put(None)
        self._thread.join(timeout)

    @property
    def num_active(self) -> int:
        with self._lock:
            return len(self._sinks)

    @property
    def num_free(self) -> int:
        return self.max_num_streams - self.num_active

    def open_stream(self, sink: Callable[[Event], None], stream_id: int | None = None) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if len(self._sinks) >= self.max_num_streams:
                fut.set_exception(ServerFull())
                return fut
            sid = self.new_stream_id() if stream_id is None else stream_id
            self._sinks[sid], self._totals[sid], self.received[sid] = sink, 0, []
            self.stats.streams_opened += 1
        fut.set_result(sid)
        return fut

    def send_audio(self, stream_id: int, samples: np.ndarray, final: bool = False) -> None:
        self._inbox.put(("audio", stream_id, np.array(samples, dtype=np.float32), final))

    def finalize(self, stream_id: int) -> None:
        self._inbox.put(("audio", stream_id, np.zeros(0, np.float32), True))

    def abort(self, stream_id: int) -> None:
        self._inbox.put(("abort", stream_id, None, False))

    def flush(self, stream_id: int) -> None:
        self._inbox.put(("flush", stream_id, None, False))

    def set_endpointing(self, stream_id: int, silence_ms: int) -> None:
        self.endpointing[stream_id] = silence_ms

    def compile_keyterms(self, keyterms):
        from parakeet_streaming.model.boosting import KeytermError

        if any(not str(k).strip() for k in keyterms):
            raise KeytermError("key term is empty")
        return tuple(keyterms)

    def set_keyterms(self, stream_id: int, compiled) -> None:
        self.keyterms[stream_id] = compiled

    def _loop(self) -> None:
        while (cmd := self._inbox.get()) is not None:
            kind, sid, samples, final = cmd
            with self._lock:
                sink = self._sinks.get(sid)
            if sink is None:
                continue
            if kind == "abort":
                self.aborted.append(sid)
                self._drop(sid)
                continue
            if kind == "flush":
                total = self._totals[sid]
                sink(Result(sid, str(total), [], [], [], total // 16, 0, flushed=True))
                continue
            self._totals[sid] += len(samples)
            self.received[sid].append(samples)
            total = self._totals[sid]
            if len(samples):
                sink(Result(sid, str(total), [total % 1000], [0.5], [0], total // 16, 0))
            if final:
                self._drop(sid)
                sink(Result(sid, str(total), [], [], [], total // 16, 0, is_final=True))

    def _drop(self, sid: int) -> None:
        with self._lock:
            self._sinks.pop(sid, None)
