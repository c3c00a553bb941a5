"""The HTTP port (aiohttp): health, readiness, Prometheus metrics, and the home of HTTP features.

Adding routes: write the handlers in their own module with an `add_routes(app: web.Application,
ctx: ServerContext)` function, and call it from `build_http_app` below (the one place routes are
registered). Handlers get the `ServerContext` (engine, config, model, metrics, sessions, `draining`,
`readiness()`) explicitly, e.g. closed over in `add_routes`. Every path not in `PUBLIC_PATHS`
requires the API key when keys are configured (`_auth_middleware`: `Authorization: Bearer KEY` or
`?token=KEY`); add a path there only if it must work without a key, as probes and scrapers do.
Static files: `app.router.add_static`.
New work should refuse to start while `ctx.draining` is true (503), as the streaming ports do.
"""
from __future__ import annotations

import logging
import ssl
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server import demo, transcriptions
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.metrics import CONTENT_TYPE
from parakeet_streaming.server.security import bearer_token

log = logging.getLogger("parakeet_streaming.http")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", *demo.PUBLIC_PATHS})
SHUTDOWN_SECONDS = 5.0  # at exit, how long requests still in progress may take

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_http_app(ctx: ServerContext) -> web.Application:
    app = web.Application(middlewares=[_auth_middleware(ctx)])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ready, status = ctx.readiness()
        body = {"status": status} if ctx.loading is None else {"status": status, "phase": ctx.loading}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=ctx.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    transcriptions.add_routes(app, ctx)
    demo.add_routes(app, ctx)
    return app


def _auth_middleware(ctx: ServerContext):
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or ctx.auth.check(bearer_token(request.headers, request.path_qs)):
            return await handler(request)
        ctx.metrics.refused(proto.UNAUTHORIZED)
        log.info("http %s %s refused: 401 unauthorized (%s)", request.method, request.path, request.remote,
                 extra={"status": 401, "code": proto.UNAUTHORIZED})
        body = proto.error(proto.UNAUTHORIZED, "missing or wrong API key", fatal=True)
        return web.json_response(body, status=401, headers={"WWW-Authenticate": "Bearer"})

    return auth


class _AccessLogger(AbstractAccessLogger):
    """Debug-level access log without the query string (it may carry ?token=)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.debug("%s %s %s %d %.1f ms", request.remote, request.method, request.path,
                          response.status, time * 1000)


class HttpServer:
    """The running HTTP listener; `close()` stops it (the App closes it last, so probes see a drain)."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner, self.port = runner, port

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_http(ctx: ServerContext, host: str, port: int,
                     ssl_context: ssl.SSLContext | None = None) -> HttpServer:
    runner = web.AppRunner(build_http_app(ctx), access_log_class=_AccessLogger, access_log=log,
                           handle_signals=False, shutdown_timeout=SHUTDOWN_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    except BaseException:
        await runner.cleanup()
        raise
    return HttpServer(runner, runner.addresses[0][1])
