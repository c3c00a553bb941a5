"""ASGI transport: the streaming protocols over WebSocket, and the probes, for any ASGI server.

`asgi_app(ctx)` serves, on one engine's `ServerContext`:
- WebSocket at any path: the wire protocol is picked by path (server/routes.py), exactly as on the
  websockets port; each connection is handed to `serve_connection` (the stream core).
- HTTP `GET /healthz`, `/readyz`, `/metrics` (the answers of the HTTP port, server/http.py), and
  OpenAI's `POST /v1/audio/transcriptions` and `GET /v1/models` (server/transcriptions.py, the same
  route as on the HTTP port; the multipart body is parsed with python-multipart). Every path but the
  probes needs the API key when keys are configured, as on the HTTP port.

Mount it in a Starlette/FastAPI app (`app.mount("/asr", asgi_app(ctx))`) or run it as the ingress of a
Ray Serve replica (ray_serve.py). `ctx.model.instance`, when set, names the server in the
`x-parakeet-instance` header of every response (and in each stream's greeting), so a client behind a
load balancer can see which replica it reached.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, MutableMapping

from websockets.datastructures import Headers

from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server import transcriptions
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.http import PUBLIC_PATHS
from parakeet_streaming.server.metrics import CONTENT_TYPE
from parakeet_streaming.server.security import bearer_token
from parakeet_streaming.server.transcriptions import FormReader, Reply, RequestError
from parakeet_streaming.server.routes import UpgradeRefusal, upgrade_refusal
from parakeet_streaming.server.session import Link, serve_connection
from parakeet_streaming.server.wire import Request

log = logging.getLogger("parakeet_streaming.asgi")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
SendASGI = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, SendASGI], Awaitable[None]]

INSTANCE_HEADER = "x-parakeet-instance"


def asgi_app(ctx: ServerContext) -> ASGIApp:
    instance = ctx.model.instance
    extra = [(INSTANCE_HEADER.encode(), instance.encode())] if instance else []

    async def app(scope: Scope, receive: Receive, send: SendASGI) -> None:
        if scope["type"] == "websocket":
            await _websocket(ctx, scope, receive, send, extra)
        elif scope["type"] == "http":
            await _http(ctx, scope, receive, send, extra)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    return app


def local_path(scope: Scope) -> str:
    """The path below the mount point: the one that picks the protocol or the route."""
    path, root = scope["path"], scope.get("root_path", "").rstrip("/")
    if root and (path == root or path.startswith(root + "/")):  # the prefix stays in `path` (ASGI spec)
        path = path[len(root):] or "/"
    return path


def request_of(scope: Scope) -> Request:
    """The connection's path below the mount point, query and headers."""
    query = scope.get("query_string", b"").decode("latin-1")
    path = local_path(scope)
    headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", []))
    return Request(path + (f"?{query}" if query else ""), headers, "asgi")


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


async def _websocket(ctx: ServerContext, scope: Scope, receive: Receive, send: SendASGI,
                     extra: list[tuple[bytes, bytes]]) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    request = request_of(scope)
    refusal = upgrade_refusal(request, ctx)
    if refusal is not None:
        ctx.metrics.refused(refusal.code)
        await _deny(scope, send, refusal, extra)
        return
    await send({"type": "websocket.accept", "headers": extra})
    closed = False

    async def recv() -> str | bytes | None:
        nonlocal closed
        if closed:
            return None
        message = await receive()
        if message["type"] == "websocket.disconnect":
            closed = True
            return None
        text = message.get("text")
        return text if text is not None else (message.get("bytes") or b"")

    async def send_data(data: str | bytes) -> None:
        if closed:
            raise ConnectionError("the client is gone")
        await send({"type": "websocket.send", "text": data} if isinstance(data, str)
                   else {"type": "websocket.send", "bytes": data})

    async def close(code: int, reason: str) -> None:
        nonlocal closed
        if not closed:
            closed = True
            await send({"type": "websocket.close", "code": code, "reason": reason})

    try:
        await serve_connection(ctx, Link(recv, send_data, close, request, _peer(scope)))
        await close(1000, "")
    except Exception:  # noqa: BLE001 - one connection must never take the server down
        log.exception("ASGI websocket connection failed")


async def _deny(scope: Scope, send: SendASGI, refusal: UpgradeRefusal, extra: list[tuple[bytes, bytes]]) -> None:
    """Refuse the upgrade with the protocol's HTTP status and body (the ASGI WebSocket Denial Response
    extension); a server without it can only answer 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008, "reason": refusal.code})
        return
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
    if not any(k == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": [*headers, *extra]})
    await send({"type": "websocket.http.response.body", "body": refusal.body})


async def _http(ctx: ServerContext, scope: Scope, receive: Receive, send: SendASGI,
                extra: list[tuple[bytes, bytes]]) -> None:
    path, method, peer = local_path(scope), scope["method"], _peer(scope)
    request = request_of(scope)
    if path not in PUBLIC_PATHS and not ctx.auth.check(bearer_token(request.headers, request.path)):
        ctx.metrics.refused(proto.UNAUTHORIZED)
        log.info("asgi %s %s refused: 401 unauthorized (%s)", method, path, peer,
                 extra={"status": 401, "code": proto.UNAUTHORIZED})
        body = _json(proto.error(proto.UNAUTHORIZED, "missing or wrong API key", fatal=True))
        reply = Reply(401, "application/json", body, headers=(("WWW-Authenticate", "Bearer"),))
    elif path == transcriptions.PATH and method == "POST":
        content_type = request.headers.get("content-type", "")
        reply = await transcriptions.transcribe(ctx, content_type, _multipart(content_type, receive), peer)
    elif method not in ("GET", "HEAD"):
        reply = Reply(405, "application/json", _json({"error": "method not allowed"}))
    elif path == "/healthz":
        reply = Reply(200, "application/json", _json({"status": "ok"}))
    elif path == "/readyz":
        ready, why = ctx.readiness()
        reply = Reply(200 if ready else 503, "application/json", _json({"status": why}))
    elif path == "/metrics":
        reply = Reply(200, CONTENT_TYPE, ctx.metrics.render())
    elif path == transcriptions.MODELS_PATH:
        reply = transcriptions.models(ctx)
    elif path.startswith(transcriptions.MODELS_PATH + "/"):
        reply = transcriptions.model(ctx, path[len(transcriptions.MODELS_PATH) + 1:])
    else:
        reply = Reply(404, "application/json", _json({"error": "not found"}))
    await _write(reply, method, receive, send, extra)


async def _write(reply: Reply, method: str, receive: Receive, send: SendASGI,
                 extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", reply.content_type.encode()), *extra,
               *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers)]
    if reply.events is None:
        headers.append((b"content-length", str(len(reply.body)).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else reply.body})
        return

    async def events() -> None:
        async for chunk in reply.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def client_gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        writer, watcher = asyncio.ensure_future(events()), asyncio.ensure_future(client_gone())
        await asyncio.wait((writer, watcher), return_when=asyncio.FIRST_COMPLETED)
        for task in (writer, watcher):
            task.cancel()
        for outcome in await asyncio.gather(writer, watcher, return_exceptions=True):
            if isinstance(outcome, Exception):  # the client left while we wrote
                log.debug("transcription events stopped: %r", outcome)
    finally:
        reply.close()  # frees the file's engine slot if the client left first


def _multipart(content_type: str, receive: Receive) -> Callable[[FormReader], Awaitable[None]]:
    """Parses the request body, as it arrives, into the route's FormReader (python-multipart)."""

    async def read(reader: FormReader) -> None:
        try:
            from python_multipart.exceptions import MultipartParseError
            from python_multipart.multipart import MultipartParser, parse_options_header
        except ImportError as exc:
            raise RequestError(501, "not_implemented", "file transcription on this ASGI server needs "
                               "python-multipart (pip install python-multipart)") from exc
        boundary = parse_options_header(content_type)[1].get(b"boundary")
        if not boundary:
            raise RequestError(400, "bad_request", "the multipart/form-data Content-Type has no boundary")
        name, value, disposition = bytearray(), bytearray(), b""

        def part_begin() -> None:
            nonlocal disposition
            disposition = b""

        def header_end() -> None:
            nonlocal disposition
            if bytes(name).lower() == b"content-disposition":
                disposition = bytes(value)
            name.clear()
            value.clear()

        def headers_finished() -> None:
            options = parse_options_header(disposition)[1]
            part, filename = options.get(b"name"), options.get(b"filename")
            reader.begin(None if part is None else part.decode("utf-8", "replace"),
                         None if filename is None else filename.decode("utf-8", "replace"))

        parser = MultipartParser(boundary, {
            "on_part_begin": part_begin,
            "on_header_field": lambda data, start, end: name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: value.extend(data[start:end]),
            "on_header_end": header_end,
            "on_headers_finished": headers_finished,
            "on_part_data": lambda data, start, end: reader.feed(data[start:end]),
            "on_part_end": reader.end,
        })
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "bad_request", "the client left before the body was complete")
                parser.write(message.get("body", b""))
                if not message.get("more_body"):
                    break
            parser.finalize()
        except MultipartParseError as exc:
            raise RequestError(400, "bad_request", f"the multipart/form-data body is malformed: {exc}") from exc

    return read


async def _lifespan(receive: Receive, send: SendASGI) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()
