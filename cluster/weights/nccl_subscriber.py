"""The `nccl` transport's subscriber side: a worker learns which version is announced; the
learner delivers it into the worker's engine itself, so there is nothing to fetch."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from relayrl.weights import WeightVersion


class PushedVersions:
    """A WeightSubscriber over the WeightStore in which the NCCL publisher announces."""

    def __init__(self, store: Any, timeout_s: float = 300.0) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def latest(self) -> WeightVersion | None:
        return ray.get(self._store.latest.remote(), timeout=self._timeout_s)

    async def latest_async(self) -> WeightVersion | None:
        return await asyncio.wait_for(self._store.latest.remote(), self._timeout_s)
