"""The weight-transport seam: the learner publishes each policy version once; workers pull
it, or (a push transport such as NCCL) the learner delivers it into their engines."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class WeightVersion:
    version: int
    published_at: float  # unix time
    checksum: str  # crc32 over names, dtypes, shapes and bytes, in name order
    num_bytes: int


class WeightPublisher(Protocol):
    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion: ...

    def serve_joins(self) -> None:
        """Bring engines that joined since the last publish up to the current version.
        Called while the learner waits for data, when its weights are not changing."""
        ...


class WeightSubscriber(Protocol):
    # True when the learner delivers versions into the engines (workers wait, never fetch).
    pushes: bool

    def latest(self) -> WeightVersion | None:
        """Metadata of the newest published version, without its tensors."""
        ...

    def fetch(self, newer_than: int) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        """The newest version if it is newer than `newer_than`, checksum verified; always
        None from a push transport, which delivers versions into the engine itself."""
        ...

    async def latest_async(self) -> WeightVersion | None:
        """`latest` for async callers (rollout workers): awaits, never blocks the loop."""
        ...

    async def fetch_async(
        self, newer_than: int
    ) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        """`fetch` for async callers (rollout workers): awaits, never blocks the loop."""
        ...

    def attach(self, worker_id: str, receiver: Any, engine_world_size: int) -> None:
        """Register a worker's engine (`receiver`: its actor) with a push transport."""
        ...

    def detach(self, worker_id: str) -> None:
        """The worker left; a push transport stops sending to it."""
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
