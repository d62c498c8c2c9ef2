"""A user-style environment plugged in by `module:attribute`: the reward is the share of
digits in the reply, so even a random model gets rewards that vary within a group."""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict

from relayrl.envs.base import EnvSpec, Message, StepResult, Task


class DigitParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = "Write numbers."


class DigitTasks:
    def __init__(self, params: DigitParams) -> None:
        self.params = params

    def sample(self, rng: random.Random) -> Task:
        n = rng.randint(0, 99)
        return Task(
            id=f"digits-{n}", messages=[{"role": "user", "content": f"{self.params.prompt} {n}"}]
        )


class DigitEnv:
    def __init__(self, params: DigitParams) -> None:
        self.params = params

    async def reset(self, task: Task) -> list[Message]:
        return task.messages

    async def step(self, action: str) -> StepResult:
        share = sum(c.isdigit() for c in action) / max(len(action), 1)
        return StepResult(
            observation=None, done=True, reward=share, reward_channels={"digits": share}
        )

    async def close(self) -> None:
        return None


DIGITS = EnvSpec(params_model=DigitParams, make_tasks=DigitTasks, make_env=DigitEnv)


class HalfFlatEnv(DigitEnv):
    """Even-numbered tasks give every reply the same reward, so their groups are flat."""

    flat = False

    async def reset(self, task: Task) -> list[Message]:
        self.flat = int(task.id.removeprefix("digits-")) % 2 == 0
        return task.messages

    async def step(self, action: str) -> StepResult:
        if self.flat:
            return StepResult(observation=None, done=True, reward=0.5, reward_channels={})
        return await super().step(action)


HALF_FLAT = EnvSpec(params_model=DigitParams, make_tasks=DigitTasks, make_env=HalfFlatEnv)
