"""The two timeouts of a connection, for every wire protocol: before the first audio
(`--handshake-timeout`, measured from the last client message, so a keep-alive keeps a slotless
connection open) and without any client message (`--idle-timeout`). 0 turns either off."""
from __future__ import annotations

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.server.wire import State


def deadline(config: ServerConfig, state: State, last: float) -> float | None:
    """When the connection times out (monotonic s), or None; `last`: the last client message."""
    limits = [config.idle_timeout] if state in (State.WAITING, State.STREAMING) else []
    if state is State.WAITING:
        limits.append(config.handshake_timeout)
    limits = [t for t in limits if t and t > 0]
    return last + min(limits) if limits else None


def expired(config: ServerConfig, state: State) -> tuple[str, str]:
    """(error code, message) for the timeout `deadline` announced in `state`."""
    idle, handshake = config.idle_timeout or 0, config.handshake_timeout or 0
    if state is State.WAITING and handshake > 0 and (idle <= 0 or handshake <= idle):
        return "handshake_timeout", f"no audio within {handshake:g} s of the last message"
    return "idle_timeout", f"no message for {idle:g} s"
