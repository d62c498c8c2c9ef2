"""The `object_store` transport: versioned weights through Ray's object store.

The learner writes each version once into the object store, from views of its parameters, and
hands the store actor the reference that workers pull; the store never copies it. One version
exists at a time: the store lets go of the previous one before the next is written (a worker
still pulling it keeps it alive until it is done). The object belongs to the learner's process,
whose death ends the job anyway. Under the NCCL transport the store keeps only each version's
metadata, which announces it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import ray
import torch

from relayrl.cluster.weights.codec import WireState, from_wire, to_wire
from relayrl.weights import WeightChecksumError, WeightVersion, checksum


@ray.remote(num_cpus=0, max_restarts=0)
class WeightStore:
    def __init__(self) -> None:
        self._latest: tuple[WeightVersion, ray.ObjectRef | None] | None = None

    def put(self, info: WeightVersion, tensors: list[ray.ObjectRef] | None) -> None:
        """Record a version; `tensors` is [the reference of its WireState] (in a list, so Ray
        passes the reference, not the tensors); None keeps metadata only (they are pushed)."""
        if self._latest is not None and info.version <= self._latest[0].version:
            raise ValueError(
                f"weight version {info.version} is not newer than {self._latest[0].version}"
            )
        self._latest = (info, None if tensors is None else tensors[0])

    def release_tensors(self) -> None:
        """Let go of the current version's tensors (its metadata stays) before the next
        version is written; a worker still pulling them keeps them alive until it is done."""
        if self._latest is not None:
            self._latest = (self._latest[0], None)

    def latest(self) -> WeightVersion | None:
        return self._latest[0] if self._latest else None

    def get(self, newer_than: int) -> tuple[WeightVersion, list[ray.ObjectRef]] | None:
        if self._latest is None or self._latest[0].version <= newer_than:
            return None
        info, ref = self._latest
        if ref is None:
            return None
        # Wrapped in a list so Ray hands back the reference instead of inlining the tensors.
        return info, [ref]


class ObjectStorePublisher:
    """The learner's side: a WeightPublisher over a WeightStore actor."""

    def __init__(self, store: ray.actor.ActorHandle, timeout_s: float = 300.0) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        digest, num_bytes = checksum(state)
        info = WeightVersion(version, time.time(), digest, num_bytes)
        ray.get(self._store.release_tensors.remote(), timeout=self._timeout_s)
        tensors = ray.put(to_wire(state))
        ray.get(self._store.put.remote(info, [tensors]), timeout=self._timeout_s)
        return info


class ObjectStoreSubscriber:
    """A worker's side: a WeightPuller over a WeightStore actor."""

    def __init__(
        self, store: ray.actor.ActorHandle, timeout_s: float = 300.0, verify: bool = True
    ) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._verify = verify

    def latest(self) -> WeightVersion | None:
        return ray.get(self._store.latest.remote(), timeout=self._timeout_s)

    def fetch(self, newer_than: int) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        found = ray.get(self._store.get.remote(newer_than), timeout=self._timeout_s)
        if found is None:
            return None
        info, (ref,) = found
        return self._verified(info, ray.get(ref, timeout=self._timeout_s))

    async def latest_async(self) -> WeightVersion | None:
        return await asyncio.wait_for(self._store.latest.remote(), self._timeout_s)

    async def fetch_async(
        self, newer_than: int
    ) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        found = await asyncio.wait_for(self._store.get.remote(newer_than), self._timeout_s)
        if found is None:
            return None
        info, (ref,) = found
        wire = await asyncio.wait_for(ref, self._timeout_s)
        # The checksum reads every byte: off the event loop.
        return await asyncio.to_thread(self._verified, info, wire)

    def _verified(
        self, info: WeightVersion, wire: WireState
    ) -> tuple[WeightVersion, dict[str, torch.Tensor]]:
        state = from_wire(wire)
        if self._verify:
            digest, _ = checksum(state)
            if digest != info.checksum:
                raise WeightChecksumError(
                    f"weights v{info.version}: checksum {digest} != published {info.checksum}"
                )
        return info, state
