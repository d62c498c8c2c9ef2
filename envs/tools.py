"""The Tool protocol: a named function the model may call, with a typed outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

# The sandbox's outcomes, plus "invalid": the call itself was wrong (bad arguments, unknown
# tool, malformed syntax), so nothing ran.
ToolStatus = Literal["ok", "error", "timeout", "memory", "killed", "output_limit", "invalid"]


@dataclass(frozen=True)
class ToolResult:
    status: ToolStatus
    output: str  # what the model is shown


class Tool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object

    async def call(self, arguments: dict[str, Any]) -> ToolResult: ...


def function_spec(tool: Tool) -> dict[str, Any]:
    """The tool as chat templates and Hermes-style prompts describe functions."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def clip_output(text: str, max_chars: int) -> str:
    """Keep the head and the tail (where tracebacks end) of a long output."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n... [{cut} characters cut] ...\n{text[-half:]}"
