"""Which ready streams go into the next step.

Every ready stream steps, up to `max_batch`. When more are ready than fit, the ones that have waited
longest since their last step go first (finishing streams before others at equal wait), so no stream
starves and finals are not held back.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Candidate:
    stream_id: int
    last_step: int  # engine step counter when it last stepped (-1: never)
    finishing: bool


def pick(ready: list[Candidate], max_batch: int) -> list[int]:
    """Stream ids for the next step, in a stable order."""
    if len(ready) <= max_batch:
        return [c.stream_id for c in ready]
    order = sorted(ready, key=lambda c: (c.last_step, not c.finishing, c.stream_id))
    return [c.stream_id for c in order[:max_batch]]
