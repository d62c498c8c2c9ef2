"""The multi-turn agent loop, token in and token out.

A group's first turn is one batched `generate(n=group_size)` call; after that each episode
goes on by itself, concurrently: the environment reads the turn's text (decoded, never
re-encoded), and its answer is appended as chat-template tokens the model did not sample.
An episode ends when the environment says so, at the turn cap, or at the token cap."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relayrl.actors.chat_format import ObservationFormatter, prompt_token_ids
from relayrl.actors.engine import Completion, Engine, SamplingSettings
from relayrl.actors.episode import EpisodeBuilder
from relayrl.envs.base import Env, Task
from relayrl.trajectory import Trajectory

# stop/length/abort: how the last turn's generation ended; max_turns: the turn cap; void_turn: a
# turn neither called a tool nor answered, and such episodes are dropped from the loss.
EpisodeEnd = Literal["stop", "length", "abort", "max_turns", "void_turn"]


@dataclass(frozen=True)
class AgentSettings:
    max_turns: int = 4
    # Prompt, turns and observations together; no turn may take the episode past it.
    max_total_tokens: int = 2048
    # SimpleTIR: an episode with a void turn stays in its group but is masked from the loss.
    drop_void_trajectories: bool = False
    # The chat role environment messages (tool results, feedback) are rendered with.
    observation_role: str = "user"


@dataclass
class EpisodeOutcome:
    episode: EpisodeBuilder
    finish_reason: EpisodeEnd
    generate_s: float
    env_s: float

    @property
    def dropped(self) -> bool:
        return self.finish_reason == "void_turn"

    def to_trajectory(self, group_id: str, task_record: dict[str, Any]) -> Trajectory:
        return self.episode.to_trajectory(
            group_id,
            task_record,
            self.finish_reason,
            {"generate_s": self.generate_s, "env_s": self.env_s},
            train=not self.dropped,
        )


class AgentLoop:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        sampling: SamplingSettings,
        settings: AgentSettings,
        stop_strings: tuple[str, ...] = (),
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        merged = tuple(dict.fromkeys((*sampling.stop_strings, *stop_strings)))
        self.sampling = dataclasses.replace(sampling, stop_strings=merged)
        self.formatter = ObservationFormatter(tokenizer, settings.observation_role)

    def _sampling(self, budget: int) -> SamplingSettings:
        limit = min(self.sampling.max_new_tokens, budget)
        return dataclasses.replace(self.sampling, max_new_tokens=limit)

    async def run_group(self, task: Task, envs: Sequence[Env]) -> list[EpisodeOutcome]:
        """One episode of `task` per environment, all from the same prompt."""
        prompts = await asyncio.gather(*(env.reset(task) for env in envs))
        if any(prompt != prompts[0] for prompt in prompts):
            raise ValueError("env.reset must start every episode of a task from the same prompt")
        prompt_ids = prompt_token_ids(self.tokenizer, prompts[0])
        budget = self.settings.max_total_tokens - len(prompt_ids)
        if budget < 1:
            raise ValueError(
                f"task {task.id!r}: its prompt has {len(prompt_ids)} tokens, as many as "
                f"rollout.agent.max_total_tokens ({self.settings.max_total_tokens})"
            )
        started = time.perf_counter()
        first = await self.engine.generate(prompt_ids, self._sampling(budget), len(envs))
        generate_s = time.perf_counter() - started
        return list(
            await asyncio.gather(
                *(
                    self._play(env, EpisodeBuilder(prompt_ids), completion, generate_s)
                    for env, completion in zip(envs, first, strict=True)
                )
            )
        )

    async def _play(
        self, env: Env, episode: EpisodeBuilder, completion: Completion, generate_s: float
    ) -> EpisodeOutcome:
        env_s = 0.0

        def outcome(end: EpisodeEnd) -> EpisodeOutcome:
            if self.settings.drop_void_trajectories and episode.void_turns:
                end = "void_turn"
            return EpisodeOutcome(episode, end, generate_s, env_s)

        while True:
            span = episode.add_sampled(completion)
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            started = time.perf_counter()
            result = await env.step(text)
            duration = time.perf_counter() - started
            env_s += duration
            episode.record_turn(span, result, duration)
            if result.done or result.observation is None:
                return outcome(completion.finish_reason)
            if len(episode.turns) >= self.settings.max_turns:
                return outcome("max_turns")
            last_sampled = completion.token_ids[-1] if completion.token_ids else None
            observation = self.formatter.token_ids(result.observation, last_sampled)
            budget = self.settings.max_total_tokens - len(episode) - len(observation)
            if budget < 1:
                return outcome("length")
            episode.add_observation(observation)
            started = time.perf_counter()
            [completion] = await self.engine.generate(
                list(episode.tokens), self._sampling(budget), 1
            )
            generate_s += time.perf_counter() - started
