"""The trajectory buffer seam between rollout workers (producers) and the learner (consumer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relayrl.trajectory import Trajectory


@dataclass(frozen=True)
class BufferEntry:
    entry_id: str  # the buffer's own id, used to acknowledge
    trajectory: Trajectory


@dataclass(frozen=True)
class BufferStats:
    length: int  # entries still stored
    pending: int  # delivered to a consumer and not yet acknowledged
    undelivered: int  # never delivered to any consumer
    dead_letters: int


class TrajectoryProducer(Protocol):
    def push(self, trajectories: Sequence[Trajectory]) -> list[str]:
        """Append trajectories; returns their entry ids."""
        ...


class TrajectoryConsumer(Protocol):
    def read(self, max_count: int, block_ms: int) -> list[BufferEntry]:
        """This consumer's unacknowledged entries first, then new ones; corrupt entries are
        dead-lettered, never returned."""
        ...

    def ack(self, entry_ids: Sequence[str], booked: int = 0) -> int:
        """Acknowledge entries whose training step is durable, `booked` of which `book`
        counted; returns how many were pending."""
        ...

    def book(self, count: int) -> None:
        """The learner booked `count` entries (trained or discarded) that it acknowledges at
        its next commit: admission stops counting them as backlog now."""
        ...

    def dead_letter(self, entry_id: str, reason: str) -> bool:
        """Quarantine a pending entry with its reason, acknowledged in the same step; False
        when it was no longer pending."""
        ...

    def take_broken_groups(self) -> set[str]:
        """Groups a member of which `read` dead-lettered since the last call: they can never
        be complete."""
        ...

    def claim_abandoned(self, min_idle_ms: int) -> int:
        """Take over entries another (dead) consumer was given and never acknowledged;
        they are read again like this consumer's own. Returns how many."""
        ...

    def stats(self) -> BufferStats: ...
