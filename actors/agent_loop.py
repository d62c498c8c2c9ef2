"""The multi-turn agent loop, token in and token out.

A group's first turn is one batched `generate(n=group_size)` call; after that each episode
goes on by itself, concurrently: the environment reads the turn's text (decoded, never
re-encoded), and its answer is appended as chat-template tokens the model did not sample.
An episode ends when the environment says so, at the turn cap, or at the token cap.

An environment that fails (an exception from `reset` or `step`, or a step result that is not
one: a non-finite reward, an observation that is not text) ends only its own episode, with
the outcome "error" and the cause recorded; the episode stays in its group, masked from the
loss. Engine failures are not caught: they are the worker's, and take it down."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from relayrl.actors.engine import Completion, Engine, SamplingSettings
from relayrl.actors.episode import EpisodeBuilder
from relayrl.chat_format import ObservationFormatter, prompt_token_ids
from relayrl.envs.base import Env, Message, StepResult, Task
from relayrl.trajectory import Trajectory

log = logging.getLogger(__name__)

# stop/length/abort: how the last turn's generation ended; max_turns: the turn cap; void_turn: a
# turn neither called a tool nor answered, and such episodes are dropped from the loss; error:
# the environment failed, and the episode is dropped from the loss.
EpisodeEnd = Literal["stop", "length", "abort", "max_turns", "void_turn", "error"]


@dataclass(frozen=True)
class AgentSettings:
    max_turns: int = 4
    # Prompt, turns and observations together; no turn may take the episode past it.
    max_total_tokens: int = 2048
    # SimpleTIR: an episode with a void turn stays in its group but is masked from the loss.
    drop_void_trajectories: bool = False
    # The chat role environment messages (tool results, feedback) are rendered with.
    observation_role: str = "user"
    # Caps on every observation (tool output, feedback) before it reaches the engine.
    max_observation_chars: int = 8192
    max_observation_tokens: int = 1024


@dataclass
class EpisodeOutcome:
    episode: EpisodeBuilder
    finish_reason: EpisodeEnd
    generate_s: float
    env_s: float

    @property
    def dropped(self) -> bool:
        return self.finish_reason == "void_turn"

    @property
    def failed(self) -> bool:
        return self.finish_reason == "error"

    def to_trajectory(self, group_id: str, task_record: dict[str, Any]) -> Trajectory:
        return self.episode.to_trajectory(
            group_id,
            task_record,
            self.finish_reason,
            {"generate_s": self.generate_s, "env_s": self.env_s},
            train=not (self.dropped or self.failed),
        )


class AgentLoop:
    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        sampling: SamplingSettings,
        settings: AgentSettings,
        stop_strings: tuple[str, ...] = (),
        worker_id: str = "",
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.worker_id = worker_id
        merged = tuple(dict.fromkeys((*sampling.stop_strings, *stop_strings)))
        self.sampling = dataclasses.replace(sampling, stop_strings=merged)
        self.formatter = ObservationFormatter(
            tokenizer,
            settings.observation_role,
            settings.max_observation_chars,
            settings.max_observation_tokens,
        )
        self._logged_causes: set[str] = set()

    def _sampling(self, budget: int) -> SamplingSettings:
        limit = min(self.sampling.max_new_tokens, budget)
        return dataclasses.replace(self.sampling, max_new_tokens=limit)

    def _log_error(self, task: Task, cause: str, detail: str) -> None:
        # One sample per cause per worker: a failing env must not flood the log.
        if cause not in self._logged_causes:
            self._logged_causes.add(cause)
            log.warning(
                "worker %s: an episode of task %r ended in error (%s): %s; further episodes "
                "with this cause are counted in the step metrics, not logged",
                self.worker_id or "?",
                task.id,
                cause,
                detail[:500],
            )

    async def _reset(self, env: Env, task: Task) -> list[Message] | Exception:
        try:
            return await env.reset(task)
        except Exception as exc:  # the env's failure, not the worker's
            return exc

    async def run_group(self, task: Task, envs: Sequence[Env]) -> list[EpisodeOutcome]:
        """One episode of `task` per environment, all from the same prompt."""
        prompts = await asyncio.gather(*(self._reset(env, task) for env in envs))
        failure = _reset_failure(prompts)
        if failure is not None:
            cause, detail = failure
            return self._failed_group(task, len(envs), cause, detail)
        try:
            prompt_ids = prompt_token_ids(self.tokenizer, prompts[0])
        except Exception as exc:  # messages from the env that the chat template cannot render
            cause = type(exc).__name__
            return self._failed_group(task, len(envs), cause, f"prompt: {cause}: {exc}")
        budget = self.settings.max_total_tokens - len(prompt_ids)
        if budget < 1:
            detail = (
                f"its prompt has {len(prompt_ids)} tokens, as many as "
                f"rollout.agent.max_total_tokens ({self.settings.max_total_tokens})"
            )
            return self._failed_group(task, len(envs), "prompt_too_long", detail)
        started = time.perf_counter()
        first = await self.engine.generate(prompt_ids, self._sampling(budget), len(envs))
        generate_s = time.perf_counter() - started
        return list(
            await asyncio.gather(
                *(
                    self._play(task, env, EpisodeBuilder(prompt_ids), completion, generate_s)
                    for env, completion in zip(envs, first, strict=True)
                )
            )
        )

    def _failed_group(self, task: Task, size: int, cause: str, detail: str) -> list[EpisodeOutcome]:
        """Every episode of a group that could not start, masked: the group still fills the
        samples it was admitted for. Its tokens are the task's own prompt, within the cap (a
        task whose own messages cannot be rendered is the task source's bug, and raises)."""
        self._log_error(task, cause, detail)
        prompt_ids = prompt_token_ids(self.tokenizer, task.messages)
        prompt_ids = prompt_ids[: self.settings.max_total_tokens]
        outcomes = []
        for _ in range(size):
            episode = EpisodeBuilder(prompt_ids)
            episode.end_in_error(cause, None, 0.0)
            outcomes.append(EpisodeOutcome(episode, "error", 0.0, 0.0))
        return outcomes

    async def _step(self, env: Env, text: str) -> StepResult | tuple[str, str]:
        """The env's answer to a turn, or (cause, detail) when it failed."""
        try:
            result = await env.step(text)
        except Exception as exc:  # the env's failure (tool, parser, reward), not the worker's
            return type(exc).__name__, f"{type(exc).__name__}: {exc}"
        problem = _invalid_step(result)
        return result if problem is None else problem

    async def _play(
        self,
        task: Task,
        env: Env,
        episode: EpisodeBuilder,
        completion: Completion,
        generate_s: float,
    ) -> EpisodeOutcome:
        env_s = 0.0

        def outcome(end: EpisodeEnd) -> EpisodeOutcome:
            if end != "error" and self.settings.drop_void_trajectories and episode.void_turns:
                end = "void_turn"
            return EpisodeOutcome(episode, end, generate_s, env_s)

        while True:
            span = episode.add_sampled(completion)
            text = self.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            started = time.perf_counter()
            result = await self._step(env, text)
            duration = time.perf_counter() - started
            env_s += duration
            if isinstance(result, tuple):
                cause, detail = result
                self._log_error(task, cause, detail)
                episode.end_in_error(cause, span, duration)
                return outcome("error")
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


def _reset_failure(prompts: list[list[Message] | Exception]) -> tuple[str, str] | None:
    """(cause, detail) when the group cannot start: a reset failed, or the resets disagree."""
    for prompt in prompts:
        if isinstance(prompt, Exception):
            return type(prompt).__name__, f"reset: {type(prompt).__name__}: {prompt}"
    if any(prompt != prompts[0] for prompt in prompts):
        return "prompt_mismatch", "env.reset must start every episode of a task the same way"
    return None


def _invalid_step(result: Any) -> tuple[str, str] | None:
    """(cause, detail) when a step result cannot be trusted into a trajectory."""
    if not isinstance(result, StepResult):
        return "bad_step_result", f"step returned a {type(result).__name__}, not a StepResult"
    if result.observation is not None and not isinstance(result.observation, str):
        return "bad_observation", f"observation is a {type(result.observation).__name__}"
    if not isinstance(result.reward_channels, dict):
        return "bad_reward", f"reward channels are a {type(result.reward_channels).__name__}"
    values = [result.reward, *result.reward_channels.values()]
    try:
        finite = all(math.isfinite(float(value)) for value in values)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        return "bad_reward", f"reward {result.reward!r}, channels {result.reward_channels!r}"
    if not finite:
        return "non_finite_reward", f"reward {result.reward}, channels {result.reward_channels}"
    return None
