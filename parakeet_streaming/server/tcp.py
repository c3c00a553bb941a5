"""Raw TCP transport: newline-delimited JSON (UTF-8) in both directions.

With API keys configured the first line must be `{"type":"auth","token":"KEY"}`; it is checked
before a stream is opened (and before `hello`).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.security import auth_line_token
from parakeet_streaming.server.session import Link, peer_name, serve_connection
from parakeet_streaming.server.wire import OVERSIZED, Message, Request

log = logging.getLogger("parakeet_streaming.tcp")

AUTH_SECONDS = 30.0  # wait for the auth line when --idle-timeout is 0 (a silent socket must not linger)
AUTH_HINT = 'the first line must be {"type":"auth","token":"<API key>"} with a valid key'


class LineReader:
    """Splits the byte stream into lines no longer than `cap` bytes, each a text message (str;
    bytes that are not UTF-8 kept as surrogate escapes, so the protocol reports them in-band).

    A line over the cap yields OVERSIZED once; the framing is then lost, so everything after it is
    discarded until EOF. Blank lines are skipped. Returns None at EOF or on a connection error.
    `skip_auth`: a first line that is an auth line is passed over (a server without keys serves a
    client that sends one anyway as if it had not).
    """

    def __init__(self, reader: asyncio.StreamReader, cap: int, skip_auth: bool = False) -> None:
        self._reader, self._cap = reader, cap
        self._lost = False
        self._skip_auth = skip_auth

    async def recv(self) -> Message | None:
        line = await self._line()
        if self._skip_auth:
            self._skip_auth = False
            if isinstance(line, str) and auth_line_token(line) is not None:
                line = await self._line()
        return line

    async def _line(self) -> Message | None:
        if self._lost:
            return await self._discard()
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                self._lost = True
                return OVERSIZED
            except asyncio.IncompleteReadError as exc:  # EOF; a last unterminated line still counts
                return _text(exc.partial) if exc.partial.strip() else None
            except (ConnectionError, OSError):
                return None
            if len(line) - 1 > self._cap:
                self._lost = True
                return OVERSIZED
            if line.strip():
                return _text(line.rstrip(b"\r\n"))

    async def _discard(self) -> None:
        try:
            while await self._reader.read(1 << 16):
                pass
        except (ConnectionError, OSError):
            pass
        return None


async def serve_tcp(ctx: ServerContext, host: str, port: int,
                    ssl_context: ssl.SSLContext | None = None) -> asyncio.Server:
    cap = ctx.config.max_message_bytes

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _handle(ctx, LineReader(reader, cap, skip_auth=not ctx.auth.required), writer)
        except Exception:  # noqa: BLE001 - one connection must never take the server down
            log.exception("tcp connection failed")
        finally:
            await close_writer(writer)

    # limit: readuntil gives up (LimitOverrunError) once this many bytes hold no newline.
    return await asyncio.start_server(handler, host, port, limit=cap + 2, ssl=ssl_context)


async def _handle(ctx: ServerContext, lines: LineReader, writer: asyncio.StreamWriter) -> None:
    async def send(text: str) -> None:
        writer.write(text.encode("utf-8") + b"\n")
        await writer.drain()

    token = await _auth_line(ctx, lines) if ctx.auth.required else None
    link = Link(lines.recv, send, request=Request(transport="tcp"), peer=peer_name(writer.get_extra_info("peername")))
    await serve_connection(ctx, link, token=token, unauthorized=AUTH_HINT)


def _text(line: bytes) -> str:
    return line.decode("utf-8", "surrogateescape")


async def _auth_line(ctx: ServerContext, lines: LineReader) -> str | None:
    """The token of the first line, if it is an auth line in time."""
    idle = ctx.config.idle_timeout
    try:
        line = await asyncio.wait_for(lines.recv(), idle if idle and idle > 0 else AUTH_SECONDS)
    except asyncio.TimeoutError:
        return None
    return auth_line_token(line) if isinstance(line, str) else None


async def close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - already closed or reset
        pass
