"""The `nccl` transport's publisher side: learner rank 0 pushes each version into every
registered vLLM engine.

Each engine has its own NCCL group with rank 0 (see `nccl_sender`), so the roster can change
between versions without a global group to rebuild: a joining engine gets a group and the
current version while the learner waits for data (`serve_joins`), a departed one has its group
closed, and one whose send fails or times out is dropped from the roster and its worker ended
(the fleet replaces it, and the replacement registers afresh). Every engine is sent one pass
of the version's bucket stream at once (`fan_out`); the version is announced in the weight
store only after delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

import ray
import torch

from relayrl.cluster.weights.fan_out import Pair, fan_out
from relayrl.cluster.weights.roster import EngineMember, RosterClient
from relayrl.ports import ALL_INTERFACES, free_port
from relayrl.weight_buckets import StateBuckets
from relayrl.weights import PushReport, TensorMeta, WeightBuckets, WeightVersion

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, version: int, metadata: list[TensorMeta], tensors: Iterator[Pair]) -> None: ...

    def close(self) -> None: ...


SenderFactory = Callable[[EngineMember, list[TensorMeta]], Sender]


def kill_engine_worker(member: EngineMember) -> None:
    """A failed transfer can leave the engine paused with its update lock held and its GPU
    memory allocated: end the worker's actor, so the fleet replaces it on a freed GPU."""
    ray.kill(member.receiver, no_restart=True)


def nccl_sender(
    member: EngineMember, metadata: list[TensorMeta], *, bucket_bytes: int, timeout_s: float
) -> Sender:
    """A group between this process's GPU and one engine, rendezvoused on this node."""
    from relayrl.cluster.weights.nccl_sender import NcclWeightSender, RayEngineReceiver

    return NcclWeightSender(
        RayEngineReceiver(member.receiver, timeout_s, name=member.worker_id),
        metadata,
        master_address=ray.util.get_node_ip_address(),
        master_port=free_port(ALL_INTERFACES),
        engine_world_size=member.world_size,
        bucket_bytes=bucket_bytes,
        timeout_s=timeout_s,
        device=torch.device("cuda", torch.cuda.current_device()),
    )


def _settle_device_work() -> None:
    """Before a bucket is let go, the copies and broadcasts queued on it must have landed."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class NcclPublisher:
    """An EnginePusher over an EngineRoster and a WeightStore (which announces versions)."""

    def __init__(
        self,
        store: Any,
        roster: RosterClient,
        *,
        bucket_bytes: int,
        timeout_s: float,
        call_timeout_s: float = 300.0,
        sender_factory: SenderFactory | None = None,
        roster_poll_s: float = 1.0,
        on_dropped: Callable[[EngineMember], None] = kill_engine_worker,
    ) -> None:
        self._store = store
        self._roster = roster
        self.bucket_bytes = bucket_bytes
        self._timeout_s = timeout_s
        self._call_timeout_s = call_timeout_s
        self._on_dropped = on_dropped
        self._roster_poll_s = roster_poll_s
        self._make_sender = sender_factory or partial(
            nccl_sender, bucket_bytes=bucket_bytes, timeout_s=timeout_s
        )
        # Built up in the learner process only: groups and weights never travel.
        self._reports: list[PushReport] = []
        self._senders: dict[str, tuple[EngineMember, Sender]] = {}
        # The current version while it can be sent again: a stream is single-pass.
        self._current: tuple[WeightVersion, StateBuckets | None] | None = None
        self._next_roster_check = 0.0
        self._joiners: list[EngineMember] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_senders": {}, "_current": None, "_reports": [], "_joiners": []}

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        buckets = StateBuckets(state, self.bucket_bytes)
        info = self._push(version, buckets)
        self._current = (info, buckets)
        return info

    def publish_buckets(self, version: int, buckets: WeightBuckets) -> WeightVersion:
        info = self._push(version, buckets)
        self._current = (info, None)
        return info

    def joined(self) -> bool:
        # Asked before every read while the learner assembles a batch: the roster is read
        # at most once per roster_poll_s.
        if self._current is None or time.monotonic() < self._next_roster_check:
            return bool(self._joiners)
        self._next_roster_check = time.monotonic() + self._roster_poll_s
        self._joiners = [m for m in self._reconcile() if m.worker_id not in self._senders]
        return bool(self._joiners)

    def serve_joins(self, buckets: WeightBuckets | None = None) -> None:
        if self._current is None:
            if buckets is not None:
                raise ValueError("nothing is published yet, so there is nothing to stream again")
            return
        info, held = self._current
        if buckets is None:
            if not self.joined():
                return
            if held is None:
                raise ValueError(f"v{info.version} was published as a stream: stream it again")
            buckets = held
        joiners, self._joiners = self._joiners, []
        # Iterated to its end even with no joiner left: the other ranks gather in lockstep.
        self._deliver(joiners, info, buckets)

    def take_push_reports(self) -> list[PushReport]:
        done, self._reports = self._reports, []
        return done

    def members(self) -> list[str]:
        """Workers this learner holds a weight group with."""
        return sorted(self._senders)

    def _push(self, version: int, buckets: WeightBuckets) -> WeightVersion:
        # No checksum: reading every byte of a GPU state costs a full copy to the host, and
        # engines take the tensors from NCCL, never from a copy they could verify.
        metadata = buckets.metadata()
        info = WeightVersion(version, time.time(), "", sum(m.num_bytes for m in metadata))
        self._joiners = []
        self._deliver(self._reconcile(), info, buckets)
        # Announced after delivery: a worker that sees the version already holds it, or
        # (joined since) gets it from serve_joins.
        ray.get(self._store.put.remote(info, None), timeout=self._call_timeout_s)
        return info

    def _reconcile(self) -> list[EngineMember]:
        """The roster, with the groups of engines that left (or re-registered) closed."""
        roster = self._roster.members()
        current = {member.worker_id: member for member in roster}
        for worker_id, (member, _) in list(self._senders.items()):
            if current.get(worker_id) != member:
                self._close(worker_id, "left the roster")
        return roster

    def _deliver(
        self, members: list[EngineMember], info: WeightVersion, buckets: WeightBuckets
    ) -> None:
        """Open groups for new members, then send one pass of the stream to every member at
        once; whatever goes wrong with one engine drops only that engine. The stream is
        always iterated to its end: under ZeRO-3 the other ranks gather in lockstep."""
        metadata = buckets.metadata()
        self._open([m for m in members if m.worker_id not in self._senders], metadata)
        ready = {m.worker_id: m for m in members if m.worker_id in self._senders}

        def sending(member: EngineMember) -> Callable[[Iterator[Pair]], float]:
            def send(tensors: Iterator[Pair]) -> float:
                started = time.perf_counter()
                self._senders[member.worker_id][1].send(info.version, metadata, tensors)
                return time.perf_counter() - started

            return send

        consumers = {worker_id: sending(member) for worker_id, member in ready.items()}
        outcomes = fan_out(buckets, consumers, self._timeout_s, _settle_device_work)
        for worker_id, seconds in outcomes.items():
            member = ready[worker_id]
            if isinstance(seconds, BaseException):
                self._drop(member, f"{type(seconds).__name__}: {seconds}")
                continue
            self._reports.append(PushReport(worker_id, info.version, info.num_bytes, seconds))
            log.info(
                "weights v%d -> %s: %.1f MB in %.2fs",
                info.version, worker_id, info.num_bytes / 1e6, seconds,
            )  # fmt: skip

    def _open(self, joining: list[EngineMember], metadata: list[TensorMeta]) -> None:
        """Rendezvous with every joining engine at once (each group has its own peer)."""
        if not joining:
            return

        def make(member: EngineMember) -> Sender | Exception:
            try:
                return self._make_sender(member, metadata)
            except Exception as error:
                return error

        with ThreadPoolExecutor(len(joining), thread_name_prefix="relayrl-nccl-open") as pool:
            for member, made in zip(joining, pool.map(make, joining), strict=True):
                if isinstance(made, Exception):
                    self._drop(member, f"{type(made).__name__}: {made}")
                else:
                    self._senders[member.worker_id] = (member, made)

    def _drop(self, member: EngineMember, cause: str) -> None:
        log.warning("weight push to %s failed, dropping it: %s", member.worker_id, cause)
        if member.worker_id in self._senders:
            self._close(member.worker_id, "failed")
        self._roster.leave(member.worker_id, member.joined)
        self._on_dropped(member)

    def _close(self, worker_id: str, why: str) -> None:
        _, sender = self._senders.pop(worker_id)
        try:
            sender.close()
        except Exception as error:
            log.warning("closing the weight group of %s (%s): %s", worker_id, why, error)
