"""Raw TCP transport: newline-delimited JSON (UTF-8) in both directions.

With API keys configured the first line must be `{"type":"auth","token":"KEY"}`; it is checked
before a stream is opened (and before `hello`).
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.security import auth_line_token
from parakeet_streaming.server.session import OVERSIZED, Recv, Send, ServerContext, Session, StreamOptions

log = logging.getLogger("parakeet_streaming.tcp")

AUTH_SECONDS = 30.0  # wait for the auth line when --idle-timeout is 0 (a silent socket must not linger)


class LineReader:
    """Splits the byte stream into lines no longer than `cap` bytes.

    A line over the cap yields OVERSIZED once; the framing is then lost, so everything after it is
    discarded until EOF. Blank lines are skipped. Returns None at EOF or on a connection error.
    """

    def __init__(self, reader: asyncio.StreamReader, cap: int) -> None:
        self._reader, self._cap = reader, cap
        self._lost = False

    async def recv(self) -> bytes | object | None:
        if self._lost:
            return await self._discard()
        while True:
            try:
                line = await self._reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                self._lost = True
                return OVERSIZED
            except asyncio.IncompleteReadError as exc:  # EOF; a last unterminated line still counts
                return exc.partial if exc.partial.strip() else None
            except (ConnectionError, OSError):
                return None
            if len(line) - 1 > self._cap:
                self._lost = True
                return OVERSIZED
            if line.strip():
                return line.rstrip(b"\r\n")

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
            await _handle(ctx, LineReader(reader, cap), writer)
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

    peername = writer.get_extra_info("peername")
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
    if ctx.auth.required and not await _authenticate(ctx, lines, send):
        return
    recv = lines.recv if ctx.auth.required else _skip_auth_line(lines.recv)
    options = StreamOptions(half_close_ok=True, bytes_are_json=True)
    await Session(ctx, recv, send, options=options, peer=peer, transport="tcp").run()


def _skip_auth_line(recv: Recv) -> Recv:
    """Without keys, a client that sends an auth line anyway is served as if it had not."""
    first = True

    async def wrapped() -> bytes | object | None:
        nonlocal first
        line = await recv()
        if first:
            first = False
            if isinstance(line, bytes) and auth_line_token(line) is not None:
                return await recv()
        return line

    return wrapped


async def _authenticate(ctx: ServerContext, lines: LineReader, send: Send) -> bool:
    """Read the auth line; on a wrong or missing key send `unauthorized` and return False."""
    idle = ctx.config.idle_timeout
    try:
        line = await asyncio.wait_for(lines.recv(), idle if idle and idle > 0 else AUTH_SECONDS)
    except asyncio.TimeoutError:
        line = None
    if isinstance(line, bytes) and ctx.auth.check(auth_line_token(line)):
        return True
    ctx.metrics.reject(proto.UNAUTHORIZED)
    ctx.metrics.error(proto.UNAUTHORIZED)
    try:
        await send(proto.dumps(proto.error(proto.UNAUTHORIZED, "the first line must be "
                                           '{"type":"auth","token":"<API key>"} with a valid key', fatal=True)))
    except (ConnectionError, OSError):
        pass
    return False


async def close_writer(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - already closed or reset
        pass
