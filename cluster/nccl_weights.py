"""The NCCL weight transport: learner rank 0 pushes each version into every vLLM engine.

Each engine has its own NCCL group with rank 0 (see `nccl_sender`), so the roster can change
between versions without a global group to rebuild: a joining engine gets a group and the
current version while the learner waits for data (`serve_joins`), a departed one has its group
closed, and one whose send fails or times out is dropped from the roster (its worker fails
and is replaced, and the replacement registers afresh). The weight store keeps the roster and
each version's metadata; workers only wait until their engine holds the announced version.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import ray
import torch

from relayrl.cluster.weight_store import EngineMember
from relayrl.weights import WeightVersion

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, state: Mapping[str, torch.Tensor], version: int) -> None: ...

    def close(self) -> None: ...


SenderFactory = Callable[[EngineMember, Mapping[str, torch.Tensor]], Sender]
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class PushReport:
    worker_id: str
    version: int
    num_bytes: int
    seconds: float


def _num_bytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def _concurrently(
    items: list[_Item], call: Callable[[_Item], _Result]
) -> list[tuple[_Item, _Result | Exception]]:
    """`call` on every item at once (each NCCL group has its own peer); errors are returned."""
    if not items:
        return []

    def guarded(item: _Item) -> _Result | Exception:
        try:
            return call(item)
        except Exception as error:
            return error

    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="relayrl-push") as pool:
        return list(zip(items, pool.map(guarded, items), strict=True))


def kill_engine_worker(member: EngineMember) -> None:
    """A failed transfer can leave the engine paused with its update lock held and its GPU
    memory allocated: end the worker's actor, so the fleet replaces it on a freed GPU."""
    ray.kill(member.receiver, no_restart=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def nccl_sender(
    member: EngineMember,
    state: Mapping[str, torch.Tensor],
    *,
    bucket_bytes: int,
    timeout_s: float,
) -> Sender:
    """A group between this process's GPU and one engine, rendezvoused on this node."""
    from relayrl.cluster.nccl_sender import NcclWeightSender, RayEngineReceiver

    return NcclWeightSender(
        RayEngineReceiver(member.receiver, timeout_s, name=member.worker_id),
        state,
        master_address=ray.util.get_node_ip_address(),
        master_port=_free_port(),
        engine_world_size=member.world_size,
        bucket_bytes=bucket_bytes,
        timeout_s=timeout_s,
        device=torch.device("cuda", torch.cuda.current_device()),
    )


class NcclPushWeights:
    """WeightPublisher (learner rank 0) and WeightSubscriber (workers) of the push path."""

    pushes = True

    def __init__(
        self,
        store: Any,
        *,
        bucket_bytes: int,
        timeout_s: float,
        call_timeout_s: float = 300.0,
        sender_factory: SenderFactory | None = None,
        roster_poll_s: float = 1.0,
        on_dropped: Callable[[EngineMember], None] = kill_engine_worker,
    ) -> None:
        self._store = store
        self._on_dropped = on_dropped
        self._roster_poll_s = roster_poll_s
        self._call_timeout_s = call_timeout_s
        self._make_sender = sender_factory or partial(
            nccl_sender, bucket_bytes=bucket_bytes, timeout_s=timeout_s
        )
        # Learner side only, built up after unpickling in the learner process.
        self.pushes_done: list[PushReport] = []
        self._senders: dict[str, tuple[EngineMember, Sender]] = {}
        self._current: tuple[WeightVersion, Mapping[str, torch.Tensor]] | None = None
        self._next_roster_check = 0.0

    def __getstate__(self) -> dict[str, Any]:
        # Groups and weights never travel: each process starts with none.
        return {**self.__dict__, "_senders": {}, "_current": None, "pushes_done": []}

    def take_push_reports(self) -> list[PushReport]:
        """Pushes finished since the last call (the learner reports them per step)."""
        done, self.pushes_done = self.pushes_done, []
        return done

    # ---- learner side -------------------------------------------------------------------

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        # No checksum: reading every byte of a GPU state costs a full copy to the host, and
        # engines take the tensors from NCCL, never from a copy they could verify.
        info = WeightVersion(version, time.time(), "", _num_bytes(state))
        self._current = (info, state)
        self._deliver(self._reconcile(), info, state)
        # Announced after delivery: a worker that sees the version already holds it, or
        # (joined since) gets it from serve_joins.
        ray.get(self._store.put.remote(info, None), timeout=self._call_timeout_s)
        return info

    def serve_joins(self) -> None:
        # Called before every read while the learner assembles a batch: look at the roster
        # at most once per roster_poll_s.
        if self._current is None or time.monotonic() < self._next_roster_check:
            return
        self._next_roster_check = time.monotonic() + self._roster_poll_s
        info, state = self._current
        roster = self._reconcile()
        joined = [member for member in roster if member.worker_id not in self._senders]
        if joined:
            self._deliver(joined, info, state)

    def members(self) -> list[str]:
        """Workers this learner holds a weight group with."""
        return sorted(self._senders)

    def _reconcile(self) -> list[EngineMember]:
        """The roster, with the groups of engines that left (or re-registered) closed."""
        roster = ray.get(self._store.engines.remote(), timeout=self._call_timeout_s)
        current = {member.worker_id: member for member in roster}
        for worker_id, (member, _) in list(self._senders.items()):
            if current.get(worker_id) != member:
                self._close(worker_id, "left the roster")
        return roster

    def _deliver(
        self, members: list[EngineMember], info: WeightVersion, state: Mapping[str, torch.Tensor]
    ) -> None:
        """Open groups for new members, then send to every member at once; whatever goes
        wrong with one engine drops only that engine."""
        missing = [member for member in members if member.worker_id not in self._senders]
        for member, made in _concurrently(missing, lambda m: self._make_sender(m, state)):
            if isinstance(made, Exception):
                self._drop(member, f"{type(made).__name__}: {made}")
            else:
                self._senders[member.worker_id] = (member, made)

        def send(member: EngineMember) -> float:
            started = time.perf_counter()
            self._senders[member.worker_id][1].send(state, info.version)
            return time.perf_counter() - started

        ready = [member for member in members if member.worker_id in self._senders]
        for member, seconds in _concurrently(ready, send):
            if isinstance(seconds, Exception):
                self._drop(member, f"{type(seconds).__name__}: {seconds}")
                continue
            self.pushes_done.append(
                PushReport(member.worker_id, info.version, info.num_bytes, seconds)
            )
            log.info(
                "weights v%d -> %s: %.1f MB in %.2fs",
                info.version,
                member.worker_id,
                info.num_bytes / 1e6,
                seconds,
            )

    def _drop(self, member: EngineMember, cause: str) -> None:
        log.warning("weight push to %s failed, dropping it: %s", member.worker_id, cause)
        if member.worker_id in self._senders:
            self._close(member.worker_id, "failed")
        ray.get(
            self._store.unregister_engine.remote(member.worker_id, member.joined),
            timeout=self._call_timeout_s,
        )
        self._on_dropped(member)

    def _close(self, worker_id: str, why: str) -> None:
        _, sender = self._senders.pop(worker_id)
        try:
            sender.close()
        except Exception as error:
            log.warning("closing the weight group of %s (%s): %s", worker_id, why, error)

    # ---- worker side --------------------------------------------------------------------

    def latest(self) -> WeightVersion | None:
        return ray.get(self._store.latest.remote(), timeout=self._call_timeout_s)

    def fetch(self, newer_than: int) -> None:
        return None

    async def latest_async(self) -> WeightVersion | None:
        return await asyncio.wait_for(self._store.latest.remote(), self._call_timeout_s)

    async def fetch_async(self, newer_than: int) -> None:
        return None

    def attach(self, worker_id: str, receiver: Any, engine_world_size: int) -> None:
        ray.get(
            self._store.register_engine.remote(worker_id, receiver, engine_world_size),
            timeout=self._call_timeout_s,
        )

    def detach(self, worker_id: str) -> None:
        ray.get(self._store.unregister_engine.remote(worker_id), timeout=self._call_timeout_s)
