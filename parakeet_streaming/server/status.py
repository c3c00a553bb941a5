"""Status port: on connect the server writes one JSON line and closes."""
from __future__ import annotations

import asyncio
import ssl
from typing import Any

from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.tcp import close_writer


def status_message(ctx: ServerContext) -> dict[str, Any]:
    return proto.status(ctx.connected_streams, max_num_streams=ctx.config.max_num_streams, model=ctx.model.name,
                        num_active=ctx.engine.num_active, num_free=ctx.engine.num_free)


async def serve_status(ctx: ServerContext, host: str, port: int,
                       ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(proto.dumps(status_message(ctx)).encode("utf-8") + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            await close_writer(writer)

    return await asyncio.start_server(handler, host, port, ssl=ssl_context)
