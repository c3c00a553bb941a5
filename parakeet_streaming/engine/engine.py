"""The engine: one thread owns the model and every stream; transports talk to it through a queue.

Public methods are thread-safe and never block: they put a command on the inbox. The loop drains
the inbox, asks the scheduler which ready streams step, runs one batched `Runner.step`, and hands
each stream's events to its sink (called on the engine thread; sinks must not block).
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from parakeet_streaming.endpointing import EndpointConfig, Endpointer, VadBank
from parakeet_streaming.engine import scheduler
from parakeet_streaming.engine.events import EngineStats, Event, Result, ServerFull, StreamFailed, UtteranceEnd
from parakeet_streaming.engine.runner import Runner, StepOutput
from parakeet_streaming.engine.stream import Stream
from parakeet_streaming.engine.words import word_starts
from parakeet_streaming.model.asr import ASRModel

log = logging.getLogger("parakeet_streaming.engine")

Sink = Callable[[Event], None]
IDLE_WAIT = 0.05  # seconds the loop blocks on an empty inbox when nothing is ready


@dataclass
class _Open:
    sink: Sink
    future: concurrent.futures.Future


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


class _Stop:
    pass


class EngineStopped(ServerFull):
    """The engine is shut down. A ServerFull, so transports turn the connection away the same way."""


class Engine:
    def __init__(self, model: ASRModel, max_num_streams: int, device: str | torch.device = "cpu",
                 max_batch_size: int | None = None, endpoint: EndpointConfig | None = None) -> None:
        self.model = model
        self.runner = Runner(model, max_num_streams, device)
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
        self._last_served: dict[int, int] = {}  # stream id -> its place in the serve order
        self._serve_order = itertools.count()
        self._next_id = 1
        self._thread = threading.Thread(target=self._run, name="parakeet-engine", daemon=True)
        self.stats = EngineStats(free_slots=max_num_streams)
        self.num_active = 0
        self.num_free = max_num_streams
        self._stopped = False  # set by the loop on its way out; later opens fail at once
        self._stop_lock = threading.Lock()  # no open may slip into the inbox after its last drain

    # ---- the thread-safe surface --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop; live streams get StreamFailed("shutting_down"), later opens EngineStopped."""
        if not self._thread.is_alive():
            self._stopped = True
            return
        self._inbox.put(_Stop())
        self._thread.join(timeout)

    def open_stream(self, sink: Sink) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._stop_lock:
            if self._stopped:
                future.set_exception(EngineStopped("the engine is shut down"))
            else:
                self._inbox.put(_Open(sink, future))
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

    def stats_snapshot(self) -> EngineStats:
        """A copy of the counters, safe to read from any thread (values may be one step stale)."""
        st = self.stats
        return EngineStats(st.active_streams, st.free_slots, st.steps, dict(st.extra),
                           st.step_seconds.copy(), st.batch_size.copy(), st.decode_lag.copy())

    # ---- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
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
        elif stream.flushing:
            stream.backlog.append(cmd)  # after the flush, on the new segment
        elif isinstance(cmd, _Audio):
            if not stream.finishing and len(cmd.samples):
                stream.samples += len(cmd.samples)
                stream.arrivals.append((stream.samples, cmd.at))
                self.runner.push(stream.slot, cmd.samples)
                if self._uses_vad(stream):
                    self.vad.push(stream.slot, cmd.samples)
            if cmd.final:
                self._finish(stream)
        elif isinstance(cmd, _Finalize):
            self._finish(stream)
        elif isinstance(cmd, _Flush) and not stream.finishing:
            stream.flushing = True
            self.runner.finish(stream.slot)  # the segment ends here, decoded exactly like an end of stream

    def _open(self, cmd: _Open) -> None:
        if not cmd.future.set_running_or_notify_cancel():
            return  # the client gave up (e.g. disconnected) before its stream existed
        free = sorted(set(range(self.max_num_streams)) - set(self._by_slot))
        if not free:
            self._bump("streams_rejected")
            cmd.future.set_exception(ServerFull(f"all {self.max_num_streams} stream slots are in use"))
            return
        slot = free[0]  # lowest first keeps active slots contiguous, so steps index them in place
        endpointer = Endpointer(self.endpoint, self.runner.frame_ms) if self.endpoint.enabled else None
        stream = Stream(self._next_id, slot, cmd.sink, self.model.tokenizer, self.runner.sample_rate,
                        frame_ms=self.runner.frame_ms, starts=self._word_starts, endpointer=endpointer)
        self._next_id += 1
        self.runner.open(slot)
        if self.vad is not None:
            self.vad.reset(slot)
        self._streams[stream.id], self._by_slot[slot] = stream, stream
        self._last_served[stream.id] = -1
        self._count()
        self._bump("streams_opened")
        cmd.future.set_result(stream.id)

    def _finish(self, stream: Stream) -> None:
        if not stream.finishing:
            stream.finishing = True
            self.runner.finish(stream.slot)

    def _release(self, stream: Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return  # already released (e.g. its sink failed while it was being failed)
        self.runner.release(stream.slot)
        self._by_slot.pop(stream.slot, None)
        self._last_served.pop(stream.id, None)
        self._count()

    def _count(self) -> None:
        self.num_active = len(self._streams)
        self.num_free = self.max_num_streams - self.num_active
        self.stats.active_streams, self.stats.free_slots = self.num_active, self.num_free

    def _step(self, ready: list[Stream]) -> None:
        candidates = [scheduler.Candidate(s.id, self._last_served[s.id], s.finishing or s.flushing) for s in ready]
        batch = [self._streams[i] for i in scheduler.pick(candidates, self.max_batch_size)]
        started = time.perf_counter()
        try:
            outputs = self.runner.step([s.slot for s in batch])
        except Exception as exc:  # one bad batch must not take the engine down
            log.exception("step failed for streams %s", [s.id for s in batch])
            self._bump("step_failures")
            for stream in batch:
                self._emit(stream, StreamFailed(stream.id, "internal", f"decoding failed: {exc}"))
                self._release(stream)
            return
        self._record(len(batch), time.perf_counter() - started, outputs)
        for out in outputs:
            stream = self._by_slot[out.slot]
            self._last_served[stream.id] = next(self._serve_order)
            self._deliver(stream, out)

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
        stream.new_segment()
        self.runner.open(stream.slot)
        backlog, stream.backlog = stream.backlog, []
        for cmd in backlog:
            self._apply(cmd)

    def _uses_vad(self, stream: Stream) -> bool:
        return stream.endpointer is not None and stream.endpointer.config.uses_vad

    def _set_endpoint(self, stream: Stream, silence_ms: int) -> None:
        config = replace(self.endpoint, silence_ms=silence_ms)
        had_vad = self._uses_vad(stream)
        if not config.enabled:
            stream.endpointer = None
        elif stream.endpointer is None:
            stream.endpointer = Endpointer(config, self.runner.frame_ms)
        else:
            stream.endpointer.config = config  # keeps what the VAD heard so far
        if self._uses_vad(stream) and not had_vad:
            if self.vad is None:  # the server's default has endpointing off: load the VAD now
                self.vad = VadBank(self.max_num_streams, self.runner.sample_rate)
            self.vad.reset(stream.slot, start_sample=stream.samples)

    def _run_vad(self) -> None:
        """VAD over the audio that arrived since the last iteration, all streams in one batch."""
        streams = [s for s in self._streams.values() if self._uses_vad(s) and self.vad.has_frames(s.slot)]
        if not streams:
            return
        probs = self.vad.run([s.slot for s in streams])
        for stream in streams:
            start_ms, p = probs[stream.slot]
            stream.endpointer.on_vad(start_ms, self.vad.frame_ms, p)

    def _emit(self, stream: Stream, event: Event) -> bool:
        try:
            stream.sink(event)
            return True
        except Exception:
            log.exception("sink of stream %d failed; dropping the stream", stream.id)
            self._bump("sink_failures")
            self._release(stream)
            return False

    def _record(self, batch: int, seconds: float, outputs: list[StepOutput]) -> None:
        st = self.stats
        st.steps += 1
        st.step_seconds.observe(seconds)
        st.batch_size.observe(batch)
        self._bump("step_seconds_total", seconds)
        self._bump("batch_total", batch)
        st.extra["max_batch_size"] = max(st.extra.get("max_batch_size", 0.0), float(batch))
        st.extra["last_step_seconds"] = seconds
        st.extra["last_batch_size"] = float(batch)
        covered, now = 0, time.perf_counter()
        for out in outputs:  # stream audio this step's frames newly cover, from each running total
            stream = self._by_slot[out.slot]
            new = stream.covered(out)
            if new > stream.samples_covered and (arrived := stream.arrived(new)) is not None:
                st.decode_lag.observe(now - arrived)
            covered += new - stream.samples_covered
            stream.samples_covered = new
        self._bump("audio_seconds_total", covered / self.runner.sample_rate)

    def _bump(self, key: str, by: float = 1.0) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0.0) + by


def transcribe(engine: Engine, samples: np.ndarray, chunk_samples: int | None = None,
               timeout: float = 600.0) -> dict[str, Any]:
    """Run one stream through the engine exactly as a client would, and collect the outcome."""
    events: queue.SimpleQueue = queue.SimpleQueue()
    stream_id = engine.open_stream(events.put).result(timeout)
    step = chunk_samples or engine.runner.chunk_samples
    for i in range(0, len(samples), step):
        engine.send_audio(stream_id, samples[i:i + step])
    engine.finalize(stream_id)
    tokens: list[int] = []
    confidences: list[float] = []
    frames: list[int] = []
    starts: list[int] = []
    words: list[dict[str, Any]] = []
    utterances: list[dict[str, Any]] = []
    ended_at = 0  # len(tokens) at the last end of utterance
    deadline = time.monotonic() + timeout
    while True:
        event = events.get(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(event, StreamFailed):
            raise RuntimeError(f"transcription failed: {event.message}")
        if isinstance(event, UtteranceEnd):
            utterances.append({"index": event.utterance, "text": event.text, "audio_ms": event.audio_ms,
                               "backchannel": event.backchannel, "ended": True, "reason": event.reason})
            words += [vars(w) for w in event.words]
            ended_at = len(tokens)
        elif isinstance(event, Result):
            tokens += event.token_ids
            confidences += event.confidences
            frames += event.token_frames
            starts += event.token_start_ms
            words += [vars(w) for w in event.words]
            if event.is_final:
                tail = engine.model.tokenizer.decode(tokens[ended_at:]).strip()
                if tail:
                    utterances.append({"index": event.utterance, "text": tail, "audio_ms": event.audio_ms,
                                       "backchannel": False, "ended": False})
                return {"text": event.text, "token_ids": tokens, "confidence_scores": confidences,
                        "token_frames": frames, "token_start_ms": starts, "words": words,
                        "utterances": utterances}

