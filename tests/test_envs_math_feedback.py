"""The "try again" environment: feedback after a wrong answer, discounted later success."""

from __future__ import annotations

import asyncio
import random

import pytest

from relayrl.envs.base import StepResult
from relayrl.envs.math_feedback import MathFeedbackParams
from relayrl.envs.registry import resolve_env


def play(params: MathFeedbackParams, replies: list[str]) -> list[StepResult]:
    spec = resolve_env("math-feedback")
    task = spec.make_tasks(params).sample(random.Random(2))
    env = spec.make_env(params)
    answer = str(task.answer)

    async def go() -> list[StepResult]:
        await env.reset(task)
        results = []
        for reply in replies:
            results.append(await env.step(reply.replace("RIGHT", answer)))
            if results[-1].done:
                break
        return results

    return asyncio.run(go())


def test_wrong_then_right_earns_the_discounted_reward() -> None:
    params = MathFeedbackParams(max_attempts=3, discount=0.5, kinds=["product"])
    wrong, missing, right = play(params, ["\\boxed{-1}", "no idea", "\\boxed{RIGHT}"])
    assert (wrong.observation, wrong.done, wrong.void) == (params.retry_message, False, False)
    assert (missing.observation, missing.void) == (params.missing_answer_message, True)
    assert right.done and right.reward == pytest.approx(0.25)
    assert right.reward_channels == {"correct": 0.25, "first_try": 0.0}


def test_first_try_and_running_out_of_attempts() -> None:
    params = MathFeedbackParams(max_attempts=2, kinds=["gcd"])
    [first] = play(params, ["\\boxed{RIGHT}"])
    assert first.reward_channels == {"correct": 1.0, "first_try": 1.0}
    results = play(params, ["\\boxed{-1}", "\\boxed{-2}", "\\boxed{RIGHT}"])
    assert len(results) == 2 and results[-1].done and results[-1].reward == 0.0
