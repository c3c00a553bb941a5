"""Low-latency streaming speech recognition server for NVIDIA's cache-aware FastConformer-RNNT models."""

__version__ = "0.1.0"
