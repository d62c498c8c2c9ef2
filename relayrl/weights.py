"""The weight-transport seam: the learner publishes each policy version once.

A transport has two sides. The learner holds a `WeightPublisher`; a publisher that delivers
versions into running engines itself (NCCL) is also an `EnginePusher`. A rollout worker holds
a `WeightSubscriber`, which says which version is announced; one it can also pull tensors
from (the object store) is a `WeightPuller`. Under a pusher, a worker only waits until its
engine holds the announced version.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class WeightVersion:
    version: int
    published_at: float  # unix time
    checksum: str  # crc32 over names, dtypes, shapes and bytes, in name order ("" if pushed)
    num_bytes: int


@dataclass(frozen=True)
class PushReport:
    """One version delivered into one engine."""

    worker_id: str
    version: int
    num_bytes: int
    seconds: float


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver sizes its buffers from before any tensor travels."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def num_bytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


class WeightBuckets(Protocol):
    """A policy's tensors as a stream of buckets, in `metadata()` order. Iterating may be a
    collective (ZeRO-3 gathers each bucket on every rank), so every rank iterates it to the
    end, and a bucket's tensors are valid only until the next bucket is requested."""

    def metadata(self) -> list[TensorMeta]: ...

    def __iter__(self) -> Iterator[list[tuple[str, torch.Tensor]]]: ...


class WeightPublisher(Protocol):
    """The learner's side: called on rank 0 once per policy version."""

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion: ...


@runtime_checkable
class EnginePusher(WeightPublisher, Protocol):
    """A publisher that sends versions straight into registered engines from the learner's
    device tensors (no host copy, no checksum pass)."""

    # Buckets of the stream the learner hands `publish_buckets`; every rank plans the same.
    bucket_bytes: int

    def publish_buckets(self, version: int, buckets: WeightBuckets) -> WeightVersion:
        """Publish a version that exists only as a stream (ZeRO-3: gathered bucket by
        bucket); every rank iterates its own copy of the stream meanwhile."""
        ...

    def joined(self) -> bool:
        """Whether engines joined since the last publish wait for the current version."""
        ...

    def serve_joins(self, buckets: WeightBuckets | None = None) -> None:
        """Bring engines that joined since the last publish up to the current version, from
        the tensors it was published from or (a version published as a stream) from
        `buckets`, the same version streamed again. Called while the learner waits for
        data, when its weights are not changing."""
        ...

    def take_push_reports(self) -> list[PushReport]:
        """Pushes finished since the last call (the learner reports them per step)."""
        ...


class WeightSubscriber(Protocol):
    """A worker's side: which version is announced."""

    def latest(self) -> WeightVersion | None:
        """Metadata of the newest published version, without its tensors."""
        ...

    async def latest_async(self) -> WeightVersion | None:
        """`latest` for async callers (rollout workers): awaits, never blocks the loop."""
        ...


@runtime_checkable
class WeightPuller(WeightSubscriber, Protocol):
    """A subscriber the worker pulls each version from."""

    def fetch(self, newer_than: int) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        """The newest version if it is newer than `newer_than`, checksum verified."""
        ...

    async def fetch_async(
        self, newer_than: int
    ) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        """`fetch` for async callers (rollout workers): awaits, never blocks the loop."""
        ...


class WeightChecksumError(RuntimeError):
    """Weights arrived with a checksum that does not match what was published."""


def checksum(state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """A cheap integrity check of a state dict; returns (hex digest, total bytes)."""
    crc = 0
    total = 0
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        raw = tensor.view(torch.uint8).reshape(-1).numpy() if tensor.numel() else b""
        header = f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode()
        crc = zlib.crc32(header, crc)
        crc = zlib.crc32(raw, crc)
        total += tensor.numel() * tensor.element_size()
    return f"{crc:08x}", total
