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
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import numpy as np

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.events import Event
from parakeet_streaming.server.context import ModelInfo


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


def state_after(state: State, cmd: Audio | Flush | Finish) -> State:
    """The stream's state once it has sent `cmd`: the last audio makes it FINISHING, its first
    audio (or flush) takes it out of WAITING."""
    if isinstance(cmd, Finish) or (isinstance(cmd, Audio) and cmd.final):
        return State.FINISHING
    return State.STREAMING if state is State.WAITING else state


@dataclass(frozen=True)
class Request:
    """What the transport knows about the connection."""

    path: str = "/"  # with the query string
    headers: Mapping[str, str] = field(default_factory=dict)
    transport: str = "?"  # for logs only: protocols do not branch on it


class StreamProtocol(Protocol):
    state: State
    outcome: str  # why the stream ended, for the log line ("final", an error code, "aborted")

    def open(self, stream_id: int, now: float) -> None:
        """Accepted: the greeting, or (a bad request) an error and Close."""

    def refuse(self, code: str, message: str) -> None:
        """Turned away before any stream (unauthorized, server_full, shutting_down): error, Close."""

    def receive(self, message: Message, now: float) -> None: ...
    def engine_event(self, event: Event) -> None: ...

    def eof(self) -> None:
        """The peer is gone or half-closed: Close, unless FINISHING (the final may still go out)."""

    def stop(self, code: str, message: str) -> None:
        """The server ends the stream (shutdown): fatal error, the final if streaming, Close."""

    def deadline(self) -> float | None:
        """Monotonic time of the next timeout (None: none); `timeout(now)` is called once it passes."""

    def timeout(self, now: float) -> None: ...
    def outputs(self) -> list[Output]: ...


ProtocolFactory = Callable[[Request, ServerConfig, ModelInfo], StreamProtocol]
