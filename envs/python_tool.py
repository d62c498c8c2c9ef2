"""The Python interpreter tool: the model's code runs confined in the sandbox."""

from __future__ import annotations

from typing import Any, ClassVar

from relayrl.envs.python_sandbox import SandboxedPython
from relayrl.envs.sandbox import SandboxResult
from relayrl.envs.tools import ToolResult, clip_output

_STATUS_NOTES = {
    "timeout": "the program ran out of time and was stopped",
    "memory": "the program ran out of memory",
    "killed": "the program was killed",
    "output_limit": "the program printed too much and was stopped",
}


class PythonTool:
    name = "python"
    description = "Run a Python 3 program in a sandbox (no network) and return what it printed."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "the program to run"}},
        "required": ["code"],
    }

    def __init__(self, sandbox: SandboxedPython, max_output_chars: int) -> None:
        self.sandbox = sandbox
        self.max_output_chars = max_output_chars

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResult("invalid", 'python needs a non-empty string argument "code"')
        result = await self.sandbox.run(code)
        return ToolResult(result.status, clip_output(shown_output(result), self.max_output_chars))


def shown_output(result: SandboxResult) -> str:
    """Stdout, then stderr, then a note on how the program ended when it did not end well."""
    parts = [result.stdout.rstrip("\n"), result.stderr.rstrip("\n")]
    if result.status in _STATUS_NOTES:
        parts.append(f"[{_STATUS_NOTES[result.status]}]")
    shown = "\n".join(part for part in parts if part)
    return shown or "[no output; use print() to see values]"
