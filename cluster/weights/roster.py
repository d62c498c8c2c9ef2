"""The roster of engines the NCCL transport pushes into, in its own actor.

The fleet adds an engine once its worker has started and removes it when the worker leaves;
the learner's publisher reads the roster at every publish and while it waits for data, and
removes an engine whose push failed. A worker that registers again (a restarted engine) is a
new member, which the publisher must set up afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import ray


@dataclass(frozen=True)
class EngineMember:
    """One registered engine; `joined` rises on every registration."""

    worker_id: str
    joined: int
    receiver: Any  # the worker's actor, which forwards the transfer calls to its engine
    world_size: int


class EngineRegistry(Protocol):
    """What the fleet needs: engines in and out."""

    def join(self, worker_id: str, receiver: Any, world_size: int) -> int: ...

    def leave(self, worker_id: str) -> None: ...


@ray.remote(num_cpus=0, max_restarts=0)
class EngineRoster:
    def __init__(self) -> None:
        self._engines: dict[str, EngineMember] = {}
        self._registrations = 0

    def join(self, worker_id: str, receiver: Any, world_size: int) -> int:
        self._registrations += 1
        self._engines[worker_id] = EngineMember(
            worker_id, self._registrations, receiver, world_size
        )
        return self._registrations

    def leave(self, worker_id: str, joined: int | None = None) -> None:
        """Drop a worker's engine; with `joined`, only that registration of it."""
        member = self._engines.get(worker_id)
        if member is not None and joined in (None, member.joined):
            del self._engines[worker_id]

    def members(self) -> list[EngineMember]:
        return list(self._engines.values())


class RosterClient:
    """Blocking, bounded calls into an EngineRoster actor; picklable, so it travels to the
    fleet's driver and to learner rank 0 alike."""

    def __init__(self, roster: ray.actor.ActorHandle, timeout_s: float) -> None:
        self._roster = roster
        self._timeout_s = timeout_s

    def join(self, worker_id: str, receiver: Any, world_size: int) -> int:
        ref = self._roster.join.remote(worker_id, receiver, world_size)
        return ray.get(ref, timeout=self._timeout_s)

    def leave(self, worker_id: str, joined: int | None = None) -> None:
        ray.get(self._roster.leave.remote(worker_id, joined), timeout=self._timeout_s)

    def members(self) -> list[EngineMember]:
        return ray.get(self._roster.members.remote(), timeout=self._timeout_s)
