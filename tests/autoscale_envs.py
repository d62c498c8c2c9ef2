"""A scripted slow environment and a scripted slow learner for the autoscaling test, plugged
in as a user would (`env.name` and a custom loss target). Both read their pace from one JSON
file the test rewrites mid-run: {"env_s": seconds per episode, "learner_s": seconds per loss
call}."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from relayrl.envs.base import EnvSpec, Message, StepResult, Task
from relayrl.learner.algorithms.ppo import PPOClipLoss
from relayrl.learner.algorithms.types import LossInputs, LossOutput
from tests.plugin_envs import DigitTasks


def pace(script: str, key: str) -> float:
    return float(json.loads(Path(script).read_text())[key])


class PacedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str = "Write numbers."
    script: str


class PacedDigitEnv:
    """The digit-share reward, after the scripted pause: generation seems slow."""

    def __init__(self, params: PacedParams) -> None:
        self.params = params

    async def reset(self, task: Task) -> list[Message]:
        return task.messages

    async def step(self, action: str) -> StepResult:
        await asyncio.sleep(pace(self.params.script, "env_s"))
        share = sum(c.isdigit() for c in action) / max(len(action), 1)
        return StepResult(
            observation=None, done=True, reward=share, reward_channels={"digits": share}
        )

    async def close(self) -> None:
        return None


PACED_DIGITS = EnvSpec(params_model=PacedParams, make_tasks=DigitTasks, make_env=PacedDigitEnv)


class PacedLoss(PPOClipLoss):
    """PPO-clip after the scripted pause: the learner seems slow."""

    def __init__(self, script: str) -> None:
        super().__init__()
        self.script = script

    def __call__(self, inputs: LossInputs, normalizer: float) -> LossOutput:
        time.sleep(pace(self.script, "learner_s"))
        return super().__call__(inputs, normalizer)
