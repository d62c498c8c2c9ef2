"""The colocated placement's transport: learner and engine share one module in one process, so
publishing a version moves no tensor; it only names the version the engine stamps on the
tokens it samples from now on."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

import torch

from relayrl.weights import WeightVersion


class StampsVersions(Protocol):
    """An engine generating with the learner's own module (`TransformersEngine` handed it)."""

    @property
    def version(self) -> int: ...

    def mark_version(self, version: int) -> None: ...


class InProcessWeights:
    """Both sides of the transport: the learner's `WeightPublisher` and the in-process worker's
    `WeightSubscriber`. Published while the learner holds the engine paused (its step), so no
    row runs across a version change."""

    def __init__(self) -> None:
        self._latest: WeightVersion | None = None
        self._engine: StampsVersions | None = None

    def attach(self, engine: StampsVersions) -> None:
        """Called with the engine paused: it generates from now on, stamped with the newest
        published version (the module already holds it)."""
        self._engine = engine
        if self._latest is not None:
            engine.mark_version(self._latest.version)

    def publish(self, version: int, state: Mapping[str, torch.Tensor]) -> WeightVersion:
        # The state is the live module's: nothing to copy or checksum.
        self._latest = WeightVersion(version, time.time(), "", 0)
        if self._engine is not None:
            self._engine.mark_version(version)
        return self._latest

    def latest(self) -> WeightVersion | None:
        return self._latest

    async def latest_async(self) -> WeightVersion | None:
        return self._latest
