"""A rollout worker: admitted by the controller, it pulls the newest weights, samples a group
of episodes for one task and pushes them to the buffer. Hosted as a Ray actor by the cluster."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoTokenizer

from relayrl.actors.engine import Engine, SamplingSettings
from relayrl.actors.episode import single_turn_trajectory
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryProducer
from relayrl.envs.registry import resolve_env
from relayrl.weights import WeightSubscriber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    worker_id: str
    model_path: str
    engine: str
    dtype: str
    torch_threads: int
    group_size: int
    sampling: SamplingSettings
    env_name: str
    env_params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class WorkerStats:
    groups: int = 0
    trajectories: int = 0
    sampled_tokens: int = 0
    generate_s: float = 0.0
    weight_sync_s: float = 0.0
    weight_syncs: int = 0
    idle_s: float = 0.0


def prompt_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    return [int(token) for token in ids]


def build_engine(settings: WorkerSettings, tokenizer: Any) -> Engine:
    if settings.engine != "transformers":
        raise ValueError(f"rollout.engine {settings.engine!r} is not available in this build")
    eos = tuple(int(t) for t in [tokenizer.eos_token_id] if t is not None)
    return TransformersEngine(
        TransformersSettings(
            settings.model_path, settings.dtype, settings.torch_threads, settings.seed
        ),
        eos_token_ids=eos,
    )


class RolloutWorker:
    def __init__(
        self,
        settings: WorkerSettings,
        producer: TrajectoryProducer,
        weights: WeightSubscriber,
        gate: AdmissionGate,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        self.producer = producer
        self.weights = weights
        self.gate = gate
        self.tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
        self.engine = build_engine(settings, self.tokenizer)
        spec = resolve_env(settings.env_name)
        self.env_params = spec.params_model.model_validate(settings.env_params)
        self.env_spec = spec
        self.tasks = spec.make_tasks(self.env_params)
        self.rng = random.Random(f"{settings.seed}-{settings.worker_id}")
        self.stats = WorkerStats()

    async def sync_weights(self) -> int:
        """Pull the newest published version if it is newer than the loaded one."""
        started = time.perf_counter()
        found = await asyncio.to_thread(self.weights.fetch, self.engine.version)
        if found is not None:
            info, state = found
            await self.engine.update_weights(state, info.version)
            self.stats.weight_syncs += 1
            self.stats.weight_sync_s += time.perf_counter() - started
        return self.engine.version

    async def _sample_group(self) -> list:
        settings = self.settings
        task = self.tasks.sample(self.rng)
        prompt_ids = prompt_token_ids(self.tokenizer, task.messages)
        started = time.perf_counter()
        completions = await self.engine.generate(prompt_ids, settings.sampling, settings.group_size)
        generate_s = time.perf_counter() - started
        self.stats.generate_s += generate_s
        group_id = uuid.uuid4().hex
        trajectories = []
        for completion in completions:
            env = self.env_spec.make_env(self.env_params)
            await env.reset(task)
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            env_started = time.perf_counter()
            result = await env.step(text)
            await env.close()
            trajectories.append(
                single_turn_trajectory(
                    prompt_ids,
                    completion,
                    group_id,
                    result.reward,
                    result.reward_channels,
                    task.to_record(),
                    {"generate_s": generate_s, "env_s": time.perf_counter() - env_started},
                )
            )
            self.stats.sampled_tokens += len(completion.token_ids)
        return trajectories

    async def run(self) -> dict[str, Any]:
        """Generate groups until the controller says the job is stopping."""
        worker_id = self.settings.worker_id
        count = self.settings.group_size
        while True:
            waited = time.perf_counter()
            version = await self.gate.acquire(worker_id, count)
            self.stats.idle_s += time.perf_counter() - waited
            if version is None:
                break
            produced = False
            try:
                await self.sync_weights()
                trajectories = await self._sample_group()
                await asyncio.to_thread(self.producer.push, trajectories)
                produced = True
                self.stats.groups += 1
                self.stats.trajectories += len(trajectories)
            finally:
                await self.gate.release(worker_id, count, produced)
        return self.report()

    def report(self) -> dict[str, Any]:
        return {"worker_id": self.settings.worker_id, **self.stats.__dict__}
