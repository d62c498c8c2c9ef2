"""A user-style Env class plugged in by `module:Class`: every turn but the last runs as Python
in the real sandbox, so even a random model plays multi-turn tool-using episodes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from relayrl.envs.base import Message, StepResult, Task
from relayrl.envs.math_tasks import MathTaskParams, MathTasks
from relayrl.envs.python_sandbox import SandboxedPython, SandboxParams
from relayrl.envs.python_tool import PythonTool
from relayrl.envs.tool_calls import CodeBlockFormat, ToolCall
from relayrl.envs.tool_env import ToolEnv


class EveryTurnIsCode(CodeBlockFormat):
    """The first `tool_turns` turns are programs, whatever they look like."""

    stop_strings = ()

    def __init__(self, tool_turns: int) -> None:
        super().__init__()
        self.remaining = tool_turns

    def parse(self, text: str) -> ToolCall | None:
        if self.remaining == 0:
            return None
        self.remaining -= 1
        return ToolCall(self.tool_name, {"code": text})


class PythonEveryTurnParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool_turns: int = 2
    sandbox: SandboxParams = SandboxParams(pool_size=1, wall_s=2.0)


class PythonEveryTurn(ToolEnv):
    params_model = PythonEveryTurnParams

    @staticmethod
    def make_tasks(params: PythonEveryTurnParams) -> MathTasks:
        return MathTasks(MathTaskParams(kinds=["product"], difficulty=1))

    def __init__(self, params: PythonEveryTurnParams) -> None:
        tool = PythonTool(SandboxedPython(params.sandbox), max_output_chars=60)
        super().__init__([tool], EveryTurnIsCode(params.tool_turns))

    def prompt(self, task: Task) -> list[Message]:
        return list(task.messages)

    async def finish(self, text: str) -> StepResult:
        # The share of digits varies even for a random model, so groups have advantages.
        digits = sum(c.isdigit() for c in text) / max(len(text), 1)
        channels = {"digits": digits, "tool_success": self.tool_success()}
        return StepResult(None, True, reward=digits, reward_channels=channels)
