"""The environment API: gymnasium-like `reset`/`step`, async, text in and text out."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclass(frozen=True)
class Task:
    id: str
    messages: list[Message]  # the prompt the episode starts from
    answer: Any = None  # what the reward checks against; JSON-serializable
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "answer": self.answer, **self.metadata}


@dataclass
class StepResult:
    # Text the environment answers with (a tool result, feedback); None ends the dialogue.
    observation: str | None
    done: bool
    reward: float = 0.0  # the weighted sum of `reward_channels` for this step
    reward_channels: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    tool: str | None = None  # the tool this turn called, when it called one
    tool_status: str | None = None  # that call's ToolStatus ("invalid" for a malformed call)
    void: bool = False  # the turn neither called a tool nor gave an answer (SimpleTIR)


class TaskSource(Protocol):
    def sample(self, rng: random.Random) -> Task: ...


class Env(Protocol):
    async def reset(self, task: Task) -> list[Message]:
        """Start an episode; returns the prompt messages."""
        ...

    async def step(self, action: str) -> StepResult:
        """Apply the model's turn (its decoded text)."""
        ...

    async def close(self) -> None: ...


def no_stop_strings(params: Any) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class EnvSpec:
    """How to build one kind of environment from its validated parameters."""

    params_model: type[BaseModel]
    make_tasks: Callable[[Any], TaskSource]
    make_env: Callable[[Any], Env]
    # Text that ends a model turn early so the env can act on it (e.g. "</tool_call>").
    stop_strings: Callable[[Any], tuple[str, ...]] = no_stop_strings


def spec_from_class(env_class: Any) -> EnvSpec:
    """An Env class plugs in by itself when it names its parameters model (`params_model`) and
    its task source (`make_tasks(params)`); it is built as `env_class(params)` and may add a
    `stop_strings(params)` static method."""
    missing = [name for name in ("params_model", "make_tasks") if not hasattr(env_class, name)]
    if missing:
        raise TypeError(f"{env_class.__name__} lacks {', '.join(missing)}")
    return EnvSpec(
        params_model=env_class.params_model,
        make_tasks=env_class.make_tasks,
        make_env=env_class,
        stop_strings=getattr(env_class, "stop_strings", no_stop_strings),
    )


def weighted_reward(channels: dict[str, float], weights: dict[str, float]) -> float:
    """Sum of channels times their weights; a channel without a weight counts 0."""
    return float(sum(value * weights.get(name, 0.0) for name, value in channels.items()))
