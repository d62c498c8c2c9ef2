"""How a model turn calls a tool: fenced Python code blocks (tool-integrated reasoning) or
Hermes-style JSON inside <tool_call> tags. A turn calls a tool when it ends with a call; the
stop strings end generation right there, so the environment runs it and answers."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from relayrl.envs.tools import Tool, ToolResult, function_spec


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class MalformedCall:
    problem: str  # shown to the model, so it can fix the call
    tool: str | None = None  # the tool it meant, when that is clear


class CallFormat(Protocol):
    stop_strings: tuple[str, ...]

    def parse(self, text: str) -> ToolCall | MalformedCall | None:
        """The call this turn ends with; None when it ends without one."""
        ...

    def render_result(self, result: ToolResult) -> str:
        """The observation text for a tool's result."""
        ...

    def instructions(self, tools: Sequence[Tool]) -> str:
        """System-prompt text that tells the model how to call these tools."""
        ...


_FENCE = re.compile(r"```([^\s`]*)")
_PYTHON_TAGS = frozenset({"python", "py", "python3"})


class CodeBlockFormat:
    """A turn that ends with a ```python block runs it; the output comes back in ```output."""

    # The closing fence on its own line; an opening "```python" never contains it.
    stop_strings = ("\n```\n",)

    def __init__(self, tool_name: str = "python") -> None:
        self.tool_name = tool_name

    def parse(self, text: str) -> ToolCall | MalformedCall | None:
        fences = list(_FENCE.finditer(text))
        if not fences:
            return None
        # Fences alternate open/close, as Markdown reads them.
        if len(fences) % 2 == 1:
            opening = fences[-1]
            if opening.group(1).lower() in _PYTHON_TAGS:
                return MalformedCall(
                    "the ```python block was not closed; end the code with ``` on its own line",
                    self.tool_name,
                )
            return None
        opening, closing = fences[-2], fences[-1]
        if opening.group(1).lower() not in _PYTHON_TAGS or text[closing.end() :].strip():
            return None
        code = text[opening.end() : closing.start()].strip("\n")
        if not code.strip():
            return MalformedCall("the ```python block is empty", self.tool_name)
        return ToolCall(self.tool_name, {"code": code})

    def render_result(self, result: ToolResult) -> str:
        return f"```output\n{result.output}\n```"

    def instructions(self, tools: Sequence[Tool]) -> str:
        return (
            "To run Python, write the code in a ```python block and stop; its output comes "
            "back in an ```output block. Use print() to see values."
        )


_OPEN_CALL, _CLOSE_CALL = "<tool_call>", "</tool_call>"


class HermesFormat:
    """<tool_call>{"name": ..., "arguments": {...}}</tool_call>, answered in <tool_response>."""

    stop_strings = (_CLOSE_CALL,)

    def parse(self, text: str) -> ToolCall | MalformedCall | None:
        opening, closing = text.rfind(_OPEN_CALL), text.rfind(_CLOSE_CALL)
        if opening > closing:
            return MalformedCall("the <tool_call> tag was not closed with </tool_call>")
        # A call counts when the turn ends with it; found by position, not a regex, so a
        # turn of many tags costs linear time.
        if opening == -1 or text[closing + len(_CLOSE_CALL) :].strip():
            return None
        # The last opening tag before the end: an earlier, finished call is not this one.
        body = text[opening + len(_OPEN_CALL) : closing].strip()
        try:
            call = json.loads(body)
        except json.JSONDecodeError as exc:
            return MalformedCall(f"the tool call is not valid JSON: {exc.msg} (at {exc.pos})")
        except ValueError:  # an integer of more digits than int() converts
            return MalformedCall("the tool call is not valid JSON: a number in it is too long")
        except RecursionError:
            return MalformedCall("the tool call is not valid JSON: it is nested too deeply")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return MalformedCall('the tool call needs a JSON object with a string "name"')
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            return MalformedCall('"arguments" must be a JSON object', call["name"])
        return ToolCall(call["name"], arguments)

    def render_result(self, result: ToolResult) -> str:
        return f"<tool_response>\n{result.output}\n</tool_response>"

    def instructions(self, tools: Sequence[Tool]) -> str:
        listed = "\n".join(json.dumps(function_spec(tool)) for tool in tools)
        return (
            "You may call functions to help you. Available functions:\n"
            f"<tools>\n{listed}\n</tools>\n"
            "To call one, write a JSON object with its name and arguments inside "
            "<tool_call></tool_call> tags and stop:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>\nThe result comes back inside <tool_response></tool_response> tags."
        )
