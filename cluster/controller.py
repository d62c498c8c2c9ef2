"""Admission control on the policy version (as AReaL does): at most
(max_staleness + 1) x batch_size - (backlog + running) samples may start, less one batch for
each version the oldest running group is behind, so workers never generate what the learner
would have to throw away, even when a slow group is overtaken by later ones. The backlog is read
from the stream itself (entries pending or undelivered, less those the learner has booked), so
the count follows what the learner actually trains, discards and dead-letters, a worker killed
between its push and its release leaves no phantom, and a resumed job starts from the truth."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import ray


class BacklogSource(Protocol):
    def backlog(self) -> int:
        """Entries in the stream the learner has not booked yet."""
        ...


class Answer(StrEnum):
    ADMITTED = "admitted"
    TIMED_OUT = "timed_out"  # no room within the poll: ask again
    STOPPING = "stopping"  # the job is ending: start nothing more


@dataclass(frozen=True)
class AdmissionReply:
    answer: Answer
    version: int | None = None  # the policy version the admitted samples start under


class AdmissionState:
    """The counters and the rule, free of Ray so the arithmetic is testable on its own.

    A group admitted under version u samples on weights no older than u, and the learner
    trains groups in the order they reach the stream, so a group still running can be
    overtaken by groups admitted after it. It is fresh enough while at most
    (u + max_staleness + 1) x batch samples are trained before it, so a new sample may start
    only while trained + backlog + running stays within that bound for the oldest running
    group; with v x batch trained that is the `capacity` below. (A pushed group cannot be
    overtaken: later ones reach the stream after it.) `version` moves on when the learner
    books a trained batch (`trained_batch`), not later, so it never lags the booking."""

    def __init__(self, batch_size: int, max_staleness: int, version: int = 0, backlog: int = 0):
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self.version = version
        self.backlog = backlog
        self.running = 0
        self.stopping = False
        # Per worker, (version admitted under, samples) of each running lease, oldest first.
        self.leases: dict[str, list[tuple[int, int]]] = defaultdict(list)

    def capacity(self) -> int:
        limit = (self.max_staleness + 1) * self.batch_size
        behind = self.version - self.oldest_running_version()
        return limit - (self.backlog + self.running) - behind * self.batch_size

    def oldest_running_version(self) -> int:
        """The version the oldest running lease was admitted under (the current one if none)."""
        return min(
            (version for leases in self.leases.values() for version, _ in leases),
            default=self.version,
        )

    def admit(self, worker_id: str, count: int) -> None:
        self.running += count
        self.leases[worker_id].append((self.version, count))

    def trained_batch(self) -> None:
        """The learner booked the batch it trained, after publishing the policy trained on it."""
        self.version += 1

    def finish(self, worker_id: str, count: int) -> int:
        """Return a worker's slots; only what it holds, so a late or repeated release is
        harmless. Produced samples are counted by the backlog, not here. A release does not
        say which of the worker's leases ended: the newest go first, which keeps the bound
        on the oldest (the stricter one)."""
        leases = self.leases[worker_id]
        freed = 0
        while leases and freed < count:
            version, held = leases.pop()
            taken = min(held, count - freed)
            if taken < held:
                leases.append((version, held - taken))
            freed += taken
        self.running -= freed
        return freed

    def forget_worker(self, worker_id: str) -> int:
        """A dead worker's admitted samples will never arrive: free their slots."""
        lost = sum(count for _, count in self.leases.pop(worker_id, []))
        self.running -= lost
        return lost


@ray.remote(num_cpus=0, max_restarts=0)
class RolloutController:
    def __init__(
        self,
        batch_size: int,
        max_staleness: int,
        backlog: BacklogSource,
        version: int = 0,
    ):
        self._state = AdmissionState(batch_size, max_staleness, version)
        self._backlog = backlog
        self._changed = asyncio.Condition()
        self._waiting = 0  # acquire calls waiting for room now

    async def _read_backlog(self) -> None:
        self._state.backlog = await asyncio.to_thread(self._backlog.backlog)

    async def _wake_waiters(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _refresh(self) -> None:
        await self._read_backlog()
        await self._wake_waiters()

    async def acquire(self, worker_id: str, count: int, timeout_s: float) -> AdmissionReply:
        """Waits up to `timeout_s` for room for `count` samples."""
        state = self._state
        await self._refresh()
        async with self._changed:
            self._waiting += 1
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: state.stopping or state.capacity() >= count),
                    timeout_s,
                )
            except TimeoutError:
                return AdmissionReply(Answer.TIMED_OUT)
            finally:
                self._waiting -= 1
            if state.stopping:
                return AdmissionReply(Answer.STOPPING)
            state.admit(worker_id, count)
            return AdmissionReply(Answer.ADMITTED, state.version)

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        # Read the backlog first: a pushed group must be counted before its slots are freed.
        await self._read_backlog()
        self._state.finish(worker_id, count)
        await self._wake_waiters()

    async def set_version(self, version: int) -> None:
        self._state.version = version
        await self._refresh()

    async def booked(self, count: int) -> None:
        """The learner booked `count` entries: the backlog shrank."""
        await self._refresh()

    async def trained(self, count: int) -> None:
        """The learner booked the `count` entries of the batch it trained: the backlog shrank
        and the policy version moved on, both at once for admission."""
        self._state.trained_batch()
        await self._refresh()

    async def forget_worker(self, worker_id: str) -> int:
        await self._read_backlog()
        lost = self._state.forget_worker(worker_id)
        await self._wake_waiters()
        return lost

    async def stop(self) -> None:
        self._state.stopping = True
        async with self._changed:
            self._changed.notify_all()

    def snapshot(self) -> dict[str, Any]:
        state = self._state
        return {
            "version": state.version,
            "backlog": state.backlog,
            "running": state.running,
            "capacity": state.capacity(),
            "waiting": self._waiting,
        }


class ControllerRefill:
    """The SampleRefill protocol over the controller actor, handed to the learner."""

    def __init__(self, handle: ray.actor.ActorHandle, timeout_s: float = 60.0) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def booked(self, count: int) -> None:
        ray.get(self._handle.booked.remote(count), timeout=self._timeout_s)

    def trained(self, count: int) -> None:
        ray.get(self._handle.trained.remote(count), timeout=self._timeout_s)


class ControllerGate:
    """The AdmissionGate protocol over the controller actor, handed to rollout workers."""

    def __init__(self, handle: ray.actor.ActorHandle, poll_timeout_s: float = 5.0) -> None:
        self._handle = handle
        self._poll_timeout_s = poll_timeout_s

    async def acquire(self, worker_id: str, count: int) -> int | None:
        while True:
            reply = await self._handle.acquire.remote(worker_id, count, self._poll_timeout_s)
            if reply.answer != Answer.TIMED_OUT:
                return reply.version

    async def release(self, worker_id: str, count: int, produced: bool) -> None:
        await self._handle.release.remote(worker_id, count, produced)
