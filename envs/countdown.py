"""Countdown: combine the given numbers, each exactly once, with + - * / to hit the target.
A calculator tool (Hermes-style JSON calls) checks arithmetic along the way."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from relayrl.envs.arith_expr import ExpressionError, evaluate, numbers_in, parse_expression
from relayrl.envs.base import EnvSpec, Message, StepResult, Task
from relayrl.envs.calculator import CalculatorTool
from relayrl.envs.registry import register_env
from relayrl.envs.tags import tagged
from relayrl.envs.tool_calls import HermesFormat
from relayrl.envs.tool_env import ToolEnv


class CountdownParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_numbers: int = Field(3, ge=2)
    max_numbers: int = Field(4, ge=2, le=6)
    max_number: int = Field(50, ge=2)
    max_target: int = Field(500, ge=1)
    system_prompt: str = (
        "Use each of the given numbers exactly once, with + - * / and parentheses, to make "
        "the target. Give the final expression inside <answer></answer> tags, for example "
        "<answer>(25 - 5) * 3</answer>."
    )
    # tool_success (share of calculator calls that worked) is logged; weight it to reward it.
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0, "format": 0.1}
    )

    @model_validator(mode="after")
    def _counts_are_ordered(self) -> CountdownParams:
        if self.min_numbers > self.max_numbers:
            raise ValueError("min_numbers must not exceed max_numbers")
        return self


class CountdownTasks:
    def __init__(self, params: CountdownParams) -> None:
        self.params = params

    def sample(self, rng: random.Random) -> Task:
        p = self.params
        while True:
            count = rng.randint(p.min_numbers, p.max_numbers)
            numbers = [rng.randint(1, p.max_number) for _ in range(count)]
            # A random +-* combination of all numbers guarantees the target is reachable.
            expression = str(numbers[0])
            for number in numbers[1:]:
                expression = f"({expression} {rng.choice('+-*')} {number})"
            target = evaluate(parse_expression(expression))
            if 0 < target <= p.max_target:
                break
        shuffled = rng.sample(numbers, len(numbers))
        question = f"Numbers: {', '.join(map(str, shuffled))}. Target: {target}."
        return Task(
            id=f"countdown-{question}",
            messages=[{"role": "user", "content": question}],
            answer={"numbers": sorted(numbers), "target": int(target)},
        )


def check_answer(expression: str, numbers: list[int], target: int) -> tuple[bool, bool]:
    """(well formed, correct): an arithmetic expression; the numbers used once; the target."""
    try:
        node = parse_expression(expression)
        value = evaluate(node)
    except ExpressionError:
        return False, False
    used = sorted(numbers_in(node))
    return True, used == sorted(numbers) and value == target


class CountdownEnv(ToolEnv):
    def __init__(self, params: CountdownParams) -> None:
        super().__init__([CalculatorTool()], HermesFormat())
        self.params = params

    def prompt(self, task: Task) -> list[Message]:
        return self.instructed_prompt(self.params.system_prompt, task)

    async def finish(self, text: str) -> StepResult:
        answers = tagged(text, "<answer>", "</answer>")
        well_formed, correct = (
            check_answer(answers[-1], **self.task.answer) if answers else (False, False)
        )
        return self.final_answer(
            correct=correct,
            well_formed=well_formed,
            answered=bool(answers),
            weights=self.params.reward_weights,
        )


def stop_strings(params: CountdownParams) -> tuple[str, ...]:
    return HermesFormat.stop_strings


SPEC = register_env(
    "countdown",
    EnvSpec(
        params_model=CountdownParams,
        make_tasks=CountdownTasks,
        make_env=CountdownEnv,
        stop_strings=stop_strings,
    ),
)
