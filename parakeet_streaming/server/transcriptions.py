"""OpenAI-compatible file transcription on the HTTP port: `POST /v1/audio/transcriptions`.

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

    app.router.add_post(PATH, handler)


async def transcriptions(ctx: ServerContext, request: web.Request) -> web.StreamResponse:
    try:
        if ctx.draining:
            raise RequestError(503, proto.SHUTTING_DOWN, "server is shutting down")
        form, data = await _read_form(request)
        response_format = form.get("response_format", "json")
        if response_format not in fmt.FORMATS:
            raise RequestError(400, "bad_request", f"response_format must be one of {', '.join(fmt.FORMATS)}",
                               "response_format")
        try:
            stream = proto.parse_flag("stream", form.get("stream", "false") or "false")
        except proto.ProtocolError as exc:
            raise RequestError(400, "bad_request", exc.message, "stream") from exc
        samples, duration = await _decode(data, ctx.model.sample_rate, ctx.config.max_stream_seconds)
        # Left at once, not when collected: a departed client frees its slot now.
        async with EngineStream(ctx.engine) as engine_stream:
            try:
                await engine_stream.wait_open()  # a full server fails here, before any response
            except StreamRefused as exc:
                raise RequestError(429 if exc.code == proto.SERVER_FULL else 503, exc.code, exc.message) from exc
            engine_stream.send(samples, final=True)
            if stream:
                return await _stream_sse(request, _until_final(engine_stream))
            transcript = fmt.collect([ev async for ev in _until_final(engine_stream)], duration)
    except RequestError as exc:
        if exc.code in (proto.SERVER_FULL, proto.SHUTTING_DOWN):
            ctx.metrics.reject(exc.code)
        ctx.metrics.error(exc.code)
        return exc.response()
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


async def _read_form(request: web.Request) -> tuple[_Form, bytes]:
    if not request.content_type.startswith("multipart/"):
        raise RequestError(400, "bad_request", "expected a multipart/form-data body with a 'file' part")
    form, data = _Form(), None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "file":
            data = await _read_capped(part, MAX_FILE_BYTES, "file")
        elif part.name:
            value = (await _read_capped(part, MAX_FIELD_BYTES, part.name)).decode("utf-8", "replace")
            form.fields.setdefault(part.name, []).append(value)
    if data is None:
        raise RequestError(400, "bad_request", "the form has no 'file' part", "file")
    return form, data


async def _read_capped(part: BodyPartReader, cap: int, name: str) -> bytes:
    out = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        out += chunk
        if len(out) > cap:
            raise RequestError(413, proto.MESSAGE_TOO_LARGE, f"'{name}' is larger than {cap} bytes", name)
    return bytes(out)


async def _decode(data: bytes, model_rate: int, max_seconds: float) -> tuple[np.ndarray, float]:
    def decode() -> tuple[np.ndarray, int]:
        with tempfile.NamedTemporaryFile(suffix=".wav") as f:
            f.write(data)
            f.flush()
            return audio.read_wav(f.name)

    try:
        samples, rate = await asyncio.to_thread(decode)
    except audio.AudioError as exc:
        raise RequestError(400, "unsupported_format", f"cannot read the file as WAV: {exc}", "file") from exc
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
