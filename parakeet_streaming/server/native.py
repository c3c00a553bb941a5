"""The native wire protocol of one connection (docs/protocol.md), sans-I/O: see server/wire.py.

WAITING --first audio / flush / close--> STREAMING --final audio / close / fatal error--> FINISHING
--final Result--> CLOSED. A fatal error stops the input and finalizes the stream (the final Result
still follows); only the handshake timeout (no audio in time) closes at once, without a stream.
"""
from __future__ import annotations

import logging

import numpy as np

from parakeet_streaming import audio
from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event, KeytermsRejected, Result, StreamFailed, UtteranceEnd
from parakeet_streaming.server import protocol as proto
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.intake import AudioIntake
from parakeet_streaming.server.wire import (OVERSIZED, Audio, Close, Endpointing, Finish, Flush, Keyterms, Message,
                                            Output, Request, Send, State, state_after)

log = logging.getLogger("parakeet_streaming.session")

CLOSE_POLICY = 1008  # WebSocket close code for a refused key


class NativeStream:
    def __init__(self, request: Request, config: ServerConfig, model: ModelInfo) -> None:
        self.request, self.config, self.model = request, config, model
        self.state = State.WAITING
        self.outcome = "aborted"  # why the stream ended, for the log line
        self.stream_id = 0
        self.options = proto.StreamOptions()
        self.intake = AudioIntake(config.sample_rate, model.sample_rate, config.max_stream_seconds)
        self._out: list[Output] = []
        self._fatal = False  # a fatal error was reported: no more input is taken
        self._opened_at = self._last = 0.0

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
                self.outcome = "final" if self.outcome == "aborted" else self.outcome
                self._close()
        elif isinstance(event, UtteranceEnd):
            self._send(proto.eou(event, ts))
        elif isinstance(event, StreamFailed):
            self.outcome = event.code
            self._send(proto.error(event.code, event.message, fatal=True))
            self._close()
        elif isinstance(event, KeytermsRejected):  # the stream goes on with its previous key terms
            self._send(proto.error(proto.BAD_CONFIG, f"keyterms: {event.message}"))

    def eof(self) -> None:
        if self.state is not State.FINISHING:
            self._close()

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

    def outputs(self) -> list[Output]:
        out, self._out = self._out, []
        return out

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
            self._finalize()
        elif isinstance(msg, proto.Flush):
            self._on_flush()
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
        out, over = self.intake.push(samples, msg.sample_rate)
        final = msg.final or over
        self._audio(np.concatenate([out, self.intake.drain()]) if final else out, final)
        if over:
            limit = self.config.max_stream_seconds
            self._fail(proto.ProtocolError(proto.STREAM_TOO_LONG,
                                           f"stream exceeded {limit:g} s of audio; finalized", fatal=True))

    def _on_flush(self) -> None:
        """Everything received is decoded and answered with a `flushed` result; the stream goes on.
        The resampler's tail belongs before the flush."""
        if self.state is State.FINISHING:
            return
        self._audio(self.intake.drain(), final=False)
        self._command(Flush())

    def _finalize(self) -> None:
        if self.state in (State.WAITING, State.STREAMING):
            self._audio(self.intake.drain(), final=True)

    def _fail(self, exc: proto.ProtocolError, finalize: bool = True) -> None:
        """A fatal error: report it once, stop taking input, finalize so the transcript is kept."""
        if self._fatal or self.state is State.CLOSED:
            return
        self._fatal = True
        self.outcome = exc.code
        self._send(proto.error_from(exc))
        if finalize:
            self._finalize()
        else:
            self._close()

    # --- outputs -----------------------------------------------------------------------------
    def _audio(self, samples: np.ndarray, final: bool) -> None:
        if samples.size or final:
            self._command(Audio(samples, final) if samples.size else Finish())

    def _command(self, cmd: Audio | Flush | Finish) -> None:
        self._out.append(cmd)
        self.state = state_after(self.state, cmd)

    def _send(self, msg: dict) -> None:
        self._out.append(Send(proto.dumps(msg), msg["code"] if msg.get("type") == "error" else None))

    def _close(self, code: int = 1000, reason: str = "") -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._out.append(Close(code, reason))
