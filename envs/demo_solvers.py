"""What the demonstration builders write: a Python program for each kind of generated math
problem (read back from the question's own words), and a countdown expression found by search."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from fractions import Fraction

_MATH_TEMPLATES: list[tuple[re.Pattern[str], Callable[..., str]]] = [
    (
        re.compile(r"sum of all positive integers below (\d+) divisible by (\d+) or (\d+)\?"),
        lambda limit, a, b: (
            f"total = sum(n for n in range(1, {limit}) if n % {a} == 0 or n % {b} == 0)\n"
            "print(total)"
        ),
    ),
    (
        re.compile(r"What is (\d+)\^(\d+) mod (\d+)\?"),
        lambda base, exponent, modulus: f"print(pow({base}, {exponent}, {modulus}))",
    ),
    (
        re.compile(r"How many prime numbers are there below (\d+)\?"),
        lambda limit: (
            f"limit = {limit}\n"
            "is_prime = [True] * limit\n"
            "is_prime[0] = is_prime[1] = False\n"
            "for n in range(2, int(limit ** 0.5) + 1):\n"
            "    if is_prime[n]:\n"
            "        for multiple in range(n * n, limit, n):\n"
            "            is_prime[multiple] = False\n"
            "print(sum(is_prime))"
        ),
    ),
    (
        re.compile(r"greatest common divisor of (\d+) and (\d+)\?"),
        lambda x, y: f"import math\n\nprint(math.gcd({x}, {y}))",
    ),
    (
        re.compile(r"What is (\d+) \* (\d+) - (\d+)\?"),
        lambda a, b, c: f"print({a} * {b} - {c})",
    ),
]


def math_program(question: str) -> str | None:
    """A program that prints the answer to a generated math question; None for a question of
    no known kind (a user's own tasks file)."""
    for pattern, template in _MATH_TEMPLATES:
        match = pattern.search(question)
        if match is not None:
            return template(*match.groups())
    return None


def countdown_expression(numbers: list[int], target: int) -> str | None:
    """An expression that uses every number once with + - * / to make `target`, or None.
    Exhaustive over combination orders: fine for the six numbers countdown allows at most."""
    return _search(tuple((Fraction(n), str(n)) for n in numbers), Fraction(target))


def _search(values: tuple[tuple[Fraction, str], ...], target: Fraction) -> str | None:
    if len(values) == 1:
        value, text = values[0]
        return text if value == target else None
    for i, j in itertools.combinations(range(len(values)), 2):
        rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
        (a, a_text), (b, b_text) = values[i], values[j]
        candidates = [
            (a + b, f"{a_text} + {b_text}"),
            (a * b, f"{a_text} * {b_text}"),
            (a - b, f"{a_text} - {b_text}"),
            (b - a, f"{b_text} - {a_text}"),
        ]
        if b != 0:
            candidates.append((a / b, f"{a_text} / {b_text}"))
        if a != 0:
            candidates.append((b / a, f"{b_text} / {a_text}"))
        for value, text in candidates:
            found = _search((*rest, (value, f"({text})")), target)
            if found is not None:
                return found
    return None
