"""OpenAI-compatible file transcription: `POST /v1/audio/transcriptions`, and `GET /v1/models` (the
one model, as OpenAI clients list models), for any HTTP transport.

Multipart form as OpenAI's API takes it: `file` (WAV), `model` (accepted, not used: the server has
one model), `response_format` (json | text | verbose_json | srt | vtt), `stream` (true: server-sent
`transcript.text.delta` events, then `transcript.text.done`), `timestamp_granularities[]` (word adds
`words` to verbose_json). `language`, `prompt`, `temperature` are accepted and ignored.

A file is one engine stream (engine/handle.py): it takes a slot like a live stream (none free: 429
`server_full`) and all its audio is queued at once. The engine steps every ready stream once per batched step, so a
file advances one chunk per step next to the live streams: faster than real time, never ahead of them.

The route itself is transport-free: a transport feeds the form's parts to a `FormReader` (inside the
`read_form` callable it passes to `transcribe`) and writes the `Reply` it gets back. The aiohttp
routes of the HTTP port are at the end of this module; deploy/asgi.py serves the same on ASGI.
"""
from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
from aiohttp import BodyPartReader, web

from parakeet_streaming import audio
from parakeet_streaming.engine.events import Event, Result, StreamFailed
from parakeet_streaming.engine.handle import EngineStream, StreamRefused
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server import transcript_formats as fmt
from parakeet_streaming.server.context import ServerContext

log = logging.getLogger("parakeet_streaming.transcriptions")

PATH = "/v1/audio/transcriptions"
MODELS_PATH = "/v1/models"
SUPPORTED = ("WAV: PCM 8/16/24/32-bit or 32/64-bit float, any sample rate, any number of channels; "
             "convert others first, e.g. ffmpeg -i {name} -ar 16000 -ac 1 audio.wav")
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
JSON = "application/json; charset=utf-8"
SSE = "text/event-stream"


@dataclass
class Reply:
    """One response of these routes, for the transport to write: `body` at once, or, when `events`
    is set, the headers and then each server-sent event as it comes. The transport calls `close()`
    when it is done or the client left (it frees the file's engine slot)."""

    status: int
    content_type: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    events: AsyncIterator[bytes] | None = None
    close: Callable[[], None] = lambda: None


class RequestError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def reply(self) -> Reply:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return _json(body, self.status)


@dataclass
class Form:
    """The form's text fields (a name may repeat: `timestamp_granularities[]`), the file's bytes and
    the file's name as the client gave it."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    data: bytes | None = None
    filename: str | None = None

    def get(self, name: str, default: str) -> str:
        values = self.fields.get(name)
        return values[-1] if values else default


class FormReader:
    """Collects a multipart form as a transport parses it, part by part (`begin`, `feed`..., `end`),
    within the size limits."""

    def __init__(self) -> None:
        self.form = Form()
        self._part: tuple[str | None, str | None] | None = None
        self._buf = bytearray()

    def begin(self, name: str | None, filename: str | None) -> None:
        self._part, self._buf = (name, filename), bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._part is None or not self._part[0]:
            return  # a part without a name is skipped
        name = self._part[0]
        cap = MAX_FILE_BYTES if name == "file" else MAX_FIELD_BYTES
        self._buf += chunk
        if len(self._buf) > cap:
            raise RequestError(413, proto.MESSAGE_TOO_LARGE, f"'{name}' is larger than {cap} bytes", name)

    def end(self) -> None:
        if self._part is None or not self._part[0]:
            return
        name, filename = self._part
        if name == "file":
            self.form.data, self.form.filename = bytes(self._buf), filename
        else:
            self.form.fields.setdefault(name, []).append(self._buf.decode("utf-8", "replace"))
        self._part, self._buf = None, bytearray()


ReadForm = Callable[[FormReader], Awaitable[None]]


async def transcribe(ctx: ServerContext, content_type: str, read_form: ReadForm, peer: str) -> Reply:
    """The route: `content_type` is the request's Content-Type header; `read_form` parses the body
    into the reader it is given (and may raise RequestError); `peer` names the client in logs."""
    stream_id: int | None = None
    handed_over = False
    engine_stream: EngineStream | None = None
    try:
        if ctx.draining:
            raise RequestError(503, proto.SHUTTING_DOWN, "server is shutting down")
        if ctx.loading is not None:
            raise RequestError(503, "model_loading", f"the model is still loading ({ctx.loading}); "
                               "GET /readyz answers 200 once it is ready")
        if not content_type.lower().startswith("multipart/"):
            raise RequestError(400, "bad_request", "expected a multipart/form-data body with a 'file' part")
        reader = FormReader()
        await read_form(reader)
        form = reader.form
        if form.data is None:
            raise RequestError(400, "bad_request", "the form has no 'file' part", "file")
        response_format = form.get("response_format", "json")
        if response_format not in fmt.FORMATS:
            raise RequestError(400, "bad_request", f"response_format must be one of {', '.join(fmt.FORMATS)}",
                               "response_format")
        try:
            stream = proto.parse_flag("stream", form.get("stream", "false") or "false")
        except proto.ProtocolError as exc:
            raise RequestError(400, "bad_request", exc.message, "stream") from exc
        samples, duration = await _decode(form.data, form.filename, ctx.model.sample_rate,
                                          ctx.config.max_stream_seconds)
        engine_stream = EngineStream(ctx.engine)
        stream_id = engine_stream.stream_id
        try:
            await engine_stream.wait_open()  # a full server fails here, before any response
        except StreamRefused as exc:
            raise RequestError(429 if exc.code == proto.SERVER_FULL else 503, exc.code, exc.message) from exc
        engine_stream.send(samples, final=True)
        if stream:
            log.info("transcription stream %d: %.2f s of %s -> server-sent events (%s)", stream_id, duration,
                     form.filename or "audio", peer, extra={"stream_id": stream_id, "status": 200})
            handed_over = True
            return Reply(200, SSE, headers=(("Cache-Control", "no-cache"),), events=_sse(_until_final(engine_stream)),
                         close=engine_stream.abort)
        transcript = fmt.collect([ev async for ev in _until_final(engine_stream)], duration)
    except RequestError as exc:
        if exc.code in (proto.SERVER_FULL, proto.SHUTTING_DOWN):
            ctx.metrics.reject(exc.code)
        ctx.metrics.error(exc.code)
        log.info("transcription %s refused: %d %s: %s (%s)", "-" if stream_id is None else f"stream {stream_id}",
                 exc.status, exc.code, exc.message, peer,
                 extra={"stream_id": stream_id, "status": exc.status, "code": exc.code})
        return exc.reply()
    finally:
        if engine_stream is not None and not handed_over:
            engine_stream.abort()  # left at once, not when collected: a departed client frees its slot now
    log.info("transcription stream %d: %.2f s of %s -> %s, %d characters (%s)", stream_id, duration,
             form.filename or "audio", response_format, len(transcript.text), peer,
             extra={"stream_id": stream_id, "status": 200, "audio_seconds": round(duration, 3)})
    body = fmt.render(transcript, response_format, "word" in form.fields.get("timestamp_granularities[]", []))
    if isinstance(body, dict):
        return _json(body)
    return Reply(200, f"{fmt.CONTENT_TYPES[response_format]}; charset=utf-8", body.encode())


def models(ctx: ServerContext) -> Reply:
    return _json({"object": "list", "data": [_model_entry(ctx)]})


def model(ctx: ServerContext, name: str) -> Reply:
    if name != ctx.model.name:
        return RequestError(404, "model_not_found", f"the model {name!r} does not exist; this server has "
                            f"{ctx.model.name!r}", "model").reply()
    return _json(_model_entry(ctx))


def _model_entry(ctx: ServerContext) -> dict[str, Any]:
    """OpenAI's Model object. Any `model` value is accepted by the transcription route."""
    return {"id": ctx.model.name, "object": "model", "created": 0, "owned_by": "parakeet-streaming"}


def _json(payload: dict[str, Any], status: int = 200) -> Reply:
    return Reply(status, JSON, json.dumps(payload, ensure_ascii=False).encode())


async def _decode(data: bytes, filename: str | None, model_rate: int, max_seconds: float
                  ) -> tuple[np.ndarray, float]:
    def decode() -> tuple[np.ndarray, int]:
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(data)
            f.flush()
            try:
                return audio.read_wav(f.name)
            except audio.AudioError as exc:  # its message names our temporary file: name the upload
                raise audio.AudioError(str(exc).replace(f"{f.name}: ", "").replace(f.name, "the file")) from exc

    name = filename or "the uploaded file"
    try:
        samples, rate = await asyncio.to_thread(decode)
    except audio.AudioError as exc:
        raise RequestError(400, "unsupported_format", f"cannot read {name!r} as WAV: {exc} (supported: "
                           f"{SUPPORTED.format(name=filename or 'input')})", "file") from exc
    duration = len(samples) / rate
    if duration > max_seconds:
        raise RequestError(400, proto.STREAM_TOO_LONG, f"the file is {duration:.0f} s long; the limit is "
                           f"{max_seconds:g} s", "file")
    return await asyncio.to_thread(audio.resample, samples, rate, model_rate), duration


async def _until_final(stream: EngineStream) -> AsyncIterator[Event]:
    """The stream's events up to the final result; a failure is a server error."""
    async for event in stream:
        if isinstance(event, StreamFailed):
            raise RequestError(500, event.code, event.message)
        yield event


async def _sse(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed transcription: text deltas, then the whole text."""
    text = ""
    try:
        async for ev in events:
            if isinstance(ev, Result) and ev.text != text:
                delta = ev.text[len(text):] if ev.text.startswith(text) else ev.text
                text = ev.text
                yield _event({"type": "transcript.text.delta", "delta": delta})
            if isinstance(ev, Result) and ev.is_final:
                yield _event({"type": "transcript.text.done", "text": ev.text})
    except RequestError as exc:  # headers are sent: report it the way OpenAI's streams do
        yield _event({"error": {"message": exc.message, "type": "server_error", "code": exc.code}})


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


# --- the aiohttp routes of the HTTP port (server/http.py) ----------------------------------------


def add_routes(app: web.Application, ctx: ServerContext) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        async def read_form(reader: FormReader) -> None:
            parts = await request.multipart()
            while (part := await parts.next()) is not None:
                if isinstance(part, BodyPartReader):
                    reader.begin(part.name, part.filename)
                    while chunk := await part.read_chunk(1 << 16):
                        reader.feed(chunk)
                    reader.end()

        return await _write(request, await transcribe(ctx, request.content_type, read_form, str(request.remote)))

    async def list_models(request: web.Request) -> web.StreamResponse:
        return await _write(request, models(ctx))

    async def get_model(request: web.Request) -> web.StreamResponse:
        return await _write(request, model(ctx, request.match_info["model"]))

    app.router.add_post(PATH, handler)
    app.router.add_get(MODELS_PATH, list_models)
    app.router.add_get(MODELS_PATH + "/{model:.+}", get_model)


async def _write(request: web.Request, reply: Reply) -> web.StreamResponse:
    headers = {"Content-Type": reply.content_type, **dict(reply.headers)}
    if reply.events is None:
        return web.Response(status=reply.status, body=reply.body, headers=headers)
    response = web.StreamResponse(status=reply.status, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in reply.events:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionResetError:  # the client left
        log.debug("transcription client disconnected mid-stream")
    finally:
        reply.close()
    return response
