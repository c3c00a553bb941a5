"""Which wire protocol a connection speaks, by its request path (without the query string).

Adding a protocol: one line here, `PROTOCOLS["/v1/listen"] = DeepgramStream`. Any other path
speaks the native protocol (server/native.py); the TCP port always does. A protocol whose spec
refuses some requests with an HTTP status before the WebSocket upgrade registers a check in
`UPGRADE_CHECKS` too; WebSocket transports call `upgrade_refusal` before accepting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from parakeet_streaming.server import deepgram
from parakeet_streaming.server.context import ServerContext
from parakeet_streaming.server.native import NativeStream
from parakeet_streaming.server.openai_realtime import RealtimeStream
from parakeet_streaming.server.wire import ProtocolFactory, Request


@dataclass(frozen=True)
class UpgradeRefusal:
    status: int  # HTTP status of the refused upgrade
    body: bytes
    code: str  # the error code, counted like an in-band refusal
    headers: tuple[tuple[str, str], ...] = ()


def _deepgram_upgrade(request: Request, ctx: ServerContext) -> UpgradeRefusal | None:
    refused = deepgram.upgrade_check(request, ctx)
    return None if refused is None else UpgradeRefusal(*refused.http())


PROTOCOLS: dict[str, ProtocolFactory] = {deepgram.PATH: deepgram.DeepgramStream, "/v1/realtime": RealtimeStream}
UPGRADE_CHECKS: dict[str, Callable[[Request, ServerContext], UpgradeRefusal | None]] = {
    deepgram.PATH: _deepgram_upgrade}
DEFAULT: ProtocolFactory = NativeStream


def protocol_for(path: str) -> ProtocolFactory:
    return PROTOCOLS.get(urlsplit(path).path, DEFAULT)


def upgrade_refusal(request: Request, ctx: ServerContext) -> UpgradeRefusal | None:
    check = UPGRADE_CHECKS.get(urlsplit(request.path).path)
    return check(request, ctx) if check is not None else None
