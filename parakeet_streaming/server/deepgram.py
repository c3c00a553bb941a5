"""Deepgram live transcription (`/v1/listen`), sans-I/O: query options, client messages, and the
translation of engine events into Deepgram's server messages. No sockets and no asyncio here.

Segments and finality (docs/integrations/deepgram.md):
- A segment is the audio from the end of the previous final `Results` on. Interim `Results`
  (`is_final: false`, only with `interim_results=true`) carry the segment's transcript so far.
  Greedy RNN-T never revises an emitted token, so each interim transcript is a prefix of the next
  one; only its last word may still grow.
- The segment becomes final (`is_final: true`) when its utterance ends, on `Finalize` and at the end
  of the stream. `speech_final: true` marks an utterance ended by the model's `<EOU>` / `<EOB>` or by
  the silence endpointer (Deepgram's `endpointing`); the answer to `Finalize` has `from_finalize: true`.
- With `utterance_end_ms`, an `UtteranceEnd` follows each speech-final segment that had words.
- With `vad_events=true`, `SpeechStarted` is sent when an utterance's first text arrives, stamped with
  the start of its first token.
The final transcripts of a stream, joined, are the native protocol's transcript of the same audio.
"""
from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event, KeytermsRejected, Result, StreamFailed, UtteranceEnd
from parakeet_streaming.engine.words import Word
from parakeet_streaming.model.boosting import KeytermError, parse_weighted
from parakeet_streaming.server.byte_audio import ByteAudio
from parakeet_streaming.server.context import ModelInfo, ServerContext
from parakeet_streaming.server.intake import AudioIntake
from parakeet_streaming.server.security import request_token
from parakeet_streaming.server.wire import (CLOSE_AGAIN, CLOSE_ERROR, CLOSE_POLICY, CLOSE_TOO_BIG, OVERSIZED,
                                            Endpointing, Keyterms, Message, Request, State, StreamProtocol)

log = logging.getLogger("parakeet_streaming.deepgram")

PATH = "/v1/listen"
ENCODINGS = {"linear16": "pcm16", "mulaw": "mulaw", "alaw": "alaw"}  # Deepgram name -> audio.decode name
MAX_ENDPOINTING_MS = 60_000
# Parameters that change what the server does; the documented others are accepted and ignored
# (docs/integrations/deepgram.md lists both; a test keeps them in step), unknown ones too.
EFFECTIVE = ("encoding", "sample_rate", "channels", "multichannel", "interim_results", "endpointing",
             "utterance_end_ms", "vad_events", "punctuate", "smart_format", "model", "language", "keyterm", "keywords")
IGNORED = ("callback", "callback_method", "detect_entities", "detect_language", "diarize", "diarize_model",
           "dictation", "extra", "filler_words", "language_hint", "mip_opt_out", "no_delay",
           "numerals", "profanity_filter", "redact", "replace", "search", "tag", "tier", "version",
           "alternatives", "token")


class ListenRejected(Exception):
    """The upgrade request is refused with an HTTP error, as Deepgram does (status, dg-error header,
    JSON body); nothing is opened. `code`: the server's error code (metrics)."""

    def __init__(self, status: int, err_code: str, err_msg: str, code: str = "bad_request") -> None:
        super().__init__(err_msg)
        self.status, self.err_code, self.err_msg, self.code = status, err_code, err_msg, code
        self.request_id = str(uuid.uuid4())

    def body(self) -> dict[str, Any]:
        return {"err_code": self.err_code, "err_msg": self.err_msg, "request_id": self.request_id}

    def http(self) -> tuple[int, bytes, str, tuple[tuple[str, str], ...]]:
        """(status, body, code, headers) of the HTTP answer to the upgrade request."""
        body = json.dumps(self.body()).encode()
        return self.status, body, self.code, (("dg-error", self.err_msg), ("dg-request-id", self.request_id))


def _bad(message: str) -> ListenRejected:
    return ListenRejected(400, "Bad Request", message)


# --- the upgrade request ---------------------------------------------------------------------


@dataclass(frozen=True)
class ListenOptions:
    encoding: str = "linear16"
    sample_rate: int | None = None  # None: the server's --sample-rate (only without `encoding`)
    interim_results: bool = False
    endpointing_ms: int | None = None  # None: the server's endpointing; 0: off (`endpointing=false`)
    utterance_end_ms: int | None = None
    vad_events: bool = False
    punctuate: bool = False
    smart_format: bool = False
    model: str | None = None
    language: str | None = None
    keyterms: tuple[str | tuple[str, float], ...] = ()  # `keyterm`s, then `keywords` (intensifier: weight)

    @property
    def audio_encoding(self) -> str:
        """The name `audio.decode` knows."""
        return ENCODINGS[self.encoding]

    @property
    def formatted(self) -> bool:
        """Transcripts keep the model's casing and punctuation (Deepgram: punctuate / smart_format)."""
        return self.punctuate or self.smart_format

    @property
    def silence_ms(self) -> int | None:
        """This stream's silence endpointing: `endpointing`, else `utterance_end_ms`, else the server's."""
        if self.endpointing_ms is not None:
            return self.endpointing_ms
        return self.utterance_end_ms


def parse_query(query: Mapping[str, Sequence[str]]) -> ListenOptions:
    """`parse_qs` of the upgrade URL -> options. Raises ListenRejected (HTTP 400)."""
    last = {k: v[-1] for k, v in query.items() if v}
    encoding = last.get("encoding", "linear16").lower()
    if encoding not in ENCODINGS:
        raise _bad(f"Unsupported encoding {last['encoding']!r}: this server decodes raw "
                   f"{', '.join(ENCODINGS)} audio (containerized audio is not supported).")
    if "encoding" in last and "sample_rate" not in last:
        raise _bad("sample_rate is required when encoding is set.")
    rate = _int(last, "sample_rate", 1000, 384_000)
    channels = _int(last, "channels", 1, 64)
    if channels not in (None, 1):
        raise _bad(f"channels={channels} is not supported: send mono audio (channels=1).")
    if _flag(last, "multichannel"):
        raise _bad("multichannel=true is not supported: send mono audio.")
    endpointing = last.get("endpointing")
    if endpointing is not None and endpointing.lower() in ("false", "true"):
        endpointing_ms = 0 if endpointing.lower() == "false" else None  # true: the server's own
    else:
        endpointing_ms = _int(last, "endpointing", 0, MAX_ENDPOINTING_MS)
    keyterms = tuple(query.get("keyterm", ())) + tuple(_keyword(k) for k in query.get("keywords", ()))
    return ListenOptions(
        encoding=encoding, sample_rate=rate, interim_results=bool(_flag(last, "interim_results")),
        endpointing_ms=endpointing_ms, utterance_end_ms=_int(last, "utterance_end_ms", 1, MAX_ENDPOINTING_MS),
        vad_events=bool(_flag(last, "vad_events")), punctuate=bool(_flag(last, "punctuate")),
        smart_format=bool(_flag(last, "smart_format")), model=last.get("model"), language=last.get("language"),
        keyterms=keyterms)


def _keyword(value: str) -> str | tuple[str, float]:
    """`keywords=word` or `word:intensifier`; the intensifier is the phrase's weight (docs/keyterms.md)."""
    try:
        return parse_weighted(value)
    except KeytermError as exc:
        raise _bad(f"keywords: {exc}; a negative intensifier (suppressing a word) is not supported.") from exc


def _int(query: Mapping[str, str], name: str, lo: int, hi: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not value.strip().isdigit() or not lo <= int(value) <= hi:
        raise _bad(f"{name} must be an integer in {lo}..{hi}, got {value!r}.")
    return int(value)


def _flag(query: Mapping[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None:
        return None
    if value.lower() not in ("true", "false", "1", "0"):
        raise _bad(f"{name} must be true or false, got {value!r}.")
    return value.lower() in ("true", "1")


api_key = request_token  # Deepgram's `Authorization: Token KEY`, or `Bearer KEY`, or `?token=KEY`


def upgrade_check(request: Request, ctx: ServerContext) -> ListenRejected | None:
    """Deepgram refuses a bad request before the WebSocket upgrade: HTTP 400 for a bad parameter,
    401 for a missing or wrong key (when the server has keys)."""
    query = parse_qs(urlsplit(request.path).query)
    if not ctx.auth.check(api_key(request.headers, query)):
        return ListenRejected(401, "INVALID_AUTH", "Invalid credentials.", code="unauthorized")
    try:
        options = parse_query(query)
        if options.keyterms:  # can the model spell them? (compiled once: the stream reuses the tree)
            ctx.engine.compile_keyterms(options.keyterms)
    except ListenRejected as exc:
        return exc
    except KeytermError as exc:
        return _bad(f"keyterm: {exc}.")
    return None


# --- client messages -------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    data: bytes


@dataclass(frozen=True)
class KeepAlive:
    pass


@dataclass(frozen=True)
class Finalize:
    pass


@dataclass(frozen=True)
class CloseStream:
    pass


@dataclass(frozen=True)
class Configure:
    raw: dict[str, Any]


ClientMessage = Media | KeepAlive | Finalize | CloseStream | Configure
_CONTROL = {"KeepAlive": KeepAlive(), "Finalize": Finalize(), "CloseStream": CloseStream()}


class SchemaError(Exception):
    """A text message we cannot use; answered with an `Error` message, the stream goes on."""

    def __init__(self, description: str, message: str) -> None:
        super().__init__(description)
        self.description, self.message = description, message


def parse_binary(payload: bytes) -> Media | CloseStream:
    """Audio. An empty binary frame is Deepgram's legacy way to close the stream."""
    return Media(bytes(payload)) if payload else CloseStream()


def parse_text(text: str | bytes) -> ClientMessage:
    raw = text.decode("utf-8", "replace") if isinstance(text, (bytes, bytearray)) else text
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SchemaError(f"Could not parse the message as JSON: {exc}", raw[:500]) from exc
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind in _CONTROL:
        return _CONTROL[kind]
    if kind == "Configure":
        return Configure(obj)
    known = ", ".join([*_CONTROL, "Configure"])
    raise SchemaError(f"Unknown message type {kind!r} (known: {known}); audio goes in binary frames.", raw[:500])


# --- server messages -------------------------------------------------------------------------


ARCH = "fastconformer-rnnt"


def model_uuid(name: str) -> str:
    """A stable id for the served model (Deepgram's `model_uuid`)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"parakeet-streaming:{name}"))


def _model_info(name: str) -> dict[str, str]:
    return {"name": name, "version": "1", "arch": ARCH}


def schema_error(exc: SchemaError) -> dict[str, Any]:
    return {"type": "Error", "variant": "SchemaError", "description": exc.description, "message": exc.message}


def configure_failure(request_id: str, description: str) -> dict[str, Any]:
    return {"type": "ConfigureFailure", "request_id": request_id, "code": "CONFIGURE_NOT_SUPPORTED",
            "description": description}


def word_form(text: str) -> str:
    """Deepgram's `word`: lowercase, without leading or trailing punctuation."""
    start, end = 0, len(text)
    while start < end and unicodedata.category(text[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(text[end - 1]).startswith("P"):
        end -= 1
    return text[start:end].lower()


def results(*, start_ms: int, end_ms: int, transcript: str, words: Sequence[Word], request_id: str,
            model: str, is_final: bool, speech_final: bool, formatted: bool,
            from_finalize: bool = False) -> dict[str, Any]:
    items = []
    for w in words:
        plain = word_form(w.word)
        if not plain:
            continue
        item = {"word": plain, "start": w.start_ms / 1000, "end": w.end_ms / 1000,
                "confidence": round(float(w.confidence), 4)}
        if formatted:
            item["punctuated_word"] = w.word
        items.append(item)
    confidence = round(sum(i["confidence"] for i in items) / len(items), 4) if items else 0.0
    msg: dict[str, Any] = {
        "type": "Results", "channel_index": [0, 1], "duration": round((end_ms - start_ms) / 1000, 3),
        "start": round(start_ms / 1000, 3), "is_final": is_final, "speech_final": speech_final,
        "channel": {"alternatives": [{"transcript": transcript, "confidence": confidence, "words": items}]},
        "metadata": {"request_id": request_id, "model_uuid": model_uuid(model), "model_info": _model_info(model)},
    }
    if from_finalize:
        msg["from_finalize"] = True
    return msg


def utterance_end(last_word_end_ms: int) -> dict[str, Any]:
    return {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end_ms / 1000}


def speech_started(timestamp_ms: int) -> dict[str, Any]:
    return {"type": "SpeechStarted", "channel": [0, 1], "timestamp": timestamp_ms / 1000}


def metadata(*, request_id: str, sha256: str, created: str, duration_s: float, model: str,
             instance: str | None = None) -> dict[str, Any]:
    msg = {"type": "Metadata", "transaction_key": "deprecated", "request_id": request_id, "sha256": sha256,
           "created": created, "duration": round(duration_s, 3), "channels": 1, "models": [model_uuid(model)],
           "model_info": {model_uuid(model): _model_info(model)}}
    if instance is not None:  # our addition: which server (replica, pod) served the stream
        msg["instance"] = instance
    return msg


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- engine events -> Deepgram messages --------------------------------------------------------


@dataclass
class Transcript:
    """One stream's engine events -> `Results` / `UtteranceEnd` / `SpeechStarted` (plain dicts).

    Feed every engine event of the stream in order to `on_result` / `on_utterance_end`; each returns
    the messages to send. `finalize_requested()` marks that the next flushed Result answers a
    `Finalize`. See the module docstring for when a segment becomes final.
    """

    options: ListenOptions
    model: str  # the served model's name
    request_id: str
    _seg_start_ms: int = 0
    _seg_char: int = 0  # where the segment starts in the stream's transcript text
    _text: str = ""  # the stream's transcript so far
    _audio_ms: int = 0
    _words: list[Word] = field(default_factory=list)  # complete words of the segment
    _pending: list[tuple[int, float]] = field(default_factory=list)  # (start, conf) of tokens after them
    _speaking: bool = False  # SpeechStarted sent for the current utterance
    _finalizes: int = 0  # Finalize messages not yet answered

    def finalize_requested(self) -> None:
        self._finalizes += 1

    def on_result(self, ev: Result) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        grew = len(ev.text) > len(self._text)
        if grew and self.options.vad_events and not self._speaking and ev.token_start_ms:
            out.append(speech_started(ev.token_start_ms[0]))
        self._speaking = self._speaking or grew
        self._text, self._audio_ms = ev.text, max(self._audio_ms, ev.audio_ms)
        self._words += ev.words
        self._pending = [] if ev.words else self._pending
        self._pending += list(zip(ev.token_start_ms, ev.confidences))
        if ev.flushed:
            answered = self._finalizes > 0
            self._finalizes = max(0, self._finalizes - 1)
            out.append(self._final(speech_final=False, from_finalize=answered, end_ms=ev.audio_ms))
        elif ev.is_final:
            if self.segment_text():
                out.append(self._final(speech_final=False, from_finalize=False, end_ms=ev.audio_ms))
        elif grew and self.options.interim_results:
            out.append(self._interim())
        return out

    def on_utterance_end(self, ev: UtteranceEnd) -> list[dict[str, Any]]:
        self._words += ev.words
        self._speaking = False
        if ev.reason == "flush":
            return []  # the flushed Result before it already finalized the segment
        had_words = bool(self._words)
        last_end = self._words[-1].end_ms if self._words else ev.audio_ms
        out = [self._final(speech_final=True, from_finalize=False, end_ms=max(ev.audio_ms, self._seg_start_ms))]
        if self.options.utterance_end_ms is not None and had_words:
            out.append(utterance_end(last_end))
        return out

    def segment_text(self) -> str:
        return self._text[self._seg_char:].strip()

    def _transcript(self, words: Sequence[Word]) -> str:
        if self.options.formatted:
            return self.segment_text()
        return " ".join(p for p in (word_form(w.word) for w in words) if p)

    def _interim(self) -> dict[str, Any]:
        words = list(self._words)
        done = " ".join(w.word for w in words)
        text = self.segment_text()
        tail = text[len(done):].strip() if text.startswith(done) else ""
        if tail and self._pending:
            start = max(self._pending[0][0], words[-1].end_ms if words else self._seg_start_ms)
            words.append(Word(tail, start, max(start, self._audio_ms), min(c for _, c in self._pending)))
        return results(start_ms=self._seg_start_ms, end_ms=max(self._audio_ms, self._seg_start_ms),
                       transcript=self._transcript(words), words=words, request_id=self.request_id,
                       model=self.model, is_final=False, speech_final=False, formatted=self.options.formatted)

    def _final(self, *, speech_final: bool, from_finalize: bool, end_ms: int) -> dict[str, Any]:
        msg = results(start_ms=self._seg_start_ms, end_ms=end_ms, transcript=self._transcript(self._words),
                      words=self._words, request_id=self.request_id, model=self.model, is_final=True,
                      speech_final=speech_final, formatted=self.options.formatted, from_finalize=from_finalize)
        self._seg_start_ms, self._seg_char = end_ms, len(self._text)
        self._words, self._pending = [], []
        return msg


@dataclass
class AudioDigest:
    """What the closing `Metadata` reports about the audio received: its SHA-256 and duration."""

    sample_rate: int
    bytes_per_sample: int
    _sha: Any = field(default_factory=hashlib.sha256)
    _bytes: int = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self._bytes += len(data)

    @property
    def duration_s(self) -> float:
        return self._bytes / self.bytes_per_sample / self.sample_rate

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()


# --- the per-connection protocol object (server/wire.py) ------------------------------------------


class DeepgramStream(StreamProtocol):
    """`/v1/listen` for one connection. WAITING (no audio yet, no slot) --audio / Finalize /
    CloseStream--> STREAMING --CloseStream / fatal error--> FINISHING --final Result: final
    `Results`, `Metadata`--> CLOSED. There is no greeting: Deepgram sends nothing until it has
    results. Fatal errors (timeouts, a message over --max-message-bytes, --max-stream-seconds,
    shutdown) send an `Error`, decode what was received, then `Metadata` and close with a code."""

    def __init__(self, request: Request, config: ServerConfig, model: ModelInfo) -> None:
        super().__init__(request, config, model)
        self.options = ListenOptions()
        self.request_id = str(uuid.uuid4())
        self._transcript = Transcript(self.options, model.name, self.request_id)
        self._bytes = ByteAudio("pcm16")
        self._digest = AudioDigest(config.sample_rate, 2)

    # --- inputs ------------------------------------------------------------------------------
    def open(self, stream_id: int, now: float) -> None:
        self._last = now
        try:
            self.options = parse_query(parse_qs(urlsplit(self.request.path).query))
        except ListenRejected as exc:
            self.outcome = "bad_request"
            self._error("BadRequest", exc.err_msg, code="bad_request")
            self._close(CLOSE_POLICY, exc.err_msg)
            return
        rate = self.options.sample_rate or self.config.sample_rate
        self.intake = AudioIntake(rate, self.model.sample_rate, self.config.max_stream_seconds)
        self._bytes = ByteAudio(self.options.audio_encoding)
        self._digest = AudioDigest(rate, self._bytes.sample_bytes)
        self._transcript = Transcript(self.options, self.model.name, self.request_id)
        if self.options.silence_ms is not None:
            self._out.append(Endpointing(self.options.silence_ms))
        if self.options.keyterms:
            self._out.append(Keyterms(self.options.keyterms))

    def refuse(self, code: str, message: str) -> None:
        self.outcome = code
        self._error(code, message, code=code)
        self._close(CLOSE_POLICY if code == "unauthorized" else CLOSE_AGAIN, message)

    def receive(self, message: Message, now: float) -> None:
        self._last = now
        if self._fatal or self.state in (State.CLOSED, State.FINISHING):
            return  # after CloseStream or a fatal error nothing more is taken
        try:
            if message is OVERSIZED or len(message) > self.config.max_message_bytes:
                self._fail("message_too_large", f"message larger than {self.config.max_message_bytes} bytes",
                           CLOSE_TOO_BIG)
            elif isinstance(message, bytes):
                self._handle(parse_binary(message))
            else:
                self._handle(parse_text(message))
        except SchemaError as exc:
            self._send(schema_error(exc), error="bad_json")
        except Exception:  # noqa: BLE001 - never let one stream take the server down
            log.exception("deepgram stream %s: internal error", self.request_id)
            self._fail("internal", "internal server error", CLOSE_ERROR)

    def engine_event(self, event: Event) -> None:
        if self.state is State.CLOSED:
            return
        if isinstance(event, Result):
            for msg in self._transcript.on_result(event):
                self._send(msg)
            if event.is_final:
                self._send(metadata(request_id=self.request_id, sha256=self._digest.sha256, created=now_iso(),
                                    duration_s=self._digest.duration_s, model=self.model.name,
                                    instance=self.model.instance))
                self._ended()
        elif isinstance(event, UtteranceEnd):
            for msg in self._transcript.on_utterance_end(event):
                self._send(msg)
        elif isinstance(event, StreamFailed):
            self.outcome = event.code
            self._error(event.code, event.message, code=event.code)
            self._close(CLOSE_AGAIN if event.code in ("server_full", "shutting_down") else CLOSE_ERROR,
                        event.message)
        elif isinstance(event, KeytermsRejected):  # upgrade_check refuses these first, where it runs
            self._fail("bad_request", f"keyterm: {event.message}", CLOSE_POLICY)

    def stop(self, code: str = "shutting_down", message: str = "server is shutting down") -> None:
        self._fail(code, message, CLOSE_AGAIN)

    def timeout(self, now: float) -> None:
        code, message = self._expired()
        self._fail(code, f"NET-0001: {message}", CLOSE_ERROR)

    # --- client messages ---------------------------------------------------------------------
    def _handle(self, msg: ClientMessage) -> None:
        if isinstance(msg, Media):
            self._digest.update(msg.data)
            if self._push(self._bytes.decode(msg.data)):
                limit = self.config.max_stream_seconds
                self._fail("stream_too_long", f"stream exceeded {limit:g} s of audio; finalized", CLOSE_POLICY)
        elif isinstance(msg, Finalize):
            self._transcript.finalize_requested()
            self._flush()
        elif isinstance(msg, CloseStream):
            self._finish()
        elif isinstance(msg, Configure):
            self._send(configure_failure(self.request_id, "Configure is not supported by this server; "
                                         "reconnect with new query parameters"), error="bad_config")

    def _fail(self, code: str, message: str, close_code: int) -> None:
        """A fatal error: report it once, take no more input, decode what came, then Metadata and close."""
        if self._fatal_error(code, close_code, message[:120]):
            self._error(code, message, code=code)
            self._finish_or_close()

    def _error(self, variant: str, description: str, code: str) -> None:
        self._send({"type": "Error", "variant": variant, "description": description}, error=code)
