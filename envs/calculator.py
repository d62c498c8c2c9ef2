"""A calculator tool: exact arithmetic on an expression the model writes."""

from __future__ import annotations

from typing import Any, ClassVar

from relayrl.envs.arith_expr import ExpressionError, evaluate_text, show
from relayrl.envs.tools import ToolResult


class CalculatorTool:
    name = "calculator"
    description = "Evaluate an arithmetic expression exactly (numbers, + - * /, parentheses)."
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"expression": {"type": "string", "description": "e.g. (25 - 5) * 3"}},
        "required": ["expression"],
    }

    async def call(self, arguments: dict[str, Any]) -> ToolResult:
        expression = arguments.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            return ToolResult("invalid", 'calculator needs a string argument "expression"')
        try:
            return ToolResult("ok", show(evaluate_text(expression)))
        except ExpressionError as exc:
            return ToolResult("error", str(exc))
