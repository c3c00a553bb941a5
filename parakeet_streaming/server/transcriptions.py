"""OpenAI-compatible file transcription on the HTTP port: `POST /v1/audio/transcriptions`, and
`GET /v1/models` (the one model, as OpenAI clients list models).

Multipart form as OpenAI's API takes it: `file` (WAV), `model` (accepted, not used: the server has
one model), `response_format` (json | text | verbose_json | srt | vtt), `stream` (true: server-sent
`transcript.text.delta` events, then `transcript.text.done`), `timestamp_granularities[]` (word adds
`words` to verbose_json). `language`, `prompt`, `temperature` are accepted and ignored.

A file is one engine stream (engine/handle.py): it takes a slot like a live stream (none free: 429
`server_full`) and all its audio is queued at once. The engine steps every ready stream once per batched step, so a
file advances one chunk per step next to the live streams: faster than real time, never ahead of them.
"""
from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

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


class RequestError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def response(self) -> web.Response:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        body = {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}
        return web.json_response(body, status=self.status)


def add_routes(app: web.Application, ctx: ServerContext) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await transcriptions(ctx, request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [_model_entry(ctx)]})

    async def model(request: web.Request) -> web.Response:
        if request.match_info["model"] != ctx.model.name:
            return RequestError(404, "model_not_found", f"the model {request.match_info['model']!r} does not "
                                f"exist; this server has {ctx.model.name!r}", "model").response()
        return web.json_response(_model_entry(ctx))

    app.router.add_post(PATH, handler)
    app.router.add_get(MODELS_PATH, models)
    app.router.add_get(MODELS_PATH + "/{model:.+}", model)


def _model_entry(ctx: ServerContext) -> dict[str, Any]:
    """OpenAI's Model object. Any `model` value is accepted by the transcription route."""
    return {"id": ctx.model.name, "object": "model", "created": 0, "owned_by": "parakeet-streaming"}


async def transcriptions(ctx: ServerContext, request: web.Request) -> web.StreamResponse:
    stream_id: int | None = None
    try:
        if ctx.draining:
            raise RequestError(503, proto.SHUTTING_DOWN, "server is shutting down")
        if ctx.loading is not None:
            raise RequestError(503, "model_loading", f"the model is still loading ({ctx.loading}); "
                               "GET /readyz answers 200 once it is ready")
        form, data, filename = await _read_form(request)
        response_format = form.get("response_format", "json")
        if response_format not in fmt.FORMATS:
            raise RequestError(400, "bad_request", f"response_format must be one of {', '.join(fmt.FORMATS)}",
                               "response_format")
        try:
            stream = proto.parse_flag("stream", form.get("stream", "false") or "false")
        except proto.ProtocolError as exc:
            raise RequestError(400, "bad_request", exc.message, "stream") from exc
        samples, duration = await _decode(data, filename, ctx.model.sample_rate, ctx.config.max_stream_seconds)
        # Left at once, not when collected: a departed client frees its slot now.
        async with EngineStream(ctx.engine) as engine_stream:
            stream_id = engine_stream.stream_id
            try:
                await engine_stream.wait_open()  # a full server fails here, before any response
            except StreamRefused as exc:
                raise RequestError(429 if exc.code == proto.SERVER_FULL else 503, exc.code, exc.message) from exc
            engine_stream.send(samples, final=True)
            if stream:
                response = await _stream_sse(request, _until_final(engine_stream))
                log.info("transcription stream %d: %.2f s of %s -> server-sent events (%s)", stream_id, duration,
                         filename or "audio", request.remote, extra={"stream_id": stream_id, "status": 200})
                return response
            transcript = fmt.collect([ev async for ev in _until_final(engine_stream)], duration)
    except RequestError as exc:
        if exc.code in (proto.SERVER_FULL, proto.SHUTTING_DOWN):
            ctx.metrics.reject(exc.code)
        ctx.metrics.error(exc.code)
        log.info("transcription %s refused: %d %s: %s (%s)", "-" if stream_id is None else f"stream {stream_id}",
                 exc.status, exc.code, exc.message, request.remote,
                 extra={"stream_id": stream_id, "status": exc.status, "code": exc.code})
        return exc.response()
    log.info("transcription stream %d: %.2f s of %s -> %s, %d characters (%s)", stream_id, duration,
             filename or "audio", response_format, len(transcript.text), request.remote,
             extra={"stream_id": stream_id, "status": 200, "audio_seconds": round(duration, 3)})
    words = "word" in form.get_all("timestamp_granularities[]")
    body = fmt.render(transcript, response_format, words)
    if isinstance(body, dict):
        return web.json_response(body)
    return web.Response(text=body, content_type=fmt.CONTENT_TYPES[response_format], charset="utf-8")


@dataclass
class _Form:
    """The form's text fields; a name may repeat (`timestamp_granularities[]`)."""

    fields: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str, default: str) -> str:
        values = self.fields.get(name)
        return values[-1] if values else default

    def get_all(self, name: str) -> list[str]:
        return self.fields.get(name, [])


async def _read_form(request: web.Request) -> tuple[_Form, bytes, str | None]:
    """The text fields, the file's bytes and the file's name as the client gave it."""
    if not request.content_type.startswith("multipart/"):
        raise RequestError(400, "bad_request", "expected a multipart/form-data body with a 'file' part")
    form, data, filename = _Form(), None, None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            filename = part.filename
            data = await _read_capped(part, MAX_FILE_BYTES, "file")
        elif part.name:
            value = (await _read_capped(part, MAX_FIELD_BYTES, part.name)).decode("utf-8", "replace")
            form.fields.setdefault(part.name, []).append(value)
    if data is None:
        raise RequestError(400, "bad_request", "the form has no 'file' part", "file")
    return form, data, filename


async def _read_capped(part: BodyPartReader, cap: int, name: str) -> bytes:
    out = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        out += chunk
        if len(out) > cap:
            raise RequestError(413, proto.MESSAGE_TOO_LARGE, f"'{name}' is larger than {cap} bytes", name)
    return bytes(out)


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


async def _stream_sse(request: web.Request, events: AsyncIterator[Event]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    text = ""
    try:
        async for ev in events:
            if isinstance(ev, Result) and ev.text != text:
                delta = ev.text[len(text):] if ev.text.startswith(text) else ev.text
                text = ev.text
                await _sse(response, {"type": "transcript.text.delta", "delta": delta})
            if isinstance(ev, Result) and ev.is_final:
                await _sse(response, {"type": "transcript.text.done", "text": ev.text})
        await response.write_eof()
    except RequestError as exc:  # headers are sent: report it the way OpenAI's streams do
        await _sse(response, {"error": {"message": exc.message, "type": "server_error", "code": exc.code}})
        await response.write_eof()
    except ConnectionResetError:  # the client left; the caller aborts the engine stream
        log.debug("transcription client disconnected mid-stream")
    return response


async def _sse(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())
