"""WebSocket transport: one JSON object per text frame; binary frames carry raw audio.

Any request path is accepted. Query parameters set the stream's defaults:
`?encoding=mulaw&sample_rate=8000&timestamps=true&endpoint_silence_ms=300`. With API keys configured
the upgrade request must carry `Authorization: Bearer KEY` or `?token=KEY` (checked before a stream
is opened).
"""
from __future__ import annotations

import logging
import ssl
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from parakeet_streaming.audio import ENCODINGS
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.security import bearer_token
from parakeet_streaming.server.session import ServerContext, Session, StreamOptions

log = logging.getLogger("parakeet_streaming.ws")

# Messages between the cap and this many times the cap get a `message_too_large` error from the
# session; beyond it websockets itself closes the connection (code 1009) without buffering more.
_HARD_CAP_FACTOR = 4


def options_from_path(path: str) -> StreamOptions:
    """Stream defaults from the request's query string. Raises ProtocolError."""
    query = parse_qs(urlsplit(path).query)
    opts = StreamOptions()
    if "encoding" in query:
        encoding = query["encoding"][-1]
        if encoding not in ENCODINGS:
            raise proto.ProtocolError(proto.UNSUPPORTED_ENCODING, f"unsupported encoding {encoding!r} "
                                      f"(supported: {', '.join(ENCODINGS)})", fatal=True)
        opts.encoding = encoding
    try:
        if "timestamps" in query:
            opts.timestamps = bool(proto.parse_flag("timestamps", query["timestamps"][-1]))
        if "endpoint_silence_ms" in query:
            opts.endpoint_silence_ms = proto.parse_silence_ms(query["endpoint_silence_ms"][-1])
    except proto.ProtocolError as exc:
        raise proto.ProtocolError(exc.code, exc.message, fatal=True) from exc
    if "sample_rate" in query:
        try:
            opts.sample_rate = proto.parse_sample_rate(query["sample_rate"][-1])
        except proto.ProtocolError as exc:
            raise proto.ProtocolError(exc.code, exc.message, fatal=True) from exc
    return opts


async def serve_ws(ctx: ServerContext, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> Server:
    async def handler(conn: ServerConnection) -> None:
        try:
            await _handle(ctx, conn)
        except Exception:  # noqa: BLE001 - one connection must never take the server down
            log.exception("websocket connection failed")

    cap = ctx.config.max_message_bytes
    return await serve(handler, host, port, max_size=cap * _HARD_CAP_FACTOR, compression=None, ssl=ssl_context)


async def _handle(ctx: ServerContext, conn: ServerConnection) -> None:
    async def recv() -> str | bytes | None:
        try:
            return await conn.recv()
        except ConnectionClosed:
            return None

    async def send(text: str) -> None:
        await conn.send(text)

    path = conn.request.path if conn.request else "/"
    if not ctx.auth.check(bearer_token(conn.request.headers if conn.request else {}, path)):
        ctx.metrics.reject(proto.UNAUTHORIZED)
        ctx.metrics.error(proto.UNAUTHORIZED)
        await send(proto.dumps(proto.error(proto.UNAUTHORIZED, "missing or wrong API key", fatal=True)))
        await conn.close(1008, "unauthorized")
        return
    try:
        options = options_from_path(path)
    except proto.ProtocolError as exc:
        ctx.metrics.error(exc.code)
        await send(proto.dumps(proto.error_from(exc)))
        return
    peer = _peer(conn)
    await Session(ctx, recv, send, options=options, peer=peer, transport="ws").run()


def _peer(conn: ServerConnection) -> str:
    addr = conn.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
