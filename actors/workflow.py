"""The rollout-workflow seam: how a worker turns one task and its environments into a group of
finished, token-faithful episodes.

The built-in multi-turn agent loop (`relayrl.actors.agent_loop:AgentLoop`) is the default; a
user's own loop is named by `rollout.workflow: package.module:Class`. The worker builds it once
with `Class.from_context(context)` and calls `run_group` for every admitted group; the episodes
it returns are built with `EpisodeBuilder`, which takes sampled tokens only as the engine's
`Completion`s (ids, log-probs, versions), so nothing sampled is ever re-tokenized."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self

from relayrl.actors.engine import Engine
from relayrl.actors.episode import EpisodeOutcome
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.base import Env, Task
from relayrl.errors import JobConfigError


@dataclass(frozen=True)
class WorkflowContext:
    """What a worker hands its workflow: the engine to sample from and the job's settings."""

    engine: Engine
    tokenizer: Any  # the policy's Hugging Face tokenizer, chat template included
    sampling: SamplingConfig  # rollout.sampling
    agent: AgentConfig  # rollout.agent: turn and token caps, observation role and caps
    stop_strings: tuple[str, ...]  # the environment's own, on top of sampling's
    worker_id: str


class RolloutWorkflow(Protocol):
    @classmethod
    def from_context(cls, context: WorkflowContext) -> Self:
        """Built once per worker, before its first group."""
        ...

    async def run_group(self, task: Task, envs: Sequence[Env]) -> list[EpisodeOutcome]:
        """One finished episode per environment, in order, all of `task` (their group shares
        a baseline). An environment's failure should end its episode as `EpisodeEnd.ERROR`,
        not raise: an exception from here ends the worker."""
        ...


class WorkflowTargetError(JobConfigError):
    """`rollout.workflow` does not name a usable workflow class."""


def resolve_workflow(target: str) -> type[RolloutWorkflow]:
    """The class `target` ("package.module:Class") names, checked for the protocol's methods."""
    field = f"rollout.workflow {target!r}"
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise WorkflowTargetError(f"{field} is not of the form 'package.module:Class'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise WorkflowTargetError(f"{field}: cannot import it ({exc})") from None
    if not isinstance(found, type):
        raise WorkflowTargetError(f"{field} is a {type(found).__name__}, not a class")
    if not callable(getattr(found, "from_context", None)):
        raise WorkflowTargetError(f"{field} has no from_context(context) classmethod")
    if not inspect.iscoroutinefunction(getattr(found, "run_group", None)):
        raise WorkflowTargetError(f"{field} has no `async def run_group(task, envs)`")
    return found


def checked_outcomes(
    workflow: RolloutWorkflow, outcomes: Any, envs: Sequence[Env]
) -> list[EpisodeOutcome]:
    """A group must fill exactly the samples it was admitted for, one episode per env."""
    name = type(workflow).__name__
    if not isinstance(outcomes, list) or len(outcomes) != len(envs):
        count = len(outcomes) if isinstance(outcomes, list) else type(outcomes).__name__
        raise RuntimeError(f"workflow {name} returned {count} episodes for {len(envs)} envs")
    for outcome in outcomes:
        if not isinstance(outcome, EpisodeOutcome):
            raise RuntimeError(
                f"workflow {name} returned a {type(outcome).__name__}, not an EpisodeOutcome"
            )
    return outcomes
