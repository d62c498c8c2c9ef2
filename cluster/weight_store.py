"""Versioned weights through the Ray object store (the `object_store` transport).

The learner writes each version once into the object store, from views of its parameters, and
hands the store actor the reference that workers pull; the store never copies it. One version
exists at a time: the store lets go of the previous one before the next is written (a worker
still pulling it keeps it alive until it is done). The object belongs to the learner's process,
whose death ends the job anyway. Under a push transport (NCCL) the store keeps only the
version's metadata and the roster of engines the learner sends to.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from relayrl.weights import WeightChecksumError, WeightVersion, checksum

# numpy has no bfloat16: such tensors travel as raw int16 bits and are viewed back.
_BITS_DTYPE = {torch.bfloat16: torch.int16, torch.float16: torch.int16}
_DTYPE_NAMES = {str(dtype): dtype for dtype in (torch.float32, torch.bfloat16, torch.float16)}

WireState = dict[str, tuple[str, np.ndarray]]


def to_wire(state: Mapping[str, torch.Tensor]) -> WireState:
    """Views of the tensors (no copy when they are CPU and contiguous); a tensor under two
    names (tied embeddings) is one array, so it is serialized once."""
    wire: WireState = {}
    arrays: dict[int, tuple[str, np.ndarray]] = {}
    for name, tensor in state.items():
        if id(tensor) not in arrays:
            flat = tensor.detach().contiguous().cpu()
            bits = flat.view(_BITS_DTYPE[flat.dtype]) if flat.dtype in _BITS_DTYPE else flat
            arrays[id(tensor)] = (str(flat.dtype), bits.numpy())
        wire[name] = arrays[id(tensor)]
    return wire


def from_wire(wire: WireState) -> dict[str, torch.Tensor]:
    state = {}
    with warnings.catch_warnings():
        # Arrays from the object store are read-only; the engines only copy from them.
        warnings.simplefilter("ignore", UserWarning)
        for name, (dtype_name, array) in wire.items():
            tensor = torch.from_numpy(array)
            dtype = _DTYPE_NAMES[dtype_name]
            state[name] = tensor.view(dtype) if dtype in _BITS_DTYPE else tensor
    return state


@dataclass(frozen=True)
class EngineMember:
    """One registered engine; `joined` rises on every registration, so a worker that
    re-registers (a restarted engine) is a new member the transport must set up again."""

    worker_id: str
    joined: int
    receiver: Any
    world_size: int


@ray.remote(num_cpus=0, max_restarts=0)
class WeightStore:
    def __init__(self) -> None:
        self._latest: tuple[WeightVersion, ray.ObjectRef | None] | None = None
        self._engines: dict[str, EngineMember] = {}
        self._registrations = 0

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

    def register_engine(self, worker_id: str, receiver: Any, world_size: int) -> int:
        self._registrations += 1
        self._engines[worker_id] = EngineMember(
            worker_id, self._registrations, receiver, world_size
        )
        return self._registrations

    def unregister_engine(self, worker_id: str, joined: int | None = None) -> None:
        """Drop a worker's engine; with `joined`, only that registration of it."""
        member = self._engines.get(worker_id)
        if member is not None and joined in (None, member.joined):
            del self._engines[worker_id]

    def engines(self) -> list[EngineMember]:
        return list(self._engines.values())


class ObjectStoreWeights:
    """WeightPublisher and WeightSubscriber over a WeightStore actor."""

    pushes = False

    def __init__(
        self, store: ray.actor.ActorHandle, timeout_s: float = 300.0, verify: bool = True
    ) -> None:
        self._store = store
        self._timeout_s = timeout_s
        self._verify = verify

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        digest, num_bytes = checksum(state)
        info = WeightVersion(version, time.time(), digest, num_bytes)
        ray.get(self._store.release_tensors.remote(), timeout=self._timeout_s)
        tensors = ray.put(to_wire(state))
        ray.get(self._store.put.remote(info, [tensors]), timeout=self._timeout_s)
        return info

    def latest(self) -> WeightVersion | None:
        return ray.get(self._store.latest.remote(), timeout=self._timeout_s)

    def serve_joins(self) -> None:
        """Nothing to do: workers pull."""

    def attach(self, worker_id: str, receiver: Any, engine_world_size: int) -> None:
        """Nothing to do: workers pull."""

    def detach(self, worker_id: str) -> None:
        """Nothing to do: workers pull."""

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
