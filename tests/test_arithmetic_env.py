from __future__ import annotations

import asyncio
import random

import pytest

from relayrl.envs.arithmetic import ArithmeticParams, evaluate, last_integer, parse_answer
from relayrl.envs.registry import EnvConfigError, resolve_env, validate_env_params


def test_evaluate_follows_precedence() -> None:
    assert evaluate([2, 3, 4], ["+", "*"]) == 14
    assert evaluate([10, 3, 2], ["-", "-"]) == 5
    assert evaluate([3, 4, 5, 1], ["*", "-", "*"]) == 7


def test_answer_parsing() -> None:
    assert parse_answer("so <answer> -12 </answer>") == -12
    assert parse_answer("<answer>1</answer> then <answer>2</answer>") == 2
    assert parse_answer("<answer>twelve</answer>") is None
    assert parse_answer("12") is None
    assert last_integer("3 + 4 = 7.") == 7
    assert last_integer("no digits") is None


def run_episode(params: ArithmeticParams, reply_for) -> tuple[float, dict]:
    spec = resolve_env("arithmetic")
    task = spec.make_tasks(params).sample(random.Random(3))
    env = spec.make_env(params)

    async def go():
        await env.reset(task)
        return await env.step(reply_for(task.answer))

    result = asyncio.run(go())
    assert result.done
    return result.reward, result.reward_channels


def test_rewards_by_channel_and_weight() -> None:
    params = ArithmeticParams()
    reward, channels = run_episode(params, lambda a: f"<answer>{a}</answer>")
    assert channels == {"correct": 1.0, "format": 1.0} and reward == pytest.approx(1.2)
    reward, channels = run_episode(params, lambda a: f"<answer>{a + 1}</answer>")
    assert channels == {"correct": 0.0, "format": 1.0} and reward == pytest.approx(0.2)
    reward, channels = run_episode(params, lambda a: f"it is {a}")
    assert reward == 0.0
    lenient = ArithmeticParams(answer_format="last_number")
    reward, channels = run_episode(lenient, lambda a: f"it is {a}")
    assert channels == {"correct": 1.0, "format": 0.0}


def test_tasks_are_reproducible_and_in_range() -> None:
    tasks = resolve_env("arithmetic").make_tasks(ArithmeticParams(max_operand=5))
    first = [tasks.sample(random.Random(7)).id for _ in range(3)]
    assert len(set(first)) == 1
    for _ in range(50):
        task = tasks.sample(random.Random())
        assert abs(task.answer) <= 10


def test_bad_env_config_names_the_field() -> None:
    with pytest.raises(EnvConfigError, match=r"env\.params\.max_opernd: unknown field"):
        validate_env_params("arithmetic", {"max_opernd": 3})
    with pytest.raises(EnvConfigError, match="not registered"):
        validate_env_params("nope", {})
    with pytest.raises(EnvConfigError, match="cannot import"):
        validate_env_params("no_such_module:Env", {})
