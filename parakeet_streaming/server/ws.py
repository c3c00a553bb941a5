"""WebSocket transport: text frames are JSON messages, binary frames raw audio (native protocol).

The request path picks the wire protocol (server/routes.py; any other path: native) and its query
string the stream's defaults, e.g. `?encoding=mulaw&sample_rate=8000&timestamps=true`. With API keys
configured the upgrade request must carry `Authorization: Bearer KEY` or `?token=KEY` (checked before
a stream is opened).
"""
from __future__ import annotations

import logging
import ssl

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request as HttpRequest
from websockets.http11 import Response

from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.routes import upgrade_refusal
from parakeet_streaming.server.session import Link, peer_name, serve_connection
from parakeet_streaming.server.wire import Request

log = logging.getLogger("parakeet_streaming.ws")

# Messages between the cap and this many times the cap get a `message_too_large` error from the
# protocol; beyond it websockets itself closes the connection (code 1009) without buffering more.
_HARD_CAP_FACTOR = 4


async def serve_ws(ctx: ServerContext, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> Server:
    async def handler(conn: ServerConnection) -> None:
        try:
            await serve_connection(ctx, _link(conn))
        except Exception:  # noqa: BLE001 - one connection must never take the server down
            log.exception("websocket connection failed")

    def process_request(conn: ServerConnection, request: HttpRequest) -> Response | None:
        refusal = upgrade_refusal(Request(request.path, request.headers, "ws"), ctx)
        if refusal is None:
            return None
        ctx.metrics.refused(refusal.code)
        response = conn.respond(refusal.status, refusal.body.decode("utf-8", "replace"))
        for name, value in refusal.headers:
            response.headers[name] = value
        return response

    cap = ctx.config.max_message_bytes
    return await serve(handler, host, port, max_size=cap * _HARD_CAP_FACTOR, compression=None, ssl=ssl_context,
                       process_request=process_request)


def _link(conn: ServerConnection) -> Link:
    async def recv() -> str | bytes | None:
        try:
            return await conn.recv()
        except ConnectionClosed:
            return None

    async def close(code: int, reason: str) -> None:
        await conn.close(code, reason)

    request = Request(conn.request.path, conn.request.headers, "ws") if conn.request else Request(transport="ws")
    return Link(recv, conn.send, close, request, peer_name(conn.remote_address))
