"""Countdown with a calculator tool: tasks are solvable, answers are checked exactly."""

from __future__ import annotations

import asyncio
import random

import pytest

from relayrl.envs.arith_expr import ExpressionError, evaluate_text
from relayrl.envs.base import StepResult
from relayrl.envs.calculator import CalculatorTool
from relayrl.envs.countdown import CountdownParams, check_answer
from relayrl.envs.registry import EnvConfigError, resolve_env, validate_env_params


def test_generated_tasks_use_their_numbers_and_are_reachable() -> None:
    spec = resolve_env("countdown")
    params = CountdownParams(min_numbers=3, max_numbers=4)
    tasks = spec.make_tasks(params)
    rng = random.Random(0)
    for _ in range(30):
        task = tasks.sample(rng)
        numbers, target = task.answer["numbers"], task.answer["target"]
        assert 3 <= len(numbers) <= 4 and 0 < target <= params.max_target
        shown = task.messages[0]["content"]
        assert (
            sorted(int(n) for n in shown.split("Numbers: ")[1].split(".")[0].split(", ")) == numbers
        )


@pytest.mark.parametrize(
    ("expression", "verdict"),
    [
        ("(25 - 5) * 3", (True, True)),
        ("3 * (25 - 5)", (True, True)),
        ("25 * 3 - 5", (True, False)),  # right numbers, wrong value
        ("(25 - 5) * 3 + 0", (True, False)),  # an extra number
        ("60", (True, False)),
        ("import os", (False, False)),
        ("(25 - 5) * 3 ** 1", (False, False)),
    ],
)
def test_answers_use_each_number_once_and_hit_the_target(expression: str, verdict) -> None:
    assert check_answer(expression, numbers=[3, 5, 25], target=60) == verdict


def test_calculator_is_exact_and_refuses_anything_but_arithmetic() -> None:
    async def calls() -> list:
        tool = CalculatorTool()
        return [
            await tool.call({"expression": expression})
            for expression in ["7 / 2 + 1 / 2", "10 / 4", "1 / 0", "__import__('os')", "1e999"]
        ] + [await tool.call({})]

    results = asyncio.run(calls())
    assert [r.status for r in results] == ["ok", "ok", "error", "error", "error", "invalid"]
    assert results[0].output == "4" and results[1].output == "5/2 ≈ 2.5"
    assert "division by zero" in results[2].output
    with pytest.raises(ExpressionError, match="longer than"):
        evaluate_text("1+" * 200 + "1")


def test_an_episode_calls_the_calculator_then_answers() -> None:
    spec = resolve_env("countdown")
    params = CountdownParams()
    env = spec.make_env(params)
    task = spec.make_tasks(params).sample(random.Random(4))
    numbers, target = task.answer["numbers"], task.answer["target"]
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "2 * 21"}}</tool_call>'

    async def go() -> tuple[list, list[StepResult]]:
        prompt = await env.reset(task)
        return prompt, [await env.step(call), await env.step(f"<answer>{numbers[0]}</answer>")]

    prompt, (calculated, answered) = asyncio.run(go())
    assert '"name": "calculator"' in prompt[0]["content"]
    assert calculated.observation == "<tool_response>\n42\n</tool_response>"
    assert answered.done and answered.reward_channels["format"] == 1.0
    assert answered.reward_channels["correct"] == float(numbers == [target])
    assert answered.reward_channels["tool_success"] == 1.0


def test_bad_params_are_named() -> None:
    with pytest.raises(EnvConfigError, match="min_numbers must not exceed max_numbers"):
        validate_env_params("countdown", {"min_numbers": 5, "max_numbers": 3})
