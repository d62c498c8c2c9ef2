"""Math with a Python interpreter (tool-integrated reasoning): the model may run code in the
sandbox any number of turns, then answers in \\boxed{}, checked with math-verify."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from relayrl.envs.base import EnvSpec, Message, StepResult, Task
from relayrl.envs.math_answers import last_boxed, shared_verifier
from relayrl.envs.math_tasks import MathTaskParams, MathTasks
from relayrl.envs.python_sandbox import SandboxedPython, SandboxParams
from relayrl.envs.python_tool import PythonTool
from relayrl.envs.registry import register_env
from relayrl.envs.tool_calls import CallFormat, CodeBlockFormat, HermesFormat
from relayrl.envs.tool_env import ToolEnv


class MathPythonParams(MathTaskParams):
    # "code": ```python blocks; "hermes": {"name": "python", "arguments": {"code": ...}} calls.
    tool_format: Literal["code", "hermes"] = "code"
    system_prompt: str = (
        "Solve the math problem. Think step by step and use Python when it helps. "
        "Give the final answer as \\boxed{answer}."
    )
    sandbox: SandboxParams = SandboxParams()
    max_output_chars: int = Field(1000, ge=100)
    # tool_success (share of calls that ran cleanly) is logged; give it a weight to reward it.
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: {"correct": 1.0, "format": 0.1}
    )


def call_format(name: Literal["code", "hermes"]) -> CallFormat:
    return CodeBlockFormat() if name == "code" else HermesFormat()


class MathPythonEnv(ToolEnv):
    def __init__(self, params: MathPythonParams) -> None:
        tool = PythonTool(SandboxedPython(params.sandbox), params.max_output_chars)
        super().__init__([tool], call_format(params.tool_format))
        self.params = params

    def prompt(self, task: Task) -> list[Message]:
        return self.instructed_prompt(self.params.system_prompt, task)

    async def finish(self, text: str) -> StepResult:
        answer = last_boxed(text)
        correct = answer is not None and await shared_verifier().equivalent(
            str(self.task.answer), answer
        )
        return self.final_answer(
            correct=correct,
            well_formed=answer is not None,
            answered=answer is not None,
            weights=self.params.reward_weights,
        )


def stop_strings(params: MathPythonParams) -> tuple[str, ...]:
    return call_format(params.tool_format).stop_strings


SPEC = register_env(
    "math-python",
    EnvSpec(
        params_model=MathPythonParams,
        make_tasks=MathTasks,
        make_env=MathPythonEnv,
        stop_strings=stop_strings,
    ),
)
