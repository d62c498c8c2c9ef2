"""Exact evaluation of arithmetic expressions (+ - * / and parentheses) without eval()."""

from __future__ import annotations

import ast
import math
import operator
import warnings
from collections.abc import Callable
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200
# Bits of a value's numerator or denominator: about 1200 digits, so every value prints.
MAX_VALUE_BITS = 4000

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class ExpressionError(ValueError):
    """Not an arithmetic expression we evaluate; the message says why."""


def parse_expression(text: str) -> ast.expr:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        with warnings.catch_warnings():  # e.g. "invalid decimal literal": the model's, not ours
            warnings.simplefilter("ignore", SyntaxWarning)
            return ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExpressionError(f"not an arithmetic expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, nesting past the parser
        raise ExpressionError("not an arithmetic expression") from None


def _is_number(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def _number(node: ast.Constant) -> Fraction:
    if isinstance(node.value, float) and not math.isfinite(node.value):
        raise ExpressionError(f"{node.value} is not a finite number")
    return Fraction(str(node.value))


def evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant) and _is_number(node):
        return _number(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ExpressionError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    shown = ast.unparse(node)
    raise ExpressionError(f"only numbers, + - * / and parentheses are allowed, not {shown!r}")


def _bounded(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_VALUE_BITS:
        raise ExpressionError(f"a value exceeds {MAX_VALUE_BITS} bits")
    return value


def numbers_in(node: ast.expr) -> list[Fraction]:
    return [_number(n) for n in ast.walk(node) if isinstance(n, ast.Constant) and _is_number(n)]


def evaluate_text(text: str) -> Fraction:
    return evaluate(parse_expression(text))


def show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    try:
        return f"{value} ≈ {float(value):.6g}"
    except OverflowError:  # beyond a float's range: the exact value alone
        return str(value)
