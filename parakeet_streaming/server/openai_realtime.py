"""OpenAI Realtime transcription sessions (`/v1/realtime?intent=transcription`), sans-I/O: the session
configuration, client events, server events in the shapes of the `openai` package's
`types/realtime`, and the translation of engine events into them. No sockets and no asyncio here.

Turns and items (docs/integrations/openai.md):
- Each user turn is one conversation item (`item_id`). Its text streams as
  `conversation.item.input_audio_transcription.delta` events; the deltas of an item, joined, are its
  `completed` transcript.
- `turn_detection: server_vad` (the default): an utterance end of the engine (the model's `<EOU>` or
  the silence endpointer, set from `silence_duration_ms`) ends the turn: `speech_stopped`,
  `committed`, `completed`. `speech_started` is sent when a turn's first text arrives, at its first
  token's start minus `prefix_padding_ms`.
- `turn_detection: null`: turns end only at `input_audio_buffer.commit` (engine endpointing off,
  `<EOU>` ignored). A commit (either mode) flushes the engine: every sample appended before it is in
  the committed item. `input_audio_buffer.clear` also flushes, and drops the open item's transcript.
- `include: ["item.input_audio_transcription.logprobs"]`: each text token's `logprob` is the natural
  log of the decoder's per-token confidence (not a probability over the vocabulary).
"""
from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event, KeytermsRejected, Result, StreamFailed, UtteranceEnd
from parakeet_streaming.model.boosting import MAX_KEYTERMS
from parakeet_streaming.server.byte_audio import ByteAudio
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.wire import (CLOSE_AGAIN, CLOSE_ERROR, CLOSE_POLICY, OVERSIZED, Endpointing, Keyterms,
                                            Message, Request, State, StreamProtocol)

log = logging.getLogger("parakeet_streaming.openai_realtime")

PATH = "/v1/realtime"
LOGPROBS = "item.input_audio_transcription.logprobs"
# OpenAI format type -> (audio.decode name, sample rate)
FORMATS: dict[str, tuple[str, int]] = {"audio/pcm": ("pcm16", 24000), "audio/pcmu": ("mulaw", 8000),
                                       "audio/pcma": ("alaw", 8000)}
MIN_COMMIT_MS = 100  # OpenAI refuses to commit less audio than this
MAX_SILENCE_MS = 60_000

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class RealtimeError(Exception):
    """A client event we reject: an `error` event in OpenAI's shape. The session goes on unless fatal."""

    def __init__(self, code: str, message: str, *, param: str | None = None, event_id: str | None = None,
                 type: str = INVALID_REQUEST, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.param, self.event_id = code, message, param, event_id
        self.type, self.fatal = type, fatal

    def with_event(self, event_id: str | None) -> "RealtimeError":
        self.event_id = self.event_id or event_id
        return self


# --- the upgrade request ---------------------------------------------------------------------


def check_query(query: Mapping[str, Sequence[str]]) -> str | None:
    """The URL's `model` (optional). Raises RealtimeError unless `intent=transcription`."""
    intent = (query.get("intent") or [None])[-1]
    if intent != "transcription":
        raise RealtimeError("unsupported_intent", f"This server serves transcription sessions only: connect to "
                            f"{PATH}?intent=transcription (got intent={intent!r}).", param="intent", fatal=True)
    return (query.get("model") or [None])[-1]


# --- the session -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerVad:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    type: str = "server_vad"  # "semantic_vad" is accepted and served as server_vad


@dataclass(frozen=True)
class SessionConfig:
    """A transcription session's effective configuration."""

    format: str = "audio/pcm"
    model: str | None = None
    language: str | None = None
    prompt: str | None = None  # accepted and reported, not applied (docs/integrations/openai.md)
    keywords: tuple[str, ...] = ()  # the stream's key terms (docs/keyterms.md)
    turn_detection: ServerVad | None = ServerVad()
    noise_reduction: dict[str, Any] | None = None  # accepted and reported, not applied
    logprobs: bool = False
    extra_transcription: dict[str, Any] = field(default_factory=dict)  # delay, languages: reported

    @property
    def decoder(self) -> str:
        return FORMATS[self.format][0]

    @property
    def sample_rate(self) -> int:
        return FORMATS[self.format][1]

    @property
    def silence_ms(self) -> int:
        """Engine endpointing for this session: turns end at silence only with server VAD."""
        return self.turn_detection.silence_duration_ms if self.turn_detection else 0


_SESSION_KEYS = {"type", "audio", "include", "id", "object", "expires_at", "model", "instructions",
                 "output_modalities", "tools", "tool_choice", "tracing", "truncation", "prompt"}
_INPUT_KEYS = {"format", "transcription", "turn_detection", "noise_reduction"}
_TRANSCRIPTION_KEYS = {"model", "language", "prompt", "delay", "keywords", "languages"}
_VAD_KEYS = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms", "create_response",
             "interrupt_response", "idle_timeout_ms", "eagerness"}


def update_session(config: SessionConfig, session: Any) -> SessionConfig:
    """Apply a `session.update`'s `session` object: fields present replace, absent ones stay."""
    obj = _object(session, "session", _SESSION_KEYS)
    kind = obj.get("type")
    if kind != "transcription":
        raise RealtimeError("invalid_value", f"Invalid value: {kind!r}. This server serves transcription sessions "
                            "only: 'session.type' must be 'transcription'.", param="session.type")
    if "include" in obj:
        include = obj["include"]
        if include is not None and (not isinstance(include, list) or any(i != LOGPROBS for i in include)):
            raise RealtimeError("invalid_value", f"Invalid value for 'session.include': {include!r} (supported: "
                                f"[{LOGPROBS!r}]).", param="session.include")
        config = replace(config, logprobs=bool(include))
    audio = _object(obj.get("audio", {}), "session.audio", {"input", "output"})
    inp = _object(audio.get("input", {}), "session.audio.input", _INPUT_KEYS)
    if "format" in inp:
        config = replace(config, format=_format(inp["format"]))
    if "transcription" in inp:
        config = _transcription(config, inp["transcription"])
    if "turn_detection" in inp:
        config = replace(config, turn_detection=_turn_detection(inp["turn_detection"], config.turn_detection))
    if "noise_reduction" in inp:
        nr = inp["noise_reduction"]
        nr = None if nr is None else _object(nr, "session.audio.input.noise_reduction")
        config = replace(config, noise_reduction=nr)
    return config


def _format(value: Any) -> str:
    fmt = _object(value, "session.audio.input.format")
    kind = fmt.get("type", "audio/pcm")
    if kind not in FORMATS:
        raise RealtimeError("invalid_value", f"Invalid value: {kind!r}. Supported values are: "
                            f"{', '.join(map(repr, FORMATS))}.", param="session.audio.input.format.type")
    rate = fmt.get("rate")
    if kind == "audio/pcm" and rate not in (None, 24000):
        raise RealtimeError("invalid_value", f"Invalid value: {rate!r}. 'audio/pcm' is 24000 Hz only.",
                            param="session.audio.input.format.rate")
    return kind


def _transcription(config: SessionConfig, value: Any) -> SessionConfig:
    if value is None:
        return replace(config, model=None, language=None, prompt=None, keywords=(), extra_transcription={})
    obj = _object(value, "session.audio.input.transcription", _TRANSCRIPTION_KEYS)
    for key in ("model", "language", "prompt"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            raise RealtimeError("invalid_type", f"Invalid type for 'session.audio.input.transcription.{key}': "
                                f"expected a string.", param=f"session.audio.input.transcription.{key}")
    extra = {k: obj[k] for k in ("delay", "languages") if k in obj}
    keywords = _keywords(obj["keywords"]) if "keywords" in obj else config.keywords
    return replace(config, model=obj.get("model", config.model), language=obj.get("language", config.language),
                   prompt=obj.get("prompt", config.prompt), keywords=keywords,
                   extra_transcription={**config.extra_transcription, **extra})


def _keywords(value: Any) -> tuple[str, ...]:
    """`keywords`: words or phrases to guide the transcription, our key terms (null: none)."""
    name = "session.audio.input.transcription.keywords"
    if value is None:
        return ()
    if not isinstance(value, list) or any(not isinstance(k, str) for k in value):
        raise RealtimeError("invalid_type", f"Invalid type for '{name}': expected an array of strings.", param=name)
    if len(value) > MAX_KEYTERMS:
        raise RealtimeError("invalid_value", f"Invalid value for '{name}': {len(value)} entries; at most "
                            f"{MAX_KEYTERMS}.", param=name)
    return tuple(value)


def _turn_detection(value: Any, current: ServerVad | None) -> ServerVad | None:
    if value is None:
        return None
    name = "session.audio.input.turn_detection"
    obj = _object(value, name, _VAD_KEYS)
    kind = obj.get("type", "server_vad")
    if kind not in ("server_vad", "semantic_vad"):
        raise RealtimeError("invalid_value", f"Invalid value: {kind!r}. Supported values are: 'server_vad', "
                            "'semantic_vad'.", param=f"{name}.type")
    base = current or ServerVad()
    threshold = obj.get("threshold", base.threshold)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise RealtimeError("invalid_value", f"Invalid value for '{name}.threshold': {threshold!r} (0.0 to 1.0).",
                            param=f"{name}.threshold")
    return ServerVad(threshold=float(threshold), type=kind,
                     prefix_padding_ms=_ms(obj, "prefix_padding_ms", base.prefix_padding_ms, name),
                     silence_duration_ms=_ms(obj, "silence_duration_ms", base.silence_duration_ms, name))


def _ms(obj: dict[str, Any], key: str, default: int, name: str) -> int:
    value = obj.get(key, default)
    if value is None:
        return default
    if type(value) is not int or not 0 <= value <= MAX_SILENCE_MS:
        raise RealtimeError("invalid_value", f"Invalid value for '{name}.{key}': {value!r} (an integer, "
                            f"0..{MAX_SILENCE_MS} ms).", param=f"{name}.{key}")
    return value


def _object(value: Any, name: str, keys: set[str] | None = None) -> dict[str, Any]:
    """`value` as an object (with `keys`: one holding no other key)."""
    if not isinstance(value, dict):
        raise RealtimeError("invalid_type", f"Invalid type for '{name}': expected an object, but got "
                            f"{type(value).__name__}.", param=name)
    unknown = [key for key in value if keys is not None and key not in keys]
    if unknown:
        raise RealtimeError("unknown_parameter", f"Unknown parameter: '{name}.{unknown[0]}'.",
                            param=f"{name}.{unknown[0]}")
    return value


def session_object(config: SessionConfig, session_id: str) -> dict[str, Any]:
    """The `session` of session.created / session.updated (RealtimeTranscriptionSessionCreateResponse)."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt,
                     **config.extra_transcription}
    if config.keywords:
        transcription["keywords"] = list(config.keywords)
    fmt: dict[str, Any] = {"type": config.format}
    if config.format == "audio/pcm":
        fmt["rate"] = 24000
    vad = config.turn_detection
    return {
        "type": "transcription", "object": "realtime.transcription_session", "id": session_id,
        "audio": {"input": {
            "format": fmt, "transcription": transcription, "noise_reduction": config.noise_reduction,
            "turn_detection": None if vad is None else {
                "type": vad.type, "threshold": vad.threshold, "prefix_padding_ms": vad.prefix_padding_ms,
                "silence_duration_ms": vad.silence_duration_ms},
        }},
        "include": [LOGPROBS] if config.logprobs else [],
    }


# --- client events ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionUpdate:
    session: Any
    event_id: str | None = None


@dataclass(frozen=True)
class Append:
    audio: bytes
    event_id: str | None = None


@dataclass(frozen=True)
class Commit:
    event_id: str | None = None


@dataclass(frozen=True)
class Clear:
    event_id: str | None = None


ClientEvent = SessionUpdate | Append | Commit | Clear
_EVENTS = ("session.update", "input_audio_buffer.append", "input_audio_buffer.commit", "input_audio_buffer.clear")


def parse_event(text: str | bytes) -> ClientEvent:
    """One text frame -> a client event. Raises RealtimeError (non-fatal)."""
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RealtimeError("invalid_json", f"The server could not parse the event as JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise RealtimeError("invalid_json", f"An event must be a JSON object, got {type(obj).__name__}.")
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    try:
        if kind == "session.update":
            if "session" not in obj:
                raise RealtimeError("missing_required_parameter", "Missing required parameter: 'session'.",
                                    param="session")
            return SessionUpdate(obj["session"], event_id)
        if kind == "input_audio_buffer.append":
            return Append(_audio(obj.get("audio")), event_id)
        if kind == "input_audio_buffer.commit":
            return Commit(event_id)
        if kind == "input_audio_buffer.clear":
            return Clear(event_id)
    except RealtimeError as exc:
        raise exc.with_event(event_id) from None
    if kind is None:
        raise RealtimeError("missing_required_parameter", "Missing required parameter: 'type'.", param="type",
                            event_id=event_id)
    raise RealtimeError("invalid_value", f"Invalid value: {kind!r}. Supported values for a transcription session "
                        f"are: {', '.join(map(repr, _EVENTS))}.", param="type", event_id=event_id)


def _audio(value: Any) -> bytes:
    if value is None:
        raise RealtimeError("missing_required_parameter", "Missing required parameter: 'audio'.", param="audio")
    if not isinstance(value, str):
        raise RealtimeError("invalid_type", f"Invalid type for 'audio': expected a base64 string, but got "
                            f"{type(value).__name__}.", param="audio")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RealtimeError("invalid_value", f"Invalid 'audio': not valid base64 ({exc}).", param="audio") from exc


# --- server events ---------------------------------------------------------------------------


@dataclass
class Ids:
    """Server event and item ids of one connection."""

    prefix: str
    _n: Any = field(default_factory=lambda: itertools.count(1))

    def event(self) -> str:
        return f"event_{self.prefix}{next(self._n):x}"

    def item(self) -> str:
        return f"item_{self.prefix}{next(self._n):x}"


def error_event(exc: RealtimeError, event_id: str) -> dict[str, Any]:
    return {"type": "error", "event_id": event_id,
            "error": {"type": exc.type, "code": exc.code, "message": exc.message, "param": exc.param,
                      "event_id": exc.event_id}}


def logprob(token: str, confidence: float) -> dict[str, Any]:
    return {"token": token, "bytes": list(token.encode("utf-8")), "logprob": math.log(max(confidence, 1e-12))}


# --- engine events -> server events ------------------------------------------------------------


@dataclass
class Turns:
    """One session's engine events -> input_audio_buffer.* and transcription events (plain dicts).

    `token_text(id)` is a token's text (None for special tokens), for logprobs. Feed every engine
    event of the stream in order to `on_result` / `on_utterance_end`; `committing()` / `clearing()`
    say what the next flushed Result answers. Each returns the events to send.
    """

    ids: Ids
    token_text: Callable[[int], str | None]
    config: SessionConfig = field(default_factory=SessionConfig)
    _item: str = ""
    _previous: str | None = None
    _item_char: int = 0  # where the open item starts in the stream's transcript text
    _item_start_ms: int = 0
    _text: str = ""
    _sent: str = ""  # the open item's text sent as deltas
    _logprobs: list[dict[str, Any]] = field(default_factory=list)
    _speaking: bool = False
    _flushes: list[str] = field(default_factory=list)  # "commit" | "clear", in order

    def __post_init__(self) -> None:
        self._item = self.ids.item()

    def committing(self) -> None:
        self._flushes.append("commit")

    def clearing(self) -> None:
        self._flushes.append("clear")

    def on_result(self, ev: Result) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        grew = len(ev.text) > len(self._text)
        self._text = ev.text
        if grew and not self._speaking and self.config.turn_detection is not None and ev.token_start_ms:
            start = max(self._item_start_ms, ev.token_start_ms[0] - self.config.turn_detection.prefix_padding_ms)
            out.append({"type": "input_audio_buffer.speech_started", "event_id": self.ids.event(),
                        "item_id": self._item, "audio_start_ms": max(0, start)})
        self._speaking = self._speaking or grew
        probs = [logprob(t, c) for i, c in zip(ev.token_ids, ev.confidences) if (t := self.token_text(i)) is not None]
        self._logprobs += probs
        text = self._item_text()
        if text.startswith(self._sent) and len(text) > len(self._sent):
            delta, self._sent = text[len(self._sent):], text
            event = {"type": "conversation.item.input_audio_transcription.delta", "event_id": self.ids.event(),
                     "item_id": self._item, "content_index": 0, "delta": delta}
            if self.config.logprobs:
                event["logprobs"] = probs
            out.append(event)
        if ev.flushed and self._flushes:
            out += self._commit(ev.audio_ms) if self._flushes.pop(0) == "commit" else self._drop(ev.audio_ms)
        elif ev.is_final and self._item_text():
            out += self._commit(ev.audio_ms)  # the session ends (fatal error): keep what was said
        return out

    def on_utterance_end(self, ev: UtteranceEnd) -> list[dict[str, Any]]:
        if ev.reason == "flush" or self.config.turn_detection is None or not self._speaking:
            return []
        stopped = {"type": "input_audio_buffer.speech_stopped", "event_id": self.ids.event(),
                   "item_id": self._item, "audio_end_ms": int(ev.audio_ms)}
        return [stopped, *self._commit(ev.audio_ms)]

    def _item_text(self) -> str:
        return self._text[self._item_char:].strip()

    def _commit(self, end_ms: int) -> list[dict[str, Any]]:
        item, transcript = self._item, self._item_text()
        committed = {"type": "input_audio_buffer.committed", "event_id": self.ids.event(), "item_id": item,
                     "previous_item_id": self._previous}
        completed = {"type": "conversation.item.input_audio_transcription.completed", "event_id": self.ids.event(),
                     "item_id": item, "content_index": 0, "transcript": transcript,
                     "usage": {"type": "duration", "seconds": round(max(0, end_ms - self._item_start_ms) / 1000, 3)}}
        if self.config.logprobs:
            completed["logprobs"] = self._logprobs
        self._previous = item
        self._next_item(end_ms)
        return [committed, completed]

    def _drop(self, end_ms: int) -> list[dict[str, Any]]:
        self._next_item(end_ms)
        return []

    def _next_item(self, start_ms: int) -> None:
        self._item, self._item_char, self._item_start_ms = self.ids.item(), len(self._text), start_ms
        self._sent, self._logprobs, self._speaking = "", [], False


# --- the per-connection protocol object (server/wire.py) ------------------------------------------


class RealtimeStream(StreamProtocol):
    """`/v1/realtime?intent=transcription` for one connection. Greets with `session.created`.
    WAITING (no audio yet, no slot) --first audio / commit--> STREAMING; the client ends the session
    by closing the socket (the open item is dropped, as OpenAI does). A fatal error (a timeout,
    --max-stream-seconds, shutdown) sends an `error` event, decodes what was appended (the open
    item is committed if it has text), then closes with a code."""

    def __init__(self, request: Request, config: ServerConfig, model: ModelInfo) -> None:
        super().__init__(request, config, model, rate=24000)
        self.session_id = ""
        self._ids = Ids("")
        self._turns = Turns(self._ids, lambda _: "")
        self._bytes = ByteAudio("pcm16")
        self._buffered_s = 0.0  # client audio since the last commit (for commit_empty)
        self._keywords_before: tuple[str, ...] = ()  # what the engine keeps if the last keywords are rejected

    @property
    def session_config(self) -> SessionConfig:
        return self._turns.config

    def _token_text(self, token_id: int) -> str | None:
        """A token's text for logprobs (None: a special token); "" when the model's texts are unknown."""
        texts = self.model.token_texts
        return texts[token_id] if 0 <= token_id < len(texts) else ""

    # --- inputs ------------------------------------------------------------------------------
    def open(self, stream_id: int, now: float) -> None:
        self._last = now
        self.session_id = f"sess_{stream_id:016x}"
        self._ids = Ids(f"{stream_id:x}_")
        try:
            url_model = check_query(parse_qs(urlsplit(self.request.path).query))
        except RealtimeError as exc:
            self.outcome = exc.code
            self._error(exc)
            self._close(CLOSE_POLICY, exc.message[:120])
            return
        config = SessionConfig(model=url_model or self.model.name)
        self._turns = Turns(self._ids, self._token_text, config)
        self._send({"type": "session.created", "event_id": self._ids.event(),
                    "session": session_object(config, self.session_id)})
        self._out.append(Endpointing(config.silence_ms))

    def refuse(self, code: str, message: str) -> None:
        self.outcome = code
        kind = "invalid_request_error" if code == "unauthorized" else SERVER_ERROR
        self._error(RealtimeError("invalid_api_key" if code == "unauthorized" else code, message, type=kind))
        self._close(CLOSE_POLICY if code == "unauthorized" else CLOSE_AGAIN, message[:120])

    def receive(self, message: Message, now: float) -> None:
        self._last = now
        if self._fatal or self.state in (State.CLOSED, State.FINISHING):
            return
        try:
            if message is OVERSIZED or len(message) > self.config.max_message_bytes:
                raise RealtimeError("message_too_large", f"The event is larger than {self.config.max_message_bytes} "
                                    "bytes and was dropped; send audio in smaller appends.")
            if isinstance(message, bytes):
                raise RealtimeError("invalid_value", "Binary frames are not part of the Realtime API; send "
                                    "audio in input_audio_buffer.append events.")
            self._handle(parse_event(message))
        except RealtimeError as exc:
            self._error(exc)
        except Exception:  # noqa: BLE001 - never let one stream take the server down
            log.exception("realtime session %s: internal error", self.session_id)
            self._fail(RealtimeError("internal", "The server had an error while processing the event.",
                                     type=SERVER_ERROR), CLOSE_ERROR)

    def engine_event(self, event: Event) -> None:
        if self.state is State.CLOSED:
            return
        if isinstance(event, Result):
            for msg in self._turns.on_result(event):
                self._send(msg)
            if event.is_final:
                self._ended()
        elif isinstance(event, UtteranceEnd):
            for msg in self._turns.on_utterance_end(event):
                self._send(msg)
            if event.reason != "flush" and self.session_config.turn_detection is not None:
                self._buffered_s = 0.0  # the server committed the buffer
        elif isinstance(event, StreamFailed):
            self.outcome = event.code
            self._error(RealtimeError(event.code, event.message, type=SERVER_ERROR))
            self._close(CLOSE_AGAIN if event.code in ("server_full", "shutting_down") else CLOSE_ERROR,
                        event.message[:120])
        elif isinstance(event, KeytermsRejected):  # the engine keeps the keywords it had
            self._turns.config = replace(self.session_config, keywords=self._keywords_before)
            name = "session.audio.input.transcription.keywords"
            self._error(RealtimeError("invalid_value", f"Invalid value for '{name}': {event.message}; the "
                                      "session keeps its previous keywords.", param=name))

    def stop(self, code: str = "shutting_down", message: str = "server is shutting down") -> None:
        self._fail(RealtimeError(code, message, type=SERVER_ERROR), CLOSE_AGAIN)

    def timeout(self, now: float) -> None:
        self._fail(RealtimeError(*self._expired()), CLOSE_POLICY)

    # --- client events -----------------------------------------------------------------------
    def _handle(self, event: ClientEvent) -> None:
        if isinstance(event, SessionUpdate):
            try:
                config = update_session(self.session_config, event.session)
            except RealtimeError as exc:
                raise exc.with_event(event.event_id) from None
            if config.format != self.session_config.format:
                self._bytes = ByteAudio(config.decoder)
            if config.silence_ms != self.session_config.silence_ms:
                self._out.append(Endpointing(config.silence_ms))
            if config.keywords != self.session_config.keywords:
                self._keywords_before = self.session_config.keywords
                self._out.append(Keyterms(config.keywords))
            self._turns.config = config
            self._send({"type": "session.updated", "event_id": self._ids.event(),
                        "session": session_object(config, self.session_id)})
        elif isinstance(event, Append):
            samples = self._bytes.decode(event.audio)
            self._buffered_s += len(samples) / self.session_config.sample_rate
            if self._push(samples, self.session_config.sample_rate):
                limit = self.config.max_stream_seconds
                self._fail(RealtimeError("stream_too_long", f"The session passed {limit:g} s of audio; "
                                         "what was appended is transcribed."), CLOSE_POLICY)
        elif isinstance(event, Commit):
            if self._buffered_s * 1000 < MIN_COMMIT_MS:
                raise RealtimeError("input_audio_buffer_commit_empty", f"Error committing input audio buffer: "
                                    f"buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer "
                                    f"only has {self._buffered_s * 1000:.2f}ms of audio.", event_id=event.event_id)
            self._flush()
            self._buffered_s = 0.0
            self._turns.committing()
        elif isinstance(event, Clear):
            if self.state is State.STREAMING:
                self._flush()
                self._buffered_s = 0.0
                self._turns.clearing()
            self._send({"type": "input_audio_buffer.cleared", "event_id": self._ids.event()})

    def _fail(self, exc: RealtimeError, close_code: int) -> None:
        if self._fatal_error(exc.code, close_code, exc.message[:120]):
            self._error(exc)
            self._finish_or_close()

    def _error(self, exc: RealtimeError) -> None:
        self._send(error_event(exc, self._ids.event()), error=exc.code)
