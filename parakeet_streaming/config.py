"""Configuration dataclasses: the server's flags and the model's architecture.

`ServerConfig` mirrors the `parakeet-server serve` flags. `ModelConfig` is parsed from a NeMo
`model_config.yaml` (see `ModelConfig.from_nemo`), so any checkpoint of the cache-aware
FastConformer-RNNT family builds from its own description.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8765  # raw TCP, newline-delimited JSON
    ws_port: int = 8000
    status_port: int = 8050
    http_port: int | None = None  # health/metrics/demo; off unless given
    device: str = "cpu"
    dtype: str = "float32"
    model_size: str = "small"
    model: str | None = None  # path to .nemo / folder, or a named model; overrides model_size
    load_format: str = "auto"  # auto | dummy
    revision: str | None = None
    att_context_size: tuple[int, int] | None = None
    sample_rate: int = 16000  # the rate clients send unless they declare another
    max_num_streams: int = 64
    max_stream_seconds: float = 3600.0
    idle_timeout: float = 30.0  # seconds without any client message before the stream is closed
    max_message_bytes: int = 8 * 1024 * 1024
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)
