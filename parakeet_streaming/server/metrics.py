"""Prometheus metrics of one server, in its own registry (several servers can share a process).

Transport-side counters (errors, rejected connections) are plain prometheus-client counters,
touched on the event loop only. Engine numbers are read at scrape time from
`Engine.stats_snapshot()`, which the engine thread alone writes: no lock is shared with the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from parakeet_streaming.engine.events import Buckets
    from parakeet_streaming.server.context import ServerContext

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REJECT_REASONS = ("server_full", "unauthorized", "shutting_down")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.errors = Counter("parakeet_errors", "Error messages sent to clients, by code", ["code"],
                              registry=self.registry)
        self.rejected = Counter("parakeet_connections_rejected",
                                "Connections turned away before a stream opened, by reason", ["reason"],
                                registry=self.registry)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)  # exported as 0 before the first rejection

    def watch(self, ctx: "ServerContext") -> None:
        """Export the engine and session numbers of `ctx` (once per context)."""
        self.registry.register(_ServerCollector(ctx))

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def refused(self, code: str) -> None:
        """A request turned away with an error (HTTP): both counters."""
        self.reject(code)
        self.error(code)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServerCollector:
    def __init__(self, ctx: "ServerContext") -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        yield GaugeMetricFamily("parakeet_connected_streams", "Open connections that hold a stream",
                                value=len(ctx.sessions))
        yield GaugeMetricFamily("parakeet_max_streams", "Stream slots (--max-num-streams)",
                                value=ctx.config.max_num_streams)
        yield GaugeMetricFamily("parakeet_draining", "1 while the server drains after SIGTERM",
                                value=float(ctx.draining))
        stats = ctx.engine.stats_snapshot()
        yield GaugeMetricFamily("parakeet_active_streams", "Engine stream slots in use", value=stats.active_streams)
        yield GaugeMetricFamily("parakeet_free_slots", "Engine stream slots free", value=stats.free_slots)
        yield _histogram("parakeet_step_duration_seconds", "Wall time of one batched model step",
                         stats.step_seconds)
        yield _histogram("parakeet_batch_size", "Streams decoded together in one model step", stats.batch_size)
        yield _histogram("parakeet_decode_lag_seconds",
                         "Per stream and step: seconds from the arrival of the audio the newest decoded frame "
                         "needs to the end of the step that decoded it", stats.decode_lag)
        audio = stats.audio_seconds
        yield CounterMetricFamily("parakeet_audio_seconds", "Seconds of stream audio decoded", value=audio)
        yield CounterMetricFamily("parakeet_streams_opened", "Streams the engine opened", value=stats.streams_opened)
        yield CounterMetricFamily("parakeet_step_failures", "Batched model steps that failed (their streams got "
                                  "an internal error)", value=stats.step_failures)
        yield CounterMetricFamily("parakeet_sink_failures", "Streams dropped because delivering their events "
                                  "failed", value=stats.sink_failures)
        yield GaugeMetricFamily("parakeet_max_batch_size", "The largest batch stepped since start",
                                value=stats.max_batch_size)
        yield GaugeMetricFamily(
            "parakeet_real_time_factor",
            "Model step seconds per second of audio decoded, since start (below 1: faster than real time)",
            value=stats.step_seconds.total / audio if audio > 0 else 0.0)


def _histogram(name: str, doc: str, hist: "Buckets") -> HistogramMetricFamily:
    cumulative: list[Any] = []
    running = 0
    for bound, count in zip([*(repr(float(b)) for b in hist.bounds), "+Inf"], hist.counts):
        running += count
        cumulative.append((bound, running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=hist.total)
