"""Which ready streams go into the next step.

Every ready stream steps, up to `max_batch`. When more are ready than fit, the scheduler is a round
robin: the streams served longest ago go first (never-served ones before all, finishing streams
before others at equal standing), so no stream starves and finals are not held back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Candidate:
    stream_id: int
    last_served: int  # position in the engine's serve order when it last stepped (-1: never)
    finishing: bool


def pick(ready: list[Candidate], max_batch: int) -> list[int]:
    """Stream ids for the next step, in a stable order."""
    if len(ready) <= max_batch:
        return [c.stream_id for c in ready]
    order = sorted(ready, key=lambda c: (c.last_served, not c.finishing, c.stream_id))
    return [c.stream_id for c in order[:max_batch]]
