"""What every connection and route of one server shares, passed explicitly (no globals)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from parakeet_streaming.config import ServerConfig
from parakeet_streaming.engine.interface import EngineAPI
from parakeet_streaming.server.metrics import ServerMetrics
from parakeet_streaming.server.security import Authenticator

if TYPE_CHECKING:
    from parakeet_streaming.server.session import Session


@dataclass(frozen=True)
class ModelInfo:
    """The model facts clients are told (hello, status), read once from the loaded model, and the
    name of the server that runs it (`instance`: a Ray replica's id, a pod's name; None: not told)."""

    name: str = "unknown"
    sample_rate: int = 16000
    chunk_ms: int | None = None
    token_texts: tuple[str | None, ...] = ()  # per token id: its text ("▁" as a space); None: special
    instance: str | None = None

    @classmethod
    def of(cls, model: Any, instance: str | None = None) -> "ModelInfo":
        tok = model.tokenizer
        texts = tuple(None if tok.is_special(i) else tok.id_to_piece(i).replace("\u2581", " ")
                      for i in range(tok.vocab_size))
        return cls(model.name, model.config.sample_rate, model.frame_ms * model.chunk_frames, texts, instance)


@dataclass
class ServerContext:
    engine: EngineAPI
    config: ServerConfig
    model: ModelInfo = ModelInfo()
    auth: Authenticator = field(default_factory=Authenticator)  # no keys: open
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    sessions: set["Session"] = field(default_factory=set)  # open connections (with or without a slot)
    draining: bool = False
    loading: str | None = None  # while the model loads: the phase it is in (/readyz reports it)

    @property
    def connected_streams(self) -> int:
        return len(self.sessions)

    @property
    def pending_connections(self) -> int:
        """Connections that hold no slot yet (they have sent no audio)."""
        return sum(1 for s in self.sessions if not s.stream.opened)

    @property
    def max_pending_connections(self) -> int:
        cap = self.config.max_pending_connections
        return 4 * self.config.max_num_streams if cap is None else cap

    def readiness(self) -> tuple[bool, str]:
        """(ready for new streams, why not): the one place readiness is decided (/readyz)."""
        if self.draining:
            return False, "draining"
        if self.loading is not None:
            return False, "loading"
        phase = self.engine.phase
        if phase == "ready":
            return True, "ready"
        return False, "warming up" if phase in ("warming_up", "degraded") else phase
