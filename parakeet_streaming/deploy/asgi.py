"""ASGI transport: the streaming protocols over WebSocket, and the probes, for any ASGI server.

`asgi_app(ctx)` serves, on one engine's `ServerContext`:
- WebSocket at any path: the wire protocol is picked by path (server/routes.py), exactly as on the
  websockets port; each connection is handed to `serve_connection` (the stream core).
- HTTP `GET /healthz`, `/readyz`, `/metrics` (the answers of the HTTP port, server/http.py).

Mount it in a Starlette/FastAPI app (`app.mount("/asr", asgi_app(ctx))`) or run it as the ingress of a
Ray Serve replica (ray_serve.py). `instance` names the server in the `x-parakeet-instance` header of
every response, so a client behind a load balancer can see which replica it reached.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Awaitable, Callable, MutableMapping

from websockets.datastructures import Headers

from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.metrics import CONTENT_TYPE
from parakeet_streaming.server.routes import UpgradeRefusal, upgrade_refusal
from parakeet_streaming.server.session import Link, serve_connection
from parakeet_streaming.server.wire import Request

log = logging.getLogger("parakeet_streaming.asgi")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
SendASGI = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, SendASGI], Awaitable[None]]

INSTANCE_HEADER = "x-parakeet-instance"


def asgi_app(ctx: ServerContext, instance: str | None = None) -> ASGIApp:
    extra = [(INSTANCE_HEADER.encode(), instance.encode())] if instance else []

    async def app(scope: Scope, receive: Receive, send: SendASGI) -> None:
        if scope["type"] == "websocket":
            await _websocket(ctx, scope, receive, send, extra)
        elif scope["type"] == "http":
            await _http(ctx, scope, send, extra)
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

    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "?"
    try:
        await serve_connection(ctx, Link(recv, send_data, close, request, peer))
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


async def _http(ctx: ServerContext, scope: Scope, send: SendASGI, extra: list[tuple[bytes, bytes]]) -> None:
    path, method = local_path(scope), scope["method"]
    if method not in ("GET", "HEAD"):
        status, ctype, body = 405, "application/json", _json({"error": "method not allowed"})
    elif path == "/healthz":
        status, ctype, body = 200, "application/json", _json({"status": "ok"})
    elif path == "/readyz":
        ready, why = ctx.readiness()
        status, ctype, body = (200 if ready else 503), "application/json", _json({"status": why})
    elif path == "/metrics":
        status, ctype, body = 200, CONTENT_TYPE, ctx.metrics.render()
    else:
        status, ctype, body = 404, "application/json", _json({"error": "not found"})
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


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
