"""Held-out evaluation episodes, played by the same engine and agent loop as training.

Every episode is one group of one, seeded from (eval seed, task index, sample), so a report
depends neither on which worker played a task nor on what shared the engine's batch with it.
Greedy episodes keep only the most likely token (top-p at its floor), which every engine
honours without a special case. Nothing here reaches the training buffer."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from relayrl.actors.engine import Completion, Engine, SamplingSettings
from relayrl.actors.workflow import WorkflowContext
from relayrl.config import RolloutConfig
from relayrl.envs.base import Env, EnvSpec, Task, TaskSource
from relayrl.trajectory import NO_VERSION

Mode = Literal["greedy", "sampled"]

# Top-p this small keeps only the most likely token: greedy decoding through the sampler.
GREEDY_TOP_P = 1e-9
# Draws of a task source that keeps repeating itself before the held-out set stops growing.
DRAWS_PER_TASK = 20


@dataclass(frozen=True)
class EvalPlan:
    """What one evaluation plays: the env parameters of the held-out tasks and how to sample."""

    env_params: dict[str, Any]
    greedy: bool
    samples: int
    temperature: float
    seed: int
    success_channel: str
    success_threshold: float
    max_concurrent_episodes: int

    def episodes(self) -> list[tuple[Mode, int]]:
        """(mode, sample) of every episode a task gets."""
        greedy: list[tuple[Mode, int]] = [("greedy", 0)] if self.greedy else []
        return greedy + [("sampled", sample) for sample in range(self.samples)]

    def episode_seed(self, index: int, mode: Mode, sample: int) -> int:
        return zlib.crc32(f"{self.seed}/{index}/{mode}/{sample}".encode()) % 2**31


@dataclass(frozen=True)
class EvalItem:
    """One held-out task and its place in the held-out list (which fixes its seeds)."""

    index: int
    task: Task


@dataclass(frozen=True)
class EvalEpisode:
    index: int
    task_id: str
    mode: Mode
    sample: int
    solved: bool
    reward: float
    reward_channels: dict[str, float]
    tool_calls: int
    tool_successes: int
    turns: int
    response_tokens: int
    finish_reason: str
    error: str | None
    # Everything after the prompt, decoded: the model's turns and the observations between them.
    transcript: str
    # The oldest and newest policy version among its sampled tokens.
    versions: tuple[int, int]


@runtime_checkable
class FiniteTasks(Protocol):
    """A task source that can list its whole split (the dataset env's held-out rows)."""

    def tasks(self) -> Sequence[Task]: ...


class GroupPlayer(Protocol):
    """The agent loop's side the evaluation needs: one finished episode per environment."""

    async def run_group(self, task: Task, envs: Sequence[Env]) -> list[Any]: ...


# Builds the job's agent loop over an engine, with the held-out env's stop strings.
PlayerFactory = Callable[[Engine, tuple[str, ...]], GroupPlayer]


def draw_eval_tasks(source: TaskSource, count: int, seed: int) -> list[EvalItem]:
    """The held-out tasks: a finite split's first `count`, else up to `count` distinct tasks
    (by id) drawn with `seed`."""
    if isinstance(source, FiniteTasks):
        listed = list(source.tasks())[:count]
        return [EvalItem(index, task) for index, task in enumerate(listed)]
    rng = random.Random(f"eval-{seed}")
    found: dict[str, Task] = {}
    for _ in range(count * DRAWS_PER_TASK):
        task = source.sample(rng)
        found.setdefault(task.id, task)
        if len(found) == count:
            break
    return [EvalItem(index, task) for index, task in enumerate(found.values())]


class SeededEngine:
    """One episode's view of the engine: every call gets the episode's sampling and its own
    seed, the n-th call of the episode always the same one."""

    def __init__(self, engine: Engine, temperature: float, top_p: float, seed: int) -> None:
        self._engine = engine
        self._temperature = temperature
        self._top_p = top_p
        self._seeds = random.Random(seed)

    @property
    def version(self) -> int:
        return self._engine.version

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        seeded = dataclasses.replace(
            settings,
            temperature=self._temperature,
            top_p=self._top_p,
            seed=self._seeds.randrange(2**31),
        )
        return await self._engine.generate(prompt_ids, seeded, n)

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        raise RuntimeError("an evaluation episode never loads weights")

    async def close(self) -> None:
        """The engine belongs to the worker; an episode's view has nothing to close."""


async def play_eval(
    plan: EvalPlan,
    items: Sequence[EvalItem],
    engine: Engine,
    spec: EnvSpec,
    make_player: PlayerFactory,
    tokenizer: Any,
) -> list[EvalEpisode]:
    """Every episode `plan` asks for on `items`, at most `max_concurrent_episodes` at once."""
    params = spec.params_model.model_validate(plan.env_params)
    stop_strings = spec.stop_strings(params)
    slots = asyncio.Semaphore(plan.max_concurrent_episodes)

    async def one(item: EvalItem, mode: Mode, sample: int) -> EvalEpisode:
        async with slots:
            temperature, top_p = (
                (1.0, GREEDY_TOP_P) if mode == "greedy" else (plan.temperature, 1.0)
            )
            seeded = SeededEngine(
                engine, temperature, top_p, plan.episode_seed(item.index, mode, sample)
            )
            env = spec.make_env(params)
            try:
                [outcome] = await make_player(seeded, stop_strings).run_group(item.task, [env])
            finally:
                await env.close()
            return _record(plan, item, mode, sample, outcome, tokenizer)

    return list(
        await asyncio.gather(
            *(one(item, mode, sample) for item in items for mode, sample in plan.episodes())
        )
    )


def _record(
    plan: EvalPlan, item: EvalItem, mode: Mode, sample: int, outcome: Any, tokenizer: Any
) -> EvalEpisode:
    episode = outcome.episode
    channels = {name: float(value) for name, value in episode.reward_channels.items()}
    judged = channels.get(plan.success_channel, float(episode.reward))
    statuses = [turn.tool_status for turn in episode.turns if turn.tool_status is not None]
    versions = [v for v in episode.versions if v != NO_VERSION]
    return EvalEpisode(
        index=item.index,
        task_id=item.task.id,
        mode=mode,
        sample=sample,
        solved=episode.error is None and judged >= plan.success_threshold,
        reward=float(episode.reward),
        reward_channels=channels,
        tool_calls=len(statuses),
        tool_successes=sum(status == "ok" for status in statuses),
        turns=len(episode.turns),
        response_tokens=int(sum(episode.loss_mask)),
        finish_reason=str(outcome.finish_reason),
        error=episode.error,
        transcript=tokenizer.decode(episode.tokens[episode.prompt_len :]),
        versions=(min(versions), max(versions)) if versions else (NO_VERSION, NO_VERSION),
    )


def workflow_players(
    workflow: type[Any], tokenizer: Any, rollout: RolloutConfig, worker_id: str
) -> PlayerFactory:
    """Players built the way a worker builds its rollout workflow, over an episode's engine."""

    def make(engine: Engine, stop_strings: tuple[str, ...]) -> GroupPlayer:
        context = WorkflowContext(
            engine,
            tokenizer,
            rollout.sampling,
            rollout.agent,
            stop_strings=stop_strings,
            worker_id=worker_id,
        )
        return workflow.from_context(context)

    return make
