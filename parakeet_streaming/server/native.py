"""The native wire protocol of one connection (docs/protocol.md), sans-I/O: see server/wire.py.

WAITING --first audio / flush / close--> STREAMING --final audio / close / fatal error--> FINISHING
--final Result--> CLOSED. A fatal error stops the input and finalizes the stream (the final Result
still follows); only the handshake timeout (no audio in time) closes at once, without a stream.
"""
from __future__ import annotations

import logging

from parakeet_streaming import audio
from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event, KeytermsRejected, Result, StreamFailed, UtteranceEnd
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.intake import AudioIntake
from parakeet_streaming.server.wire import (CLOSE_POLICY, OVERSIZED, Endpointing, Keyterms, Message, Request, Send,
                                            State, StreamProtocol)

log = logging.getLogger("parakeet_streaming.session")


class NativeStream(StreamProtocol):
    def __init__(self, request: Request, config: ServerConfig, model: ModelInfo) -> None:
        super().__init__(request, config, model)
        self.stream_id = 0
        self.options = proto.StreamOptions()
        self._opened_at = 0.0

    # --- inputs ------------------------------------------------------------------------------
    def open(self, stream_id: int, now: float) -> None:
        self.stream_id, self._opened_at, self._last = stream_id, now, now
        try:
            self.options = proto.options_from_query(self.request.path)
        except proto.ProtocolError as exc:
            self._send(proto.error_from(exc))
            self._close()
            return
        rate = self.options.sample_rate or self.config.sample_rate
        self.intake = AudioIntake(rate, self.model.sample_rate, self.config.max_stream_seconds)
        self._send(proto.hello(stream_id, rate, model=self.model.name, chunk_ms=self.model.chunk_ms,
                               instance=self.model.instance))
        if self.options.endpoint_silence_ms is not None:  # from the URL; ahead of any audio
            self._out.append(Endpointing(self.options.endpoint_silence_ms))
        if self.options.keyterms is not None:
            self._out.append(Keyterms(self.options.keyterms))

    def refuse(self, code: str, message: str) -> None:
        self._send(proto.error(code, message, fatal=True))
        self.outcome = code
        self._close(CLOSE_POLICY if code == proto.UNAUTHORIZED else 1000, code)

    def receive(self, message: Message, now: float) -> None:
        self._last = now
        if self._fatal or self.state is State.CLOSED:
            return  # after a fatal error the server accepts no more input
        try:
            self._handle(self._parse(message))
        except proto.ProtocolError as exc:
            if exc.fatal:
                self._fail(exc)
            else:
                self._send(proto.error_from(exc))
        except audio.AudioError as exc:
            self._send(proto.error(exc.code, str(exc)))
        except Exception:  # noqa: BLE001 - never let one stream take the server down
            log.exception("stream %s: internal error", self.stream_id)
            self._fail(proto.ProtocolError(proto.INTERNAL, "internal server error", fatal=True))

    def engine_event(self, event: Event) -> None:
        if self.state is State.CLOSED:
            return
        ts = self.options.timestamps
        if isinstance(event, Result):
            self._send(proto.result(event, ts))
            if event.is_final:
                self._ended()
        elif isinstance(event, UtteranceEnd):
            self._send(proto.eou(event, ts))
        elif isinstance(event, StreamFailed):
            self.outcome = event.code
            self._send(proto.error(event.code, event.message, fatal=True))
            self._close()
        elif isinstance(event, KeytermsRejected):  # the stream goes on with its previous key terms
            self._send(proto.error(proto.BAD_CONFIG, f"keyterms: {event.message}"))

    def stop(self, code: str = proto.SHUTTING_DOWN, message: str = "server is shutting down") -> None:
        self._fail(proto.ProtocolError(code, message, fatal=True))

    def deadline(self) -> float | None:
        if self.state not in (State.WAITING, State.STREAMING) or self._fatal:
            return None
        idle, handshake = self.config.idle_timeout, self.config.handshake_timeout
        times = [self._last + idle] if idle and idle > 0 else []
        if self.state is State.WAITING and handshake and handshake > 0:
            times.append(self._opened_at + handshake)
        return min(times, default=None)

    def timeout(self, now: float) -> None:
        handshake = self.config.handshake_timeout
        if self.state is State.WAITING and handshake and handshake > 0 and now >= self._opened_at + handshake:
            self._fail(proto.ProtocolError(proto.HANDSHAKE_TIMEOUT, f"no audio within {handshake:g} s "
                                           "of connecting", fatal=True), finalize=False)
        else:
            idle = self.config.idle_timeout
            self._fail(proto.ProtocolError(proto.IDLE_TIMEOUT, f"no message for {idle:g} s", fatal=True))

    # --- client messages ---------------------------------------------------------------------
    def _parse(self, raw: Message) -> proto.ClientMessage:
        cap = self.config.max_message_bytes
        if raw is OVERSIZED or len(raw) > cap:
            raise proto.ProtocolError(proto.MESSAGE_TOO_LARGE, f"message larger than {cap} bytes", fatal=True)
        return proto.parse_binary(raw) if isinstance(raw, bytes) else proto.parse_text(raw)

    def _handle(self, msg: proto.ClientMessage) -> None:
        if isinstance(msg, proto.Ping):
            self._send(proto.pong())
        elif isinstance(msg, proto.Audio):
            self._on_audio(msg)
        elif isinstance(msg, proto.Close):
            self._finish()
        elif isinstance(msg, proto.Flush) and self.state is not State.FINISHING:
            self._flush()  # decoded and answered with a `flushed` result; the stream goes on
        elif isinstance(msg, proto.Config):
            if msg.timestamps is not None:
                self.options.timestamps = msg.timestamps
            if msg.endpoint_silence_ms is not None and self.state is not State.FINISHING:
                self._out.append(Endpointing(msg.endpoint_silence_ms))
            if msg.keyterms is not None and self.state is not State.FINISHING:
                self._out.append(Keyterms(msg.keyterms))

    def _on_audio(self, msg: proto.Audio) -> None:
        if self.state is State.FINISHING:
            if msg.data or msg.samples:
                raise proto.ProtocolError(proto.AUDIO_AFTER_FINAL, "audio after the stream was finalized; dropped")
            return
        if msg.samples is not None:
            samples = audio.from_samples(msg.samples)
        else:
            samples = audio.decode(msg.data or b"", msg.encoding or self.options.encoding)
        if self._push(samples, msg.sample_rate, final=msg.final):
            limit = self.config.max_stream_seconds
            self._fail(proto.ProtocolError(proto.STREAM_TOO_LONG,
                                           f"stream exceeded {limit:g} s of audio; finalized", fatal=True))

    def _fail(self, exc: proto.ProtocolError, finalize: bool = True) -> None:
        """A fatal error: report it once, stop taking input, finalize so the transcript is kept."""
        if self._fatal_error(exc.code):
            self._send(proto.error_from(exc))
            if finalize:
                self._finish()
            else:
                self._close()

    def _send(self, msg: dict) -> None:  # type: ignore[override] - an error message counts under its own code
        self._out.append(Send(proto.dumps(msg), msg["code"] if msg.get("type") == "error" else None))
