"""A base for tool-using environments: a turn that ends with a tool call runs the tool and
shows its result; any other turn is final and graded by the subclass."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from relayrl.envs.base import Message, StepResult, Task, weighted_reward
from relayrl.envs.tool_calls import CallFormat, MalformedCall, ToolCall
from relayrl.envs.tools import Tool, ToolResult

# Of a tool name the model made up, as recorded and shown: it may be any length.
_SHOWN_NAME_CHARS = 64


class ToolEnv(ABC):
    def __init__(self, tools: Sequence[Tool], call_format: CallFormat) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self.call_format = call_format
        self.call_statuses: list[str] = []
        self._task: Task | None = None

    @property
    def task(self) -> Task:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        return self._task

    async def reset(self, task: Task) -> list[Message]:
        self._task = task
        self.call_statuses = []
        return self.prompt(task)

    async def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("step() before reset()")
        call = self.call_format.parse(action)
        if call is None:
            return await self.finish(action)
        tool_name, result = await self._run(call)
        self.call_statuses.append(result.status)
        return StepResult(
            observation=self.call_format.render_result(result),
            done=False,
            tool=tool_name,
            tool_status=result.status,
        )

    async def _run(self, call: ToolCall | MalformedCall) -> tuple[str | None, ToolResult]:
        if isinstance(call, MalformedCall):
            name = None if call.tool is None else call.tool[:_SHOWN_NAME_CHARS]
            return name, ToolResult("invalid", call.problem)
        tool = self.tools.get(call.name)
        if tool is None:
            known = ", ".join(sorted(self.tools))
            name = call.name[:_SHOWN_NAME_CHARS]
            return name, ToolResult("invalid", f"unknown tool {name!r}; use: {known}")
        return call.name, await tool.call(call.arguments)

    def tool_success(self) -> float:
        """Share of this episode's tool calls that ran and succeeded (0 without calls)."""
        if not self.call_statuses:
            return 0.0
        return sum(status == "ok" for status in self.call_statuses) / len(self.call_statuses)

    def instructed_prompt(self, system: str, task: Task, separator: str = "\n\n") -> list[Message]:
        """The task's messages after a system message that ends with the tool instructions."""
        instructions = self.call_format.instructions(list(self.tools.values()))
        return [{"role": "system", "content": f"{system}{separator}{instructions}"}, *task.messages]

    def final_answer(
        self, *, correct: bool, well_formed: bool, answered: bool, weights: dict[str, float]
    ) -> StepResult:
        """The episode's last step, with the correct / format / tool_success channels."""
        channels = {
            "correct": float(correct),
            "format": float(well_formed),
            "tool_success": self.tool_success(),
        }
        return StepResult(
            observation=None,
            done=True,
            reward=weighted_reward(channels, weights),
            reward_channels=channels,
            void=not answered,
        )

    @abstractmethod
    def prompt(self, task: Task) -> list[Message]:
        """The messages the episode starts from (tool instructions included)."""

    @abstractmethod
    async def finish(self, text: str) -> StepResult:
        """Grade a turn that called no tool."""

    async def close(self) -> None:
        self._task = None
