"""Which ready streams go into the next step.

Every ready stream steps, up to `max_batch`. When more are ready than fit, the scheduler is a round
robin: the streams served longest ago go first (never-served ones before all, streams whose segment
is ending, by a finish or a flush, before others at equal standing), so no stream starves and finals
are not held back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class Schedulable(Protocol):
    """What the scheduler reads of a stream (`engine.stream.Stream` is one)."""

    @property
    def id(self) -> int: ...
    @property
    def last_served(self) -> int: ...  # position in the engine's serve order when it last stepped (-1: never)
    @property
    def ending(self) -> bool: ...


@dataclass
class Candidate:
    """A plain Schedulable."""

    id: int
    last_served: int
    ending: bool


def pick(ready: Sequence[Schedulable], max_batch: int) -> list[int]:
    """Stream ids for the next step, in a stable order."""
    if len(ready) <= max_batch:
        return [c.id for c in ready]
    order = sorted(ready, key=lambda c: (c.last_served, not c.ending, c.id))
    return [c.id for c in order[:max_batch]]
