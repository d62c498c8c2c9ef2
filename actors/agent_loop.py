"""The multi-turn agent loop, token in and token out.

A group's first turn is one batched `generate(n=group_size)` call; after that each episode
goes on by itself, concurrently: the environment reads the turn's text (decoded, never
re-encoded), and its answer is appended as chat-template tokens the model did not sample.
An episode ends when the environment says so, at the turn cap, or at the token cap.

An environment that fails (an exception from `reset` or `step`, or a step result that is not
one: a non-finite reward, an observation that is not text) ends only its own episode, with
the end `EpisodeEnd.ERROR` and the cause recorded; the episode stays in its group, masked
from the loss. Engine failures are not caught: they are the worker's, and take it down."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from relayrl.actors.engine import Completion, Engine, SamplingSettings
from relayrl.actors.episode import EpisodeBuilder, EpisodeOutcome
from relayrl.actors.workflow import WorkflowContext
from relayrl.chat_format import ObservationFormatter, prompt_token_ids
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.base import Env, Message, StepResult, Task
from relayrl.trajectory import EpisodeEnd

log = logging.getLogger(__name__)


class AgentLoop:
    """The built-in rollout workflow (`rollout.workflow`'s default)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        sampling: SamplingConfig,
        agent: AgentConfig,
        stop_strings: tuple[str, ...] = (),
        worker_id: str = "",
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.agent = agent
        self.worker_id = worker_id
        self.sampling = SamplingSettings(
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop_strings=tuple(dict.fromkeys(stop_strings)),
        )
        self.formatter = ObservationFormatter(
            tokenizer,
            agent.observation_role,
            agent.max_observation_chars,
            agent.max_observation_tokens,
        )
        self._logged_causes: set[str] = set()

    @classmethod
    def from_context(cls, context: WorkflowContext) -> AgentLoop:
        return cls(
            context.engine,
            context.tokenizer,
            context.sampling,
            context.agent,
            stop_strings=context.stop_strings,
            worker_id=context.worker_id,
        )

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
        budget = self.agent.max_total_tokens - len(prompt_ids)
        if budget < 1:
            detail = (
                f"its prompt has {len(prompt_ids)} tokens, as many as "
                f"rollout.agent.max_total_tokens ({self.agent.max_total_tokens})"
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
        prompt_ids = prompt_ids[: self.agent.max_total_tokens]
        outcomes = []
        for _ in range(size):
            episode = EpisodeBuilder(prompt_ids)
            episode.end_in_error(cause, None, 0.0)
            outcomes.append(EpisodeOutcome(episode, EpisodeEnd.ERROR, 0.0, 0.0))
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
            void = self.agent.drop_void_trajectories and episode.void_turns
            if end != EpisodeEnd.ERROR and void:
                end = EpisodeEnd.VOID_TURN
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
                return outcome(EpisodeEnd.ERROR)
            episode.record_turn(span, result, duration)
            if result.done or result.observation is None:
                return outcome(completion.finish_reason)
            if len(episode.turns) >= self.agent.max_turns:
                return outcome(EpisodeEnd.MAX_TURNS)
            last_sampled = completion.token_ids[-1] if completion.token_ids else None
            observation = self.formatter.token_ids(result.observation, last_sampled)
            budget = self.agent.max_total_tokens - len(episode) - len(observation)
            if budget < 1:
                return outcome(EpisodeEnd.LENGTH)
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
