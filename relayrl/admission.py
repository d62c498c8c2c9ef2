"""The admission-control seam: how rollout workers ask to start samples."""

from __future__ import annotations

from typing import Protocol


class SampleRefill(Protocol):
    def booked(self, count: int) -> None:
        """The learner booked `count` entries (trained, discarded, dead-lettered or found
        committed): the backlog admission counts shrank, so waiting samples may start now."""
        ...


class AdmissionGate(Protocol):
    async def acquire(self, worker_id: str, count: int) -> int | None:
        """Wait until `count` samples may start; returns the current policy version, or None
        when the job is stopping."""
        ...

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        """Finish `count` admitted samples; `produced` says whether they reached the buffer."""
        ...
