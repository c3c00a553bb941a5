"""The interface of a sans-I/O wire protocol: one object per connection, explicit states, inputs
are method calls, outputs are drained in order with `outputs()` (python-websockets' core is the
model). No sockets, no asyncio, no engine calls, no metrics; time is passed in (monotonic seconds).

A protocol turns client messages into engine commands (`Audio`, `Flush`, `Finish`, `Endpointing`, `Keyterms`)
and wire messages (`Send`), engine events into wire messages, and ends with `Close`. The Session
(server/session.py) runs it over any transport; server/native.py is the native protocol, and
server/routes.py maps request paths to protocols. See docs/architecture.md, "Adding a wire protocol".
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event
from parakeet_streaming.server.context import ModelInfo
from parakeet_streaming.server.intake import AudioIntake


class State(enum.Enum):
    WAITING = "waiting"  # greeted, no audio yet: holds no engine slot (handshake timeout runs)
    STREAMING = "streaming"  # the engine stream has work
    FINISHING = "finishing"  # the engine was told no more audio: waiting for the final Result
    CLOSED = "closed"  # done; a Close was emitted


class _Oversized:
    def __repr__(self) -> str:
        return "OVERSIZED"


OVERSIZED = _Oversized()  # what a transport's recv() returns for a message over --max-message-bytes
Message = str | bytes | _Oversized  # str: a text message, bytes: a binary message


# --- outputs: engine commands ---------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Audio:
    samples: np.ndarray  # float32 mono at the model's rate
    final: bool = False


@dataclass(frozen=True)
class Flush:
    pass


@dataclass(frozen=True)
class Finish:
    pass


@dataclass(frozen=True)
class Endpointing:
    silence_ms: int


@dataclass(frozen=True)
class Keyterms:
    """The stream's key terms from now on (empty: none): strings or (text, weight) pairs, checked
    for shape; the handle compiles them and answers a bad list with a KeytermsRejected event."""

    terms: tuple[str | tuple[str, float], ...]


# --- outputs: the wire ----------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    data: str | bytes
    error: str | None = None  # the error code when this is an error message (counted in metrics)


@dataclass(frozen=True)
class Close:
    """Always the last output: the transport closes the connection (`code` where it has codes)."""

    code: int = 1000
    reason: str = ""


Command = Audio | Flush | Finish | Endpointing | Keyterms
Output = Command | Send | Close
CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_AGAIN = 1008, 1009, 1011, 1013  # WebSocket close codes


@dataclass(frozen=True)
class Request:
    """What the transport knows about the connection."""

    path: str = "/"  # with the query string
    headers: Mapping[str, str] = field(default_factory=dict)
    transport: str = "?"  # for logs only: protocols do not branch on it


class StreamProtocol:
    """A wire protocol's object for one connection; each protocol is a subclass. The base holds
    what they share: the state, the outputs, the fatal-error latch, the audio policy (client
    samples through the stream's `AudioIntake` into `Audio` commands; a flush or the end sends
    the resampler's tail first) and the two timeouts of the Deepgram and OpenAI protocols."""

    def __init__(self, request: Request, config: ServerConfig, model: ModelInfo, rate: int | None = None) -> None:
        self.request, self.config, self.model = request, config, model
        self.state = State.WAITING
        self.outcome = "aborted"  # why the stream ended, for the log line
        self.intake = AudioIntake(rate or config.sample_rate, model.sample_rate, config.max_stream_seconds)
        self._out: list[Output] = []
        self._fatal = False  # a fatal error was reported: no more input is taken
        self._close_code, self._close_reason = 1000, ""  # the Close that follows the final Result
        self._last = 0.0  # when the last client message came (monotonic s)

    # --- inputs (the Session calls these) -----------------------------------------------------
    def open(self, stream_id: int, now: float) -> None:
        """Accepted: the greeting, or (a bad request) an error and Close."""
        raise NotImplementedError

    def refuse(self, code: str, message: str) -> None:
        """Turned away before any stream (unauthorized, server_full, shutting_down): error, Close."""
        raise NotImplementedError

    def receive(self, message: Message, now: float) -> None:
        raise NotImplementedError

    def engine_event(self, event: Event) -> None:
        raise NotImplementedError

    def stop(self, code: str, message: str) -> None:
        """The server ends the stream (shutdown): fatal error, the final if streaming, Close."""
        raise NotImplementedError

    def timeout(self, now: float) -> None:
        """`deadline()` has passed."""
        raise NotImplementedError

    def eof(self) -> None:
        """The peer is gone or half-closed: Close, unless FINISHING (the final may still go out)."""
        if self.state is not State.FINISHING:
            self._close()

    def deadline(self) -> float | None:
        """Monotonic time of the next timeout (None: none). Here: `--handshake-timeout` before the
        first audio, measured from the last client message (a keep-alive keeps a slotless
        connection open), and `--idle-timeout` without any message; 0 turns either off. The native
        protocol has its own (server/native.py)."""
        limits = [self.config.idle_timeout] if self.state in (State.WAITING, State.STREAMING) else []
        if self.state is State.WAITING:
            limits.append(self.config.handshake_timeout)
        limits = [t for t in limits if t and t > 0]
        return self._last + min(limits) if limits and not self._fatal else None

    def _expired(self) -> tuple[str, str]:
        """(error code, message) for the timeout `deadline` announced."""
        idle, handshake = self.config.idle_timeout or 0, self.config.handshake_timeout or 0
        if self.state is State.WAITING and handshake > 0 and (idle <= 0 or handshake <= idle):
            return "handshake_timeout", f"no audio within {handshake:g} s of the last message"
        return "idle_timeout", f"no message for {idle:g} s"

    def outputs(self) -> list[Output]:
        """What the inputs so far produced, in order (engine commands, Send, a final Close)."""
        out, self._out = self._out, []
        return out

    # --- audio -------------------------------------------------------------------------------
    def _push(self, samples: np.ndarray, rate: int | None = None, final: bool = False) -> bool:
        """Client samples (at `rate`, default the stream's) -> Audio; `final`, or running out of
        --max-stream-seconds, ends the stream. True when over budget (the caller reports it)."""
        out, over = self.intake.push(samples, rate)
        if final or over:
            self._finish(out)
        elif out.size:
            self._command(Audio(out))
        return over

    def _flush(self) -> None:
        """Everything received so far, the resampler's tail included, is decoded (a flushed Result)."""
        tail = self.intake.drain()
        if tail.size:
            self._command(Audio(tail))
        self._command(Flush())

    def _finish(self, head: np.ndarray | None = None) -> None:
        """No more audio: `head` and the resampler's tail are the last Audio (or a Finish)."""
        if self.state in (State.WAITING, State.STREAMING):
            tail = self.intake.drain()
            samples = tail if head is None or not head.size else np.concatenate([head, tail])
            self._command(Audio(samples, final=True) if samples.size else Finish())

    def _command(self, cmd: Audio | Flush | Finish) -> None:
        """The last audio makes the stream FINISHING; its first audio (or flush) ends WAITING."""
        self._out.append(cmd)
        if isinstance(cmd, Finish) or (isinstance(cmd, Audio) and cmd.final):
            self.state = State.FINISHING
        elif self.state is State.WAITING:
            self.state = State.STREAMING

    # --- the end -----------------------------------------------------------------------------
    def _fatal_error(self, code: str, close_code: int = 1000, reason: str = "") -> bool:
        """A fatal error begins: False if one was reported already (or the stream is closed). Else
        no more input is taken and the Close after the final Result carries `close_code`, `reason`;
        the caller reports the error, then finalizes or closes."""
        if self._fatal or self.state is State.CLOSED:
            return False
        self._fatal, self.outcome = True, code
        self._close_code, self._close_reason = close_code, reason
        return True

    def _finish_or_close(self) -> None:
        """After a fatal error: a stream with audio is finalized (its final Result closes it), one
        without closes now."""
        if self.state is State.WAITING:
            self._close(self._close_code, self._close_reason)
        else:
            self._finish()

    def _ended(self) -> None:
        """The final Result is out: close (the outcome stays a fatal error's code, if there was one)."""
        self.outcome = "final" if self.outcome == "aborted" else self.outcome
        self._close(self._close_code, self._close_reason)

    def _send(self, msg: dict[str, Any], error: str | None = None) -> None:
        self._out.append(Send(json.dumps(msg, separators=(",", ":"), ensure_ascii=False), error))

    def _close(self, code: int = 1000, reason: str = "") -> None:
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._out.append(Close(code, reason))


ProtocolFactory = Callable[[Request, ServerConfig, ModelInfo], StreamProtocol]
