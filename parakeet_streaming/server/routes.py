"""Which wire protocol a connection speaks, by its request path (without the query string).

Adding a protocol: one line here, `PROTOCOLS["/v1/listen"] = DeepgramStream`. Any other path
speaks the native protocol (server/native.py); the TCP port always does.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from parakeet_streaming.server.deepgram import DeepgramStream
from parakeet_streaming.server.native import NativeStream
from parakeet_streaming.server.openai_realtime import RealtimeStream
from parakeet_streaming.server.wire import ProtocolFactory

PROTOCOLS: dict[str, ProtocolFactory] = {"/v1/listen": DeepgramStream, "/v1/realtime": RealtimeStream}
DEFAULT: ProtocolFactory = NativeStream


def protocol_for(path: str) -> ProtocolFactory:
    return PROTOCOLS.get(urlsplit(path).path, DEFAULT)
