"""A replica's Prometheus metrics through Ray's metrics export (needs `ray[serve]`).

Every few seconds the server's own registry (server/metrics.py) is read and each sample is set on a
`ray.serve.metrics.Gauge` of the same name, counters and histogram series (`_bucket{le}`, `_sum`,
`_count`) included: a Ray counter would be renamed (`_total` appended) and can only be advanced, while
a gauge carries the cumulative value under the server's own name, and PromQL's rate() and
histogram_quantile() read it the same. Serve tags each with `application`, `deployment` and
`replica`; Ray's exporter prefixes `ray_`, so `parakeet_active_streams` is scraped as
`ray_parakeet_active_streams{replica="..."}` from each node's metrics export port (docs/scaling.md).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry
from ray.serve import metrics as serve_metrics

log = logging.getLogger("parakeet_streaming.ray_metrics")

INTERVAL_S = 5.0


class RayMetricsBridge:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._gauges: dict[str, Any] = {}

    def publish(self) -> None:
        """Copy one reading of the registry to Ray's metrics."""
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # prometheus-client's creation timestamps
                tags = {k: str(v) for k, v in sample.labels.items()}
                if sample.name not in self._gauges:
                    self._gauges[sample.name] = serve_metrics.Gauge(
                        sample.name, description=family.documentation, tag_keys=tuple(sorted(tags)))
                self._gauges[sample.name].set(sample.value, tags=tags or None)

    def start(self, interval: float = INTERVAL_S) -> threading.Event:
        """Publish every `interval` seconds on a daemon thread until the returned event is set."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.publish()
                except Exception:  # noqa: BLE001 - metrics must never take the replica down
                    log.exception("publishing metrics to Ray failed")

        threading.Thread(target=loop, name="parakeet-ray-metrics", daemon=True).start()
        return stop
