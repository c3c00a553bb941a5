"""The browser demo on the HTTP port: `/` is a page that streams the microphone to the WebSocket
port (AudioWorklet -> 16 kHz pcm16 binary frames) and shows the live partial and utterance lines.
The page finds the WebSocket port in a <meta> tag (`--ws-port`); `/?ws=ws://host:port/` overrides
it, and `/?token=KEY` is passed on to the WebSocket for servers with API keys (the page itself
is public)."""
from __future__ import annotations

from importlib import resources

from aiohttp import web

from parakeet_streaming.server.context import ServerContext

_FILES = {"/demo.js": "application/javascript", "/capture-worklet.js": "application/javascript",
          "/favicon.svg": "image/svg+xml"}
PUBLIC_PATHS = ("/", *_FILES)  # static content: no API key needed to load it (the WebSocket still asks)


def _static(name: str) -> str:
    return resources.files("parakeet_streaming.server").joinpath("static", name).read_text("utf-8")


def add_routes(app: web.Application, ctx: ServerContext) -> None:
    async def index(request: web.Request) -> web.Response:
        html = _static("demo.html").replace("{{WS_PORT}}", str(int(ctx.config.ws_port)))
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    app.router.add_get("/", index)
    for path, content_type in _FILES.items():
        app.router.add_get(path, _file_handler(path.lstrip("/"), content_type))


def _file_handler(name: str, content_type: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=_static(name), content_type=content_type, charset="utf-8")

    return handler
