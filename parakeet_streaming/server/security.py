"""Access control shared by every listener: API keys and the TLS context.

Keys are opt-in (`--api-key`, `--api-key-file`). Where a transport carries the key:
- WebSocket and HTTP: `Authorization: Bearer KEY`, or `?token=KEY` (browsers cannot set headers);
- TCP: the first line, `{"type":"auth","token":"KEY"}`.
A transport checks the key before it opens an engine stream, so a rejected client never holds a slot.
"""
from __future__ import annotations

import hmac
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from parakeet_streaming.config import ServerConfig


class StartupError(ValueError):
    """A flag that names something unusable (missing key file, bad certificate). Exit code 2."""


@dataclass(frozen=True)
class Authenticator:
    keys: tuple[bytes, ...] = ()

    @classmethod
    def from_config(cls, config: ServerConfig) -> "Authenticator":
        keys = [k.strip() for k in config.api_keys]
        if config.api_key_file:
            keys += _read_key_file(config.api_key_file)
        if any(not k for k in keys):
            raise StartupError("an API key must not be empty")
        return cls(tuple(k.encode("utf-8") for k in keys))

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def check(self, token: str | None) -> bool:
        """True when no key is required or `token` is one of the keys (constant-time compare)."""
        if not self.keys:
            return True
        if not token:
            return False
        given = token.encode("utf-8")
        # compare against every key, so timing does not tell which key came close
        return any([hmac.compare_digest(given, key) for key in self.keys])


def _read_key_file(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read --api-key-file {path}: {exc}") from exc
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise StartupError(f"--api-key-file {path} holds no key")
    return keys


def bearer_token(headers: Mapping[str, str], path_or_query: str) -> str | None:
    """The key of an HTTP or WebSocket request (see `request_token`), from its path and query."""
    return request_token(headers, parse_qs(urlsplit(path_or_query).query))


def request_token(headers: Mapping[str, str], query: Mapping[str, Sequence[str]]) -> str | None:
    """The `Authorization: Bearer KEY` header (or `Token KEY`, Deepgram's scheme) wins over `?token=`."""
    scheme, _, value = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    tokens = query.get("token")
    return tokens[-1] if tokens else None


def auth_line_token(line: bytes | str) -> str | None:
    """The token of a TCP auth line `{"type":"auth","token":"KEY"}`, or None if it is not one."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth" or not isinstance(obj.get("token"), str):
        return None
    return obj["token"]


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """The server-side TLS context from --ssl-certfile/--ssl-keyfile, or None (plain sockets)."""
    if not config.ssl_certfile and not config.ssl_keyfile:
        return None
    if not config.ssl_certfile:
        raise StartupError("--ssl-keyfile needs --ssl-certfile")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"cannot load the TLS certificate/key: {exc}") from exc
    return ctx
