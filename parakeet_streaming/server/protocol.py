"""Sans-I/O wire protocol: parse client messages, build server messages, error codes.

No sockets and no asyncio here; everything is testable with plain strings and bytes.
See docs/protocol.md for the contract. Error semantics:
- non-fatal: the offending message is dropped, the stream keeps running, nothing else is lost;
- fatal: the server accepts no more input from the connection. If a stream is open it is
  finalized (the final result still follows), then the connection is closed.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from parakeet_streaming.audio import ENCODINGS
from parakeet_streaming.engine.events import Result, UtteranceEnd
from parakeet_streaming.engine.handle import SERVER_FULL, SHUTTING_DOWN  # noqa: F401 - error codes too
from parakeet_streaming.engine.words import Word
from parakeet_streaming.model.boosting import MAX_KEYTERMS

PROTOCOL_VERSION = 2  # 1 = the seed's messages; 2 = the Part B extensions

# Error codes (stable, machine-readable).
BAD_JSON = "bad_json"
BAD_AUDIO = "bad_audio"
UNSUPPORTED_ENCODING = "unsupported_encoding"
MESSAGE_TOO_LARGE = "message_too_large"
STREAM_TOO_LONG = "stream_too_long"
UNKNOWN_TYPE = "unknown_type"
UNAUTHORIZED = "unauthorized"
IDLE_TIMEOUT = "idle_timeout"
AUDIO_AFTER_FINAL = "audio_after_final"
BAD_CONFIG = "bad_config"
INTERNAL = "internal"
HANDSHAKE_TIMEOUT = "handshake_timeout"


class ProtocolError(Exception):
    """A client message we reject. `fatal` means the server stops reading the connection."""

    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"ProtocolError({self.code!r}, {self.message!r}, fatal={self.fatal})"


# --- client -> server -----------------------------------------------------------------------


@dataclass(frozen=True)
class Audio:
    """Audio for the stream: raw bytes in `encoding` (`data`), or the debug float list (`samples`).

    `encoding` / `sample_rate` are None when the message did not say; the stream's defaults apply.
    """

    data: bytes | None = None
    samples: list[float] | None = None
    encoding: str | None = None
    final: bool = False
    sample_rate: int | None = None


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Config:
    """Stream options, the same names as the WebSocket query parameters. None: unchanged."""

    timestamps: bool | None = None
    endpoint_silence_ms: int | None = None
    keyterms: tuple[str | tuple[str, float], ...] | None = None  # () removes the stream's key terms


ClientMessage = Audio | Close | Ping | Flush | Config
_CONFIG_KEYS = ("timestamps", "endpoint_silence_ms", "keyterms")
MAX_ENDPOINT_SILENCE_MS = 60_000

_SIMPLE: dict[str, ClientMessage] = {"close": Close(), "ping": Ping(), "flush": Flush()}


def parse_text(text: str | bytes) -> ClientMessage:
    """One JSON message (a WebSocket text frame or a TCP line) -> a typed message. A str may carry
    undecodable bytes as surrogate escapes (TCP decodes lines with errors="surrogateescape")."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "surrogateescape")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ProtocolError(BAD_JSON, "message is not valid UTF-8") from exc
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"invalid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_JSON, f"a message must be a JSON object, got {type(obj).__name__}")
    return parse_object(obj)


def parse_object(obj: dict[str, Any]) -> ClientMessage:
    kind = obj.get("type")
    if kind == "audio":
        return _parse_audio(obj)
    if kind == "config":
        return _parse_config(obj)
    if isinstance(kind, str) and kind in _SIMPLE:
        return _SIMPLE[kind]
    if kind is None:
        raise ProtocolError(UNKNOWN_TYPE, "message has no 'type'")
    known = ", ".join(["audio", "config", *_SIMPLE])
    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r} (known: {known})")


def parse_binary(payload: bytes) -> Audio:
    """A binary WebSocket frame: raw audio in the stream's encoding, never final."""
    return Audio(data=bytes(payload))


def _parse_audio(obj: dict[str, Any]) -> Audio:
    final = _parse_final(obj.get("final", False))
    encoding = _parse_encoding(obj.get("encoding"))
    rate = None if obj.get("sample_rate") is None else parse_sample_rate(obj["sample_rate"])
    data, samples = obj.get("data"), obj.get("samples")
    if data is not None and samples is not None:
        raise ProtocolError(BAD_AUDIO, "an audio message carries 'data' or 'samples', not both")
    if samples is not None:
        return Audio(samples=_parse_samples(samples), encoding=encoding, final=final, sample_rate=rate)
    return Audio(data=_parse_data(data), encoding=encoding, final=final, sample_rate=rate)


def _parse_config(obj: dict[str, Any]) -> Config:
    unknown = sorted(set(obj) - {"type", *_CONFIG_KEYS})
    if unknown:
        raise ProtocolError(BAD_CONFIG, f"unknown config option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(_CONFIG_KEYS)})")
    silence, keyterms = obj.get("endpoint_silence_ms"), obj.get("keyterms")
    return Config(timestamps=parse_flag("timestamps", obj.get("timestamps")),
                  endpoint_silence_ms=None if silence is None else parse_silence_ms(silence),
                  keyterms=None if keyterms is None else parse_keyterms(keyterms))


def parse_keyterms(value: Any) -> tuple[str | tuple[str, float], ...]:
    """`keyterms`: a list of phrases, each a string or {"text": ..., "weight": ...} (docs/keyterms.md).
    Only the shape is checked here; the model's limits and spelling are checked when it is compiled."""
    if not isinstance(value, list):
        raise ProtocolError(BAD_CONFIG, "'keyterms' must be a list of strings or {\"text\", \"weight\"} objects")
    if len(value) > MAX_KEYTERMS:
        raise ProtocolError(BAD_CONFIG, f"'keyterms' has {len(value)} entries; at most {MAX_KEYTERMS}")
    terms: list[str | tuple[str, float]] = []
    for i, item in enumerate(value):
        if isinstance(item, dict) and set(item) <= {"text", "weight"}:
            text, weight = item.get("text"), item.get("weight")
            if isinstance(text, str) and weight is None:
                terms.append(text)
                continue
            if isinstance(text, str) and isinstance(weight, (int, float)) and not isinstance(weight, bool):
                terms.append((text, float(weight)))
                continue
        elif isinstance(item, str):
            terms.append(item)
            continue
        raise ProtocolError(BAD_CONFIG, f"'keyterms' entry {i} must be a string or an object "
                            "{\"text\": string, \"weight\": number}")
    return tuple(terms)


def parse_silence_ms(value: Any) -> int:
    """A stream's `endpoint_silence_ms`: 0 (off) .. 60000."""
    return _bounded_int("endpoint_silence_ms", value, 0, MAX_ENDPOINT_SILENCE_MS, BAD_CONFIG)


def parse_flag(name: str, value: Any) -> bool | None:
    """An on/off option: JSON true/false, or (query parameters) "true"/"false"/"1"/"0"."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise ProtocolError(BAD_CONFIG, f"{name!r} must be true or false, got {value!r}")


@dataclass
class StreamOptions:
    """A connection's defaults and options from its request's query string."""

    encoding: str = "pcm16"
    sample_rate: int | None = None  # None: --sample-rate
    timestamps: bool = False  # results carry token_start_ms and words
    endpoint_silence_ms: int | None = None  # None: the server's endpointing
    keyterms: tuple[str | tuple[str, float], ...] | None = None  # each `keyterms=` parameter is one phrase


def options_from_query(path: str) -> StreamOptions:
    """`?encoding=mulaw&sample_rate=8000&timestamps=true&endpoint_silence_ms=300`; a bad value is a
    fatal ProtocolError (the connection is refused before hello)."""
    params = parse_qs(urlsplit(path).query)
    query = {k: v[-1] for k, v in params.items()}
    opts = StreamOptions()
    try:
        if "keyterms" in params:
            opts.keyterms = parse_keyterms(params["keyterms"])
        if "encoding" in query:
            opts.encoding = _parse_encoding(query["encoding"]) or opts.encoding
        if "timestamps" in query:
            opts.timestamps = bool(parse_flag("timestamps", query["timestamps"]))
        if "endpoint_silence_ms" in query:
            opts.endpoint_silence_ms = parse_silence_ms(query["endpoint_silence_ms"])
        if "sample_rate" in query:
            opts.sample_rate = parse_sample_rate(query["sample_rate"])
    except ProtocolError as exc:
        raise ProtocolError(exc.code, exc.message, fatal=True) from exc
    return opts


def _parse_final(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    raise ProtocolError(BAD_AUDIO, f"'final' must be true or false, got {value!r}")


def _parse_encoding(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in ENCODINGS:
        raise ProtocolError(UNSUPPORTED_ENCODING,
                            f"unsupported encoding {value!r} (supported: {', '.join(ENCODINGS)})")
    return value


def parse_sample_rate(value: Any) -> int:
    """A declared sample rate, 1000 .. 384000 Hz."""
    return _bounded_int("sample_rate", value, 1000, 384_000, BAD_AUDIO)


def _bounded_int(name: str, value: Any, lo: int, hi: int, code: str) -> int:
    """An integer option in lo..hi (numeric strings allowed, for query params)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is not int or not lo <= value <= hi:
        raise ProtocolError(code, f"{name!r} must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _parse_data(value: Any) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise ProtocolError(BAD_AUDIO, f"'data' must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(BAD_AUDIO, f"'data' is not valid base64: {exc}") from exc


def _parse_samples(value: Any) -> list[float]:
    if not isinstance(value, list):
        raise ProtocolError(BAD_AUDIO, f"'samples' must be a list of numbers, got {type(value).__name__}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ProtocolError(BAD_AUDIO, f"'samples' must hold finite numbers only, got {v!r}")
    return value


# --- server -> client -----------------------------------------------------------------------


def hello(stream_id: int, sample_rate: int, *, model: str, encodings: tuple[str, ...] = ENCODINGS,
          chunk_ms: int | None = None, instance: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "hello", "stream_id": stream_id, "sample_rate": sample_rate,
                           "model": model, "encodings": list(encodings), "protocol": PROTOCOL_VERSION}
    if chunk_ms is not None:
        msg["chunk_ms"] = chunk_ms
    if instance is not None:
        msg["instance"] = instance
    return msg


def result(ev: Result, timestamps: bool = False) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "result", "stream_id": ev.stream_id, "text": ev.text,
        "token_ids": [int(t) for t in ev.token_ids],
        "confidence_scores": [round(float(c), 4) for c in ev.confidences],
        "is_final": ev.is_final, "audio_ms": int(ev.audio_ms), "utterance": int(ev.utterance),
    }
    if ev.flushed:
        msg["flushed"] = True
    if timestamps:
        msg["token_start_ms"] = [int(t) for t in ev.token_start_ms]
        msg["words"] = _words(ev.words)
    return msg


def eou(ev: UtteranceEnd, timestamps: bool = False) -> dict[str, Any]:
    msg = {"type": "eou", "stream_id": ev.stream_id, "utterance": ev.utterance, "text": ev.text,
           "audio_ms": int(ev.audio_ms), "backchannel": ev.backchannel, "reason": ev.reason}
    if timestamps:
        msg["words"] = _words(ev.words)
    return msg


def _words(words: list[Word]) -> list[dict[str, Any]]:
    return [{"word": w.word, "start_ms": int(w.start_ms), "end_ms": int(w.end_ms),
             "confidence": round(float(w.confidence), 4)} for w in words]


def error(code: str, message: str, fatal: bool = False) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "fatal": fatal}


def error_from(exc: ProtocolError) -> dict[str, Any]:
    return error(exc.code, exc.message, exc.fatal)


def pong() -> dict[str, Any]:
    return {"type": "pong"}


def status(connected_streams: int, **extra: Any) -> dict[str, Any]:
    return {"type": "status", "connected_streams": connected_streams, **extra}


def dumps(msg: dict[str, Any]) -> str:
    """Compact JSON without a newline (TCP framing adds it)."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
