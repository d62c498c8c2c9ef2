"""Multi-turn feedback ("A Simple 'Try Again'"): after a wrong answer the environment says
so and the model tries again; a correct answer on attempt k earns discount^(k-1)."""

from __future__ import annotations

from pydantic import Field

from relayrl.envs.base import EnvSpec, Message, StepResult, Task, weighted_reward
from relayrl.envs.math_answers import last_boxed, shared_verifier
from relayrl.envs.math_tasks import MathTaskParams, MathTasks
from relayrl.envs.registry import register_env


class MathFeedbackParams(MathTaskParams):
    max_attempts: int = Field(3, ge=1)
    discount: float = Field(0.5, gt=0, le=1)
    system_prompt: str = "Solve the math problem. Give the final answer as \\boxed{answer}."
    retry_message: str = "Your answer is incorrect. Try again."
    missing_answer_message: str = "I found no answer in \\boxed{}. Try again."
    # first_try (solved without feedback) is logged; give it a weight to reward it.
    reward_weights: dict[str, float] = Field(default_factory=lambda: {"correct": 1.0})


class MathFeedbackEnv:
    def __init__(self, params: MathFeedbackParams) -> None:
        self.params = params
        self.attempts = 0
        self._task: Task | None = None

    async def reset(self, task: Task) -> list[Message]:
        self._task = task
        self.attempts = 0
        return [{"role": "system", "content": self.params.system_prompt}, *task.messages]

    async def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        p = self.params
        self.attempts += 1
        answer = last_boxed(action)
        correct = answer is not None and await shared_verifier().equivalent(
            str(self._task.answer), answer
        )
        if not correct and self.attempts < p.max_attempts:
            message = p.retry_message if answer is not None else p.missing_answer_message
            return StepResult(observation=message, done=False, void=answer is None)
        channels = {
            "correct": p.discount ** (self.attempts - 1) if correct else 0.0,
            "first_try": float(correct and self.attempts == 1),
        }
        return StepResult(
            observation=None,
            done=True,
            reward=weighted_reward(channels, p.reward_weights),
            reward_channels=channels,
            void=answer is None,
        )

    async def close(self) -> None:
        self._task = None


SPEC = register_env(
    "math-feedback",
    EnvSpec(params_model=MathFeedbackParams, make_tasks=MathTasks, make_env=MathFeedbackEnv),
)
