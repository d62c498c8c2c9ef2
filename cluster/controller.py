"""Admission control on the policy version (as AReaL does): at most
(max_staleness + 1) x batch_size - (backlog + running) samples may start, so workers never
generate what the learner would have to throw away. The backlog is read from the stream itself
(entries pending or undelivered, less those the learner has booked), so the count follows what
the learner actually trains, discards and dead-letters, a worker killed between its push and its
release leaves no phantom, and a resumed job starts from the truth."""

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
    (max_staleness + v + 1) x batch - (trained + backlog + running), with v x batch trained,
    is this rule: the version only matters through what the learner has consumed."""

    def __init__(
        self, batch_size: int, max_staleness: int, version: int | None = 0, backlog: int = 0
    ):
        """`version` None: no policy is published yet, so nothing is admitted until
        `version` is set (workers may be started before the learner is up)."""
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self.version = version
        self.backlog = backlog
        self.running = 0
        self.stopping = False
        self.leases: dict[str, int] = defaultdict(int)

    def capacity(self) -> int:
        if self.version is None:
            return 0
        limit = (self.max_staleness + 1) * self.batch_size
        return limit - (self.backlog + self.running)

    def admit(self, worker_id: str, count: int) -> None:
        self.running += count
        self.leases[worker_id] += count

    def finish(self, worker_id: str, count: int) -> int:
        """Return a worker's slots; only what it holds, so a late or repeated release is
        harmless. Produced samples are counted by the backlog, not here."""
        count = min(count, self.leases[worker_id])
        self.leases[worker_id] -= count
        self.running -= count
        return count

    def forget_worker(self, worker_id: str) -> int:
        """A dead worker's admitted samples will never arrive: free their slots."""
        lost = self.leases.pop(worker_id, 0)
        self.running -= lost
        return lost


@ray.remote(num_cpus=0, max_restarts=0)
class RolloutController:
    def __init__(
        self,
        batch_size: int,
        max_staleness: int,
        backlog: BacklogSource,
        version: int | None = 0,
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

    def booked_on(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        """`booked` from a thread of an async actor: the wait runs on the actor's event loop,
        where Ray wants it (it warns about any `ray.get` in an async actor's process)."""

        async def call() -> None:
            await asyncio.wait_for(self._handle.booked.remote(count), self._timeout_s)

        asyncio.run_coroutine_threadsafe(call(), loop).result(self._timeout_s + 1)


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
