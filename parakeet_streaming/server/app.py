"""The server process: load the model, start the engine and the listeners, drain on a signal."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.interface import EngineAPI
from parakeet_streaming.server.context import ModelInfo, ServerContext
from parakeet_streaming.server.http import HttpServer, serve_http
from parakeet_streaming.server.security import Authenticator, StartupError, ssl_context
from parakeet_streaming.server.status import serve_status
from parakeet_streaming.server.tcp import serve_tcp
from parakeet_streaming.server.ws import serve_ws

log = logging.getLogger("parakeet_streaming.server")

DRAIN_SECONDS = 10.0  # how long finalized streams get to deliver their final result on shutdown


@dataclass
class App:
    """The listeners (TCP, WebSocket, status, HTTP) around one engine. Ports given as 0 are chosen
    by the OS (tests)."""

    config: ServerConfig
    engine: EngineAPI
    model: ModelInfo = ModelInfo()
    ctx: ServerContext = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)
    _servers: dict[str, Any] = field(init=False, default_factory=dict)
    _http: HttpServer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.ctx = ServerContext(self.engine, self.config, self.model, auth=Authenticator.from_config(self.config))
        self.ctx.metrics.watch(self.ctx)
        self._ssl = ssl_context(self.config)

    async def start(self) -> None:
        """Open every listener; StartupError (and nothing left open) if a port cannot be bound."""
        c, tls = self.config, self._ssl
        try:
            self._servers["tcp"] = await serve_tcp(self.ctx, c.host, c.port, tls)
            self._servers["ws"] = await serve_ws(self.ctx, c.host, c.ws_port, tls)
            self._servers["status"] = await serve_status(self.ctx, c.host, c.status_port, tls)
            self._http = await serve_http(self.ctx, c.host, c.http_port, tls)
        except OSError as exc:
            for server in self._servers.values():
                server.close()
                await asyncio.wait_for(server.wait_closed(), 5)
            raise StartupError(f"cannot listen: {exc}") from exc
        self.ports = {name: server.sockets[0].getsockname()[1] for name, server in self._servers.items()}
        self.ports["http"] = self._http.port

    def stop_accepting(self) -> None:
        """Refuse new streams (readiness turns 503); open streams carry on, the HTTP port stays up."""
        self.ctx.draining = True
        for name in ("tcp", "status"):
            self._servers[name].close()
        self._servers["ws"].server.close()  # the listening socket only; connections stay open

    async def drain(self, seconds: float) -> None:
        """Graceful shutdown: stop accepting, let open streams end on their own for up to `seconds`,
        then stop() the rest (they are finalized and still get their final result)."""
        self.stop_accepting()
        log.info("shutting down: %d open streams get up to %g s to finish", len(self.ctx.sessions), seconds)
        await self._wait_for_sessions(seconds)
        await self.stop()

    async def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Stop accepting, finalize every open stream, wait (bounded) for the finals, close all."""
        self.stop_accepting()
        for session in list(self.ctx.sessions):
            session.stop()
        await self._wait_for_sessions(drain_seconds)
        if self.ctx.sessions:
            log.warning("%d streams did not finish within %.0f s; closing them", len(self.ctx.sessions),
                        drain_seconds)
        self._servers["ws"].close()
        await asyncio.wait_for(self._servers["ws"].wait_closed(), 5)
        if self._http is not None:
            await self._http.close()

    async def _wait_for_sessions(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.ctx.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def banner(self, device: str) -> str:
        c = self.config
        return (f"parakeet-server: model {self.model.name} on {device} ({c.dtype}), "
                f"{c.max_num_streams} stream slots, chunk {self.model.chunk_ms} ms | "
                f"tcp {c.host}:{self.ports['tcp']}  ws {c.host}:{self.ports['ws']}  "
                f"status {c.host}:{self.ports['status']}  http {c.host}:{self.ports['http']}"
                f"{'  (TLS)' if self._ssl else ''}{'  (API keys)' if self.ctx.auth.required else ''}")


def load(config: ServerConfig) -> Any:
    """The model the flags name (`--model` wins over `--model-size`)."""
    from parakeet_streaming.model.loader import load_model

    return load_model(config.model or config.model_size, load_format=config.load_format, device=config.device,
                      dtype=config.dtype, att_context_size=config.att_context_size, revision=config.revision)


def build_engine(model: Any, config: ServerConfig) -> Any:
    from parakeet_streaming.endpointing import resolve
    from parakeet_streaming.engine.engine import Engine

    endpoint = resolve(config.endpoint_silence_ms, config.endpoint_signal, config.vad_threshold,
                       model_has_eou=model.tokenizer.eou_id is not None)
    return Engine(model, config.max_num_streams, device=config.device, endpoint=endpoint)


def app_for(model: Any, engine: EngineAPI, config: ServerConfig) -> App:
    return App(config, engine, ModelInfo.of(model))


async def serve(config: ServerConfig, model: Any | None = None) -> int:
    """Run until SIGINT/SIGTERM, then drain; returns the exit code."""
    Authenticator.from_config(config), ssl_context(config)  # bad flags fail before the model loads
    model = model if model is not None else load(config)
    engine = build_engine(model, config)
    engine.start()
    app = app_for(model, engine, config)
    try:
        await app.start()
        print(app.banner(config.device), flush=True)
        await _wait_for_signal()
        await app.drain(config.drain_seconds)
    finally:
        await asyncio.to_thread(engine.shutdown)
    return 0


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> int:
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(config))
    except StartupError as exc:
        print(f"parakeet-server: {exc}", file=sys.stderr)
        return 2
