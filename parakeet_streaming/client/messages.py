"""Typed server messages (docs/protocol.md), parsed leniently: unknown fields and unknown message
types are ignored, so a client keeps working against newer servers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Union


class ClientError(Exception):
    """Base class of everything the client raises about a stream."""


class ProtocolViolation(ClientError):
    """The server sent something this client cannot read (not JSON, a required field missing)."""


class StreamClosed(ClientError):
    """The connection closed before the stream's final result arrived."""


class ServerError(ClientError):
    """An `error` message from the server. `code` is stable (e.g. `server_full`, `bad_audio`).

    For a fatal error that still let the server decode what it had, `final` is that final result.
    """

    def __init__(self, code: str, message: str, fatal: bool = True, final: "Result | None" = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.fatal, self.final = code, message, fatal, final


@dataclass(frozen=True)
class Hello:
    stream_id: int
    sample_rate: int
    model: str | None = None
    encodings: tuple[str, ...] = ("pcm16", "f32")
    protocol: int = 1  # servers before protocol 2 do not say
    chunk_ms: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Word:
    word: str
    start_ms: int
    end_ms: int
    confidence: float | None = None


@dataclass(frozen=True)
class Result:
    stream_id: int
    text: str  # the whole transcript so far
    token_ids: tuple[int, ...]  # only the tokens since the previous result
    confidence_scores: tuple[float, ...]
    is_final: bool
    audio_ms: int | None = None
    utterance: int | None = None
    flushed: bool = False  # the answer to a flush request
    token_start_ms: tuple[int, ...] | None = None  # with ?timestamps=true
    words: tuple[Word, ...] | None = None  # with ?timestamps=true
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Eou:
    stream_id: int
    utterance: int
    text: str  # this utterance only
    audio_ms: int | None = None
    backchannel: bool = False
    reason: str | None = None  # what ended the utterance, e.g. the model's token or silence
    words: tuple[Word, ...] | None = None  # with ?timestamps=true
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    fatal: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def exception(self, final: Result | None = None) -> ServerError:
        return ServerError(self.code, self.message, self.fatal, final)


@dataclass(frozen=True)
class Pong:
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


Message = Union[Hello, Result, Eou, Error, Pong]


def parse_message(data: str | bytes | dict[str, Any]) -> Message | None:
    """One server message -> its dataclass; None for a message type this client doesn't know."""
    obj = _load(data) if not isinstance(data, dict) else data
    kind = obj.get("type")
    try:
        if kind == "hello":
            return Hello(int(obj["stream_id"]), int(obj["sample_rate"]), obj.get("model"),
                         tuple(obj.get("encodings") or ("pcm16", "f32")), int(obj.get("protocol", 1)),
                         obj.get("chunk_ms"), obj)
        if kind == "result":
            return Result(int(obj["stream_id"]), str(obj["text"]), tuple(obj.get("token_ids") or ()),
                          tuple(obj.get("confidence_scores") or ()), bool(obj["is_final"]), obj.get("audio_ms"),
                          obj.get("utterance"), bool(obj.get("flushed", False)), _opt_tuple(obj.get("token_start_ms")),
                          _words(obj.get("words")), obj)
        if kind == "eou":
            return Eou(int(obj["stream_id"]), int(obj["utterance"]), str(obj.get("text", "")), obj.get("audio_ms"),
                       bool(obj.get("backchannel", False)), obj.get("reason"), _words(obj.get("words")), obj)
        if kind == "error":  # protocol 1 errors carry only a message
            return Error(str(obj.get("code") or "error"), str(obj.get("message", "")), bool(obj.get("fatal", False)),
                         obj)
        if kind == "pong":
            return Pong(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolViolation(f"malformed {kind!r} message ({exc!r}): {obj}") from exc
    return None


def _opt_tuple(value: Any) -> tuple | None:
    return None if value is None else tuple(value)


def _words(value: Any) -> tuple[Word, ...] | None:
    if value is None:
        return None
    return tuple(Word(str(w["word"]), int(w["start_ms"]), int(w["end_ms"]), w.get("confidence")) for w in value)


def _load(data: str | bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolViolation(f"server sent a message that is not JSON: {data[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ProtocolViolation(f"server sent a JSON {type(obj).__name__}, not an object")
    return obj
