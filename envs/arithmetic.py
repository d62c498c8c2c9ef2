"""Single-turn integer arithmetic with an exact answer check and a format channel."""

from __future__ import annotations

import random
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relayrl.envs.base import EnvSpec, Message, StepResult, Task, weighted_reward
from relayrl.envs.registry import register_env
from relayrl.envs.tags import tagged

_INTEGER = re.compile(r"[-+]?\d+")
# Far longer than any answer; int() refuses more than 4300 digits anyway.
_MAX_DIGITS = 1000


class ArithmeticParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_operand: int = 0
    max_operand: int = 99
    num_operands: int = Field(2, ge=2, le=6)
    operators: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-"])
    system_prompt: str = (
        "Solve the arithmetic problem. Reply with the final answer inside "
        "<answer></answer> tags, for example <answer>42</answer>."
    )
    # "tag": the answer is the last <answer> tag; "last_number": the last integer in the reply.
    answer_format: Literal["tag", "last_number"] = "tag"
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0, "format": 0.2}
    )

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ArithmeticParams:
        if self.min_operand > self.max_operand:
            raise ValueError("min_operand must not exceed max_operand")
        if not self.operators:
            raise ValueError("operators must not be empty")
        return self


def parse_answer(text: str) -> int | None:
    """The integer inside the last <answer> tag, or None when there is none."""
    matches = tagged(text, "<answer>", "</answer>")
    if not matches:
        return None
    candidate = matches[-1].replace(",", "").strip()
    return _integer(candidate) if _INTEGER.fullmatch(candidate) else None


def last_integer(text: str) -> int | None:
    numbers = _INTEGER.findall(text)
    return _integer(numbers[-1]) if numbers else None


def _integer(digits: str) -> int | None:
    """The integer `digits` spell, or None when it has too many digits to be an answer."""
    return int(digits) if len(digits) <= _MAX_DIGITS else None


def evaluate(operands: list[int], operators: list[str]) -> int:
    """Value of `a op b op c ...` with the usual precedence of * over + and -."""
    terms = [operands[0]]
    signs = [1]
    for operator, operand in zip(operators, operands[1:], strict=True):
        if operator == "*":
            terms[-1] *= operand
        else:
            terms.append(operand)
            signs.append(1 if operator == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


class ArithmeticTasks:
    def __init__(self, params: ArithmeticParams) -> None:
        self.params = params

    def sample(self, rng: random.Random) -> Task:
        p = self.params
        operands = [rng.randint(p.min_operand, p.max_operand) for _ in range(p.num_operands)]
        operators = [rng.choice(p.operators) for _ in range(p.num_operands - 1)]
        expression = str(operands[0])
        for operator, operand in zip(operators, operands[1:], strict=True):
            expression += f" {operator} {operand}"
        answer = evaluate(operands, operators)
        messages: list[Message] = [
            {"role": "system", "content": p.system_prompt},
            {"role": "user", "content": f"What is {expression}?"},
        ]
        return Task(id=f"arith-{expression}", messages=messages, answer=answer)


class ArithmeticEnv:
    def __init__(self, params: ArithmeticParams) -> None:
        self.params = params
        self._task: Task | None = None

    async def reset(self, task: Task) -> list[Message]:
        self._task = task
        return task.messages

    async def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        tagged = parse_answer(action)
        answer = tagged if self.params.answer_format == "tag" else last_integer(action)
        channels = {
            "correct": float(answer is not None and answer == self._task.answer),
            "format": float(tagged is not None),
        }
        reward = weighted_reward(channels, self.params.reward_weights)
        return StepResult(observation=None, done=True, reward=reward, reward_channels=channels)

    async def close(self) -> None:
        self._task = None


SPEC = register_env(
    "arithmetic",
    EnvSpec(params_model=ArithmeticParams, make_tasks=ArithmeticTasks, make_env=ArithmeticEnv),
)
