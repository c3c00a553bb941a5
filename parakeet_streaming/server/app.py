"""The server process: the HTTP port first (probes answer during the load), then the model, the
engine and the streaming listeners; drain on a signal."""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import EngineStats, EngineStopped
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
        await self.start_http()
        try:
            await self.start_streaming()
        except StartupError:
            await self._http.close()
            raise

    async def start_http(self) -> None:
        """The HTTP port alone: it can answer probes while the model loads."""
        c = self.config
        try:
            self._http = await serve_http(self.ctx, c.host, c.http_port, self._ssl)
        except OSError as exc:
            raise StartupError(f"cannot listen on the HTTP port: {exc}") from exc
        self.ports["http"] = self._http.port

    async def start_streaming(self) -> None:
        """The TCP, WebSocket and status listeners; StartupError (none left open) if one cannot bind."""
        c, tls = self.config, self._ssl
        try:
            self._servers["tcp"] = await serve_tcp(self.ctx, c.host, c.port, tls)
            self._servers["ws"] = await serve_ws(self.ctx, c.host, c.ws_port, tls)
            self._servers["status"] = await serve_status(self.ctx, c.host, c.status_port, tls)
        except OSError as exc:
            for server in self._servers.values():
                server.close()
                await asyncio.wait_for(server.wait_closed(), 5)
            self._servers.clear()
            raise StartupError(f"cannot listen: {exc}") from exc
        self.ports.update({name: server.sockets[0].getsockname()[1] for name, server in self._servers.items()})

    def attach(self, engine: EngineAPI, model: "ModelInfo") -> None:
        """The loaded model's engine takes the place of the LoadingEngine; readiness follows it."""
        self.engine = self.ctx.engine = engine
        self.model = self.ctx.model = model
        self.ctx.loading = None

    def stop_accepting(self) -> None:
        """Refuse new streams (readiness turns 503); open streams carry on, the HTTP port stays up."""
        self.ctx.draining = True
        for name in ("tcp", "status"):
            if name in self._servers:
                self._servers[name].close()
        if "ws" in self._servers:
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
        if "ws" in self._servers:
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


def load(config: ServerConfig, on_phase: Any = None) -> Any:
    """The model the flags name (`--model` wins over `--model-size`)."""
    from parakeet_streaming.model.loader import load_model

    return load_model(config.model or config.model_size, load_format=config.load_format, device=config.device,
                      dtype=config.dtype, att_context_size=config.att_context_size, revision=config.revision,
                      on_phase=on_phase)


class LoadingEngine:
    """Stands in for the engine while the model loads (EngineAPI): no slots, no streams, empty stats.
    Only the HTTP port is open then; its probes, metrics and routes see this."""

    def __init__(self, max_num_streams: int) -> None:
        self.max_num_streams = max_num_streams
        self._ids = itertools.count()

    phase = "warming_up"
    num_active = 0
    num_free = 0

    def start(self) -> None:
        pass

    def shutdown(self, timeout: float = 10.0) -> None:
        pass

    def new_stream_id(self) -> int:
        return next(self._ids)

    def open_stream(self, sink: Any, stream_id: int | None = None) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_exception(EngineStopped("the model is still loading"))
        return future

    def send_audio(self, stream_id: int, samples: Any, final: bool = False) -> None:
        pass

    def finalize(self, stream_id: int) -> None:
        pass

    def flush(self, stream_id: int) -> None:
        pass

    def abort(self, stream_id: int) -> None:
        pass

    def set_endpointing(self, stream_id: int, silence_ms: int) -> None:
        pass

    def compile_keyterms(self, keyterms: Any) -> None:
        return None  # no tokenizer yet; streams are refused during the load anyway

    def set_keyterms(self, stream_id: int, compiled: Any) -> None:
        pass

    def stats_snapshot(self) -> EngineStats:
        return EngineStats()


def build_engine(model: Any, config: ServerConfig, threads: int | None = None) -> Any:
    """The engine for `model`; `threads` (from engine.threads.reserve_for_engine) or --threads."""
    from parakeet_streaming.endpointing import resolve
    from parakeet_streaming.engine.engine import Engine
    from parakeet_streaming.model.boosting import KeytermError
    from parakeet_streaming.preflight import PreflightError, read_keyterms_file

    endpoint = resolve(config.endpoint_silence_ms, config.endpoint_signal, config.vad_threshold,
                       model_has_eou=model.tokenizer.eou_id is not None)
    try:
        return Engine(model, config.max_num_streams, device=config.device, endpoint=endpoint,
                      keyterms=read_keyterms_file(config.keyterms_file), threads=threads or config.threads,
                      cuda_graphs=config.cuda_graphs)
    except KeytermError as exc:
        raise PreflightError(f"--keyterms-file {config.keyterms_file}: {exc} (write key terms as the "
                             "model writes them, see docs/keyterms.md)") from exc


async def serve(config: ServerConfig, model: Any | None = None) -> int:
    """Run until SIGINT/SIGTERM, then drain; returns the exit code. The HTTP port comes up first:
    while the model loads, /healthz answers 200 and /readyz 503 {"status": "loading", "phase": ...};
    a signal during the load ends the process at once."""
    app = App(config, LoadingEngine(config.max_num_streams))  # bad key or TLS files fail here, before the load
    app.ctx.loading = "starting"
    stop = asyncio.create_task(_wait_for_signal())
    await asyncio.sleep(0)  # the signal handlers are installed
    engine, drained = None, False
    try:
        await app.start_http()
        log.info("http %s:%d is up: /healthz answers, /readyz says 'loading' until the model is ready",
                 config.host, app.ports["http"])
        from parakeet_streaming.engine import threads

        engine_threads = threads.reserve_for_engine(config.threads)  # this thread runs the transports
        if model is None:
            model = await _load_unless_stopped(config, app.ctx, stop, engine_threads)
        if model is None:
            log.info("stopped while loading the model")
            return 0
        engine = build_engine(model, config, engine_threads)
        engine.start()
        app.attach(engine, ModelInfo.of(model, config.instance_name))
        await app.start_streaming()
        print(app.banner(config.device), flush=True)
        announce = asyncio.create_task(_announce_ready(engine))
        await stop
        announce.cancel()
        await app.drain(config.drain_seconds)
        drained = True
    finally:
        stop.cancel()
        if not drained:  # stopped or failed during the start: close what is open
            await app.stop(drain_seconds=0)
        if engine is not None:
            await asyncio.to_thread(engine.shutdown)
    return 0


async def _announce_ready(engine: EngineAPI, poll_s: float = 0.1) -> None:
    """One line when the warm-up step is done (or failed): /readyz turns 200 then."""
    log.info("warming up: one step through the model before taking streams")
    while engine.phase == "warming_up":
        await asyncio.sleep(poll_s)
    if engine.phase == "ready":
        log.info("ready for streams")
    else:
        log.warning("the warm-up step ended with the engine %s", engine.phase)


async def _load_unless_stopped(config: ServerConfig, ctx: ServerContext, stop: asyncio.Task,
                               threads: int) -> Any | None:
    """The model, loaded on a daemon thread (a signal can end the process mid-load) that uses
    `threads` cores and exits after; None if stopped. Each phase of the load shows in /readyz."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def phase(text: str) -> None:
        try:
            loop.call_soon_threadsafe(setattr, ctx, "loading", text)
        except RuntimeError:  # the loop is gone
            pass

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def work() -> None:
        from parakeet_streaming.engine.threads import use

        use(threads)
        try:
            outcome = (load(config, on_phase=phase), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is gone: the server was stopped during the load
            pass

    threading.Thread(target=work, name="model-load", daemon=True).start()
    await asyncio.wait({done, stop}, return_when=asyncio.FIRST_COMPLETED)
    return done.result() if done.done() else None


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
