"""The engine: one thread owns the model and every stream; transports talk to it through a queue.

Public methods are thread-safe and never block: they put a command on the inbox. The loop drains
the inbox, asks the scheduler which ready streams step, runs one batched `Runner.step`, and hands
each stream's events to its sink (called on the engine thread; sinks must not block). The
interface, which tests/fake_engine.py implements too, is `engine/interface.py: EngineAPI`.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch

from parakeet_streaming.endpointing import EndpointConfig, Endpointer, VadBank
from parakeet_streaming.engine import scheduler, threads as intra_op
from parakeet_streaming.engine.events import EngineStats, EngineStopped, Event, ServerFull, StreamFailed
from parakeet_streaming.engine.interface import Phase, Sink
from parakeet_streaming.engine.runner import Runner, StepOutput
from parakeet_streaming.engine.stream import Stream
from parakeet_streaming.engine.words import word_starts
from parakeet_streaming.model.asr import ASRModel
from parakeet_streaming.model.boosting import BoostingTree, KeytermError

log = logging.getLogger("parakeet_streaming.engine")

IDLE_WAIT = 0.05  # seconds the loop blocks on an empty inbox when nothing is ready


@dataclass
class _Open:
    sink: Sink
    future: concurrent.futures.Future
    stream_id: int


@dataclass
class _Audio:
    stream_id: int
    samples: np.ndarray
    final: bool
    at: float  # perf_counter when the transport handed it over


@dataclass
class _Finalize:
    stream_id: int


@dataclass
class _Abort:
    stream_id: int


@dataclass
class _Flush:
    stream_id: int


@dataclass
class _SetEndpoint:
    stream_id: int
    silence_ms: int


@dataclass
class _SetKeyterms:
    stream_id: int
    tree: BoostingTree | None


class _Stop:
    pass


class Engine:
    def __init__(self, model: ASRModel, max_num_streams: int, device: str | torch.device = "cpu",
                 max_batch_size: int | None = None, endpoint: EndpointConfig | None = None,
                 keyterms: Sequence[Any] = (), threads: int | None = None, cuda_graphs: bool = False) -> None:
        self.model = model
        self.threads = threads or torch.get_num_threads()  # intra-op threads of the loop's torch ops
        self.runner = Runner(model, max_num_streams, device, cuda_graphs=cuda_graphs)
        # The server's key terms (--keyterms-file): every stream has them, and a stream's own list
        # adds to them (compile_keyterms). Compiled here, so a bad list fails at startup (KeytermError).
        self.default_keyterms = tuple(keyterms)
        self._default_tree = self.runner.compile_keyterms(self.default_keyterms) if keyterms else None
        self.endpoint = endpoint or EndpointConfig()
        # The VAD runs on the CPU whatever the device: a few tiny ops per 32 ms frame batch.
        self.vad = VadBank(max_num_streams, self.runner.sample_rate) if self.endpoint.uses_vad else None
        self._word_starts = word_starts(model.tokenizer)
        self.max_num_streams = max_num_streams
        self.max_batch_size = max_batch_size or max_num_streams
        self.ready = threading.Event()  # set once the model is warmed up and the loop runs
        self.warm_up_failed = False  # the loop still serves, but the server does not report ready
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, Stream] = {}
        self._by_slot: dict[int, Stream] = {}
        self._serve_order = itertools.count()
        self._ids = itertools.count(1)  # next() on a count is atomic: new_stream_id is thread-safe
        self._thread = threading.Thread(target=self._run, name="parakeet-engine", daemon=True)
        self.stats = EngineStats(free_slots=max_num_streams)  # written by the loop only
        self.num_active = 0
        self.num_free = max_num_streams
        self._stopped = False  # set by the loop on its way out; later opens fail at once
        self._stop_lock = threading.Lock()  # no open may slip into the inbox after its last drain

    # ---- the thread-safe surface --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def phase(self) -> Phase:
        if self._stopped:
            return "stopped"
        if not self.ready.is_set():
            return "warming_up"
        return "degraded" if self.warm_up_failed else "ready"

    def new_stream_id(self) -> int:
        """An id for a stream opened later (`open_stream(sink, stream_id)`); unique per engine."""
        return next(self._ids)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; live streams get StreamFailed("shutting_down"), later opens EngineStopped."""
        if not self._thread.is_alive():
            self._stopped = True
            return
        self._inbox.put(_Stop())
        self._thread.join(timeout)

    def open_stream(self, sink: Sink, stream_id: int | None = None) -> concurrent.futures.Future:
        """Take a slot: resolves to the stream id, or raises ServerFull (EngineStopped once shut down).
        Commands for `stream_id` may be sent at once: they follow the open through the inbox."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._stop_lock:
            if self._stopped:
                future.set_exception(EngineStopped("the engine is shut down"))
            else:
                self._inbox.put(_Open(sink, future, self.new_stream_id() if stream_id is None else stream_id))
        return future

    def send_audio(self, stream_id: int, samples: np.ndarray, final: bool = False) -> None:
        self._inbox.put(_Audio(stream_id, np.asarray(samples, dtype=np.float32), final, time.perf_counter()))

    def finalize(self, stream_id: int) -> None:
        self._inbox.put(_Finalize(stream_id))

    def abort(self, stream_id: int) -> None:
        self._inbox.put(_Abort(stream_id))

    def flush(self, stream_id: int) -> None:
        """Decode all audio sent so far and emit a Result with `flushed=True`; the stream goes on."""
        self._inbox.put(_Flush(stream_id))

    def set_endpointing(self, stream_id: int, silence_ms: int) -> None:
        """This stream's trailing-silence rule (0: off), with the server's signal and threshold."""
        self._inbox.put(_SetEndpoint(stream_id, silence_ms))

    def compile_keyterms(self, keyterms: Sequence[Any]) -> BoostingTree | None:
        """A stream's key-term list plus the server's, compiled for this model in the caller's thread
        (cached by list); raises KeytermError. Pass the result to set_keyterms. The stream's terms
        come first, so an error's entry number is the stream's own."""
        default = self.default_keyterms
        if default and isinstance(keyterms, Sequence) and not isinstance(keyterms, (str, bytes)):
            cap = self.runner.compile_keyterms.max_keyterms
            if len(keyterms) + len(default) > cap:
                raise KeytermError(f"at most {cap} key terms per stream, and the server adds {len(default)} "
                                   f"of its own; got {len(keyterms)}")
            keyterms = [*keyterms, *default]
        return self.runner.compile_keyterms(keyterms)

    def set_keyterms(self, stream_id: int, compiled: BoostingTree | None) -> None:
        """This stream's key terms from now on (None: none); kept across flushes."""
        self._inbox.put(_SetKeyterms(stream_id, compiled))

    def stats_snapshot(self) -> EngineStats:
        """A copy of the counters, safe to read from any thread (values may be one step stale)."""
        return self.stats.copy()

    # ---- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        intra_op.use(self.threads)
        try:
            self._warm_up()
        except Exception:  # streams will fail one by one with a clear error; the loop still serves
            log.exception("engine warm-up failed")
            self.warm_up_failed = True
        self.ready.set()
        while self._iterate():
            pass
        self._stop()

    def _iterate(self) -> bool:
        """Apply queued commands, then step the ready streams once; False when asked to stop."""
        try:
            if not self._drain(block=not self._any_ready()):
                return False
            if self.vad is not None:
                self._run_vad()
            ready = [s for s in self._streams.values() if self.runner.ready(s.slot)]
            if ready:
                self._step(ready)
        except Exception:  # a bug in bookkeeping must not stop every stream: log and carry on
            log.exception("engine loop iteration failed")
            time.sleep(IDLE_WAIT)  # no hot loop if the failure repeats
        return True

    def _stop(self) -> None:
        """Tell live streams and anyone still waiting for a stream that the engine is gone."""
        with self._stop_lock:
            self._stopped = True
        for stream in list(self._streams.values()):
            self._emit(stream, StreamFailed(stream.id, "shutting_down", "the server is shutting down"))
            self._release(stream)
        while True:  # commands that raced with the stop: only pending opens need an answer
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(cmd, _Open) and cmd.future.set_running_or_notify_cancel():
                cmd.future.set_exception(EngineStopped("the engine is shut down"))

    def _warm_up(self) -> None:
        """One step on a scratch slot so the first real stream does not pay for lazy init."""
        if self.max_num_streams == 0:
            return
        slot = self.max_num_streams - 1
        self.runner.open(slot)
        self.runner.push(slot, np.zeros(self.runner.chunk_samples * 2, dtype=np.float32))
        self.runner.finish(slot)
        while self.runner.ready(slot):
            self.runner.step([slot])
        self.runner.release(slot)
        self.runner.prepare_graphs()  # with --cuda-graphs: every bucket captured before the first stream
        if self.vad is not None:
            self.vad.push(slot, np.zeros(self.runner.chunk_samples, dtype=np.float32))
            self.vad.run([slot])
            self.vad.reset(slot)

    def _any_ready(self) -> bool:
        return any(self.runner.ready(s.slot) for s in self._streams.values())

    def _drain(self, block: bool) -> bool:
        """Apply every queued command; False when asked to stop."""
        try:
            cmd = self._inbox.get(timeout=IDLE_WAIT) if block else self._inbox.get_nowait()
        except queue.Empty:
            return True
        while True:
            if isinstance(cmd, _Stop):
                return False
            try:
                self._apply(cmd)
            except Exception:  # a bad command must not take the engine down
                log.exception("engine command %s failed", type(cmd).__name__)
            try:
                cmd = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _apply(self, cmd: Any) -> None:
        if isinstance(cmd, _Open):
            self._open(cmd)
            return
        stream = self._streams.get(cmd.stream_id)
        if stream is None:
            return  # already finished or aborted: late commands are harmless
        if isinstance(cmd, _Abort):
            self._release(stream)
        elif isinstance(cmd, _SetEndpoint):
            self._set_endpoint(stream, cmd.silence_ms)
        elif isinstance(cmd, _SetKeyterms):
            self.runner.set_keyterms(stream.slot, cmd.tree)
        elif stream.defer(cmd):
            pass  # a flush is decoding: applied on the new segment
        elif isinstance(cmd, _Audio):
            if stream.on_audio(len(cmd.samples), cmd.at):
                self.runner.push(stream.slot, cmd.samples)
                if stream.uses_vad:
                    self.vad.push(stream.slot, cmd.samples)
            if cmd.final and stream.finish():
                self.runner.finish(stream.slot)
        elif isinstance(cmd, _Finalize):
            if stream.finish():
                self.runner.finish(stream.slot)
        elif isinstance(cmd, _Flush) and stream.begin_flush():
            self.runner.finish(stream.slot)  # the segment ends here, decoded exactly like an end of stream

    def _open(self, cmd: _Open) -> None:
        if not cmd.future.set_running_or_notify_cancel():
            return  # the client gave up (e.g. disconnected) before its stream existed
        free = sorted(set(range(self.max_num_streams)) - set(self._by_slot))
        if not free:
            cmd.future.set_exception(ServerFull(f"all {self.max_num_streams} stream slots are in use"))
            return
        slot = free[0]  # lowest first keeps active slots contiguous, so steps index them in place
        endpointer = Endpointer(self.endpoint, self.runner.frame_ms) if self.endpoint.enabled else None
        stream = Stream(cmd.stream_id, slot, cmd.sink, self.model.tokenizer, self.runner.sample_rate,
                        frame_ms=self.runner.frame_ms, starts=self._word_starts, endpointer=endpointer)
        self.runner.open(slot, self._default_tree)
        if self.vad is not None:
            self.vad.reset(slot)
        self._streams[stream.id], self._by_slot[slot] = stream, stream
        self._count()
        self.stats.streams_opened += 1
        cmd.future.set_result(stream.id)

    def _release(self, stream: Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return  # already released (e.g. its sink failed while it was being failed)
        self.runner.release(stream.slot)
        self._by_slot.pop(stream.slot, None)
        self._count()

    def _count(self) -> None:
        self.num_active = len(self._streams)
        self.num_free = self.max_num_streams - self.num_active
        self.stats.active_streams, self.stats.free_slots = self.num_active, self.num_free

    def _step(self, ready: list[Stream]) -> None:
        batch = [self._streams[i] for i in scheduler.pick(ready, self.max_batch_size)]
        started = time.perf_counter()
        try:
            outputs = self.runner.step([s.slot for s in batch])
        except Exception as exc:  # one bad batch must not take the engine down
            log.exception("step failed for streams %s", [s.id for s in batch])
            self.stats.step_failures += 1
            for stream in batch:
                self._emit(stream, StreamFailed(stream.id, "internal", f"decoding failed: {exc}"))
                self._release(stream)
            return
        now = time.perf_counter()
        st = self.stats
        st.step_seconds.observe(now - started)
        st.batch_size.observe(len(batch))
        st.max_batch_size = max(st.max_batch_size, len(batch))
        covered = 0
        for out in outputs:  # stream audio this step's frames newly cover, and its decode lag
            gained, lag = self._by_slot[out.slot].on_step(out, next(self._serve_order), now)
            covered += gained
            if lag is not None:
                st.decode_lag.observe(lag)
        st.audio_seconds += covered / self.runner.sample_rate
        for out in outputs:
            self._deliver(self._by_slot[out.slot], out)

    def _deliver(self, stream: Stream, out: StepOutput) -> None:
        try:
            events = stream.events(out)
        except Exception as exc:  # e.g. the tokenizer chokes on an id: fail this stream only
            log.exception("events of stream %d failed", stream.id)
            self._emit(stream, StreamFailed(stream.id, "internal", f"could not build results: {exc}"))
            self._release(stream)
            return
        if out.done and stream.flushing:
            self._new_segment(stream)
        elif out.done:
            self._release(stream)  # first, so whoever sees the final Result finds the slot free
        for event in events:
            if not self._emit(stream, event):
                return

    def _new_segment(self, stream: Stream) -> None:
        """A flush is decoded: fresh model state for the slot, then the commands that waited."""
        backlog = stream.new_segment()
        self.runner.restart(stream.slot)  # keeps the stream's key terms
        for cmd in backlog:
            self._apply(cmd)

    def _set_endpoint(self, stream: Stream, silence_ms: int) -> None:
        if stream.set_endpoint(replace(self.endpoint, silence_ms=silence_ms)):
            if self.vad is None:  # the server's default has endpointing off: load the VAD now
                self.vad = VadBank(self.max_num_streams, self.runner.sample_rate)
            self.vad.reset(stream.slot, start_sample=stream.samples)

    def _run_vad(self) -> None:
        """VAD over the audio that arrived since the last iteration, all streams in one batch."""
        streams = [s for s in self._streams.values() if s.uses_vad and self.vad.has_frames(s.slot)]
        if not streams:
            return
        probs = self.vad.run([s.slot for s in streams])
        for stream in streams:
            start_ms, p = probs[stream.slot]
            stream.on_vad(start_ms, self.vad.frame_ms, p)

    def _emit(self, stream: Stream, event: Event) -> bool:
        try:
            stream.sink(event)
            return True
        except Exception:
            log.exception("sink of stream %d failed; dropping the stream", stream.id)
            self.stats.sink_failures += 1
            self._release(stream)
            return False
