"""An inference engine whose generation time is simulated, for benchmarks/scaling.py only.

It implements the real engine protocol (actors/engine.py): each `generate` call sleeps a
fixed time and returns random tokens, as a batching engine with spare capacity would (calls
that overlap share the wait), so the rest of the job (workers, agent loop, environment,
admission, Redis, learner, weights) runs for real while generation costs no CPU. The
benchmark installs it in every Ray worker process with Ray's `worker_process_setup_hook`.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Mapping
from typing import Any

import torch

from relayrl.actors.engine import Completion, Engine, SamplingSettings
from relayrl.trajectory import EpisodeEnd

SECONDS_ENV = "RELAYRL_SIMULATED_GENERATE_S"
# Token ids every tokenizer the benchmark uses has (the tiny model's has 512).
TOKEN_RANGE = (64, 256)


class SimulatedEngine:
    def __init__(self, seconds_per_call: float, seed: int) -> None:
        self._seconds = seconds_per_call
        self._rng = random.Random(seed)
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        await asyncio.sleep(self._seconds)
        count = settings.max_new_tokens
        return [
            Completion(
                token_ids=[self._rng.randrange(*TOKEN_RANGE) for _ in range(count)],
                logprobs=[-1.0] * count,
                finish_reason=EpisodeEnd.LENGTH,
                versions=[self._version] * count,
            )
            for _ in range(n)
        ]

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        self._version = version

    async def close(self) -> None:
        return None


def build_simulated_engine(*_args: Any, **_kwargs: Any) -> Engine:
    """Stands in for `relayrl.actors.rollout_worker.build_engine` whatever it is given."""
    return SimulatedEngine(float(os.environ[SECONDS_ENV]), random.randrange(2**31))


def install() -> None:
    """Ray worker process setup hook: rollout workers built in this process get the
    simulated engine."""
    from relayrl.actors import rollout_worker

    rollout_worker.build_engine = build_simulated_engine
