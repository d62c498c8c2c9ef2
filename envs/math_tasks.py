"""Math problems with exact answers: generated ones that reward computing (sums, modular
powers, primes, divisors), or the user's own from a JSONL file of {"question", "answer"}."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from relayrl.envs.base import Message, Task

ProblemKind = Literal["multiples_sum", "modular_power", "prime_count", "gcd", "product"]


class MathTaskParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # JSONL with one {"question": str, "answer": str|number} per line; else generated problems.
    tasks_file: str | None = None
    kinds: list[ProblemKind] = Field(
        default_factory=lambda: ["multiples_sum", "modular_power", "prime_count", "gcd", "product"]
    )
    # Scale of the generated numbers: 1 is easy mental arithmetic, 3 wants a computer.
    difficulty: int = Field(2, ge=1, le=4)


def _multiples_sum(rng: random.Random, scale: int) -> tuple[str, int]:
    limit, a, b = rng.randint(10**scale, 10 ** (scale + 1)), rng.randint(2, 9), rng.randint(2, 9)
    total = sum(n for n in range(1, limit) if n % a == 0 or n % b == 0)
    return f"What is the sum of all positive integers below {limit} divisible by {a} or {b}?", total


def _modular_power(rng: random.Random, scale: int) -> tuple[str, int]:
    base, exponent = rng.randint(2, 10**scale), rng.randint(10, 10 ** (scale + 1))
    modulus = rng.randint(7, 10**scale + 7)
    return f"What is {base}^{exponent} mod {modulus}?", pow(base, exponent, modulus)


def _prime_count(rng: random.Random, scale: int) -> tuple[str, int]:
    limit = rng.randint(10**scale, 10 ** (scale + 1))
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit - 1) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytearray(len(sieve[n * n :: n]))
    return f"How many prime numbers are there below {limit}?", sum(sieve)


def _gcd(rng: random.Random, scale: int) -> tuple[str, int]:
    common = rng.randint(2, 10**scale)
    x, y = common * rng.randint(2, 10**scale), common * rng.randint(2, 10**scale)
    return f"What is the greatest common divisor of {x} and {y}?", math.gcd(x, y)


def _product(rng: random.Random, scale: int) -> tuple[str, int]:
    a, b, c = (rng.randint(10**scale, 10 ** (scale + 1)) for _ in range(3))
    return f"What is {a} * {b} - {c}?", a * b - c


_GENERATORS: dict[ProblemKind, Callable[[random.Random, int], tuple[str, int]]] = {
    "multiples_sum": _multiples_sum,
    "modular_power": _modular_power,
    "prime_count": _prime_count,
    "gcd": _gcd,
    "product": _product,
}


def load_problems(path: str) -> list[tuple[str, str]]:
    problems = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not {"question", "answer"} <= record.keys():
            raise ValueError(f"{path}:{number}: expected an object with question and answer")
        problems.append((str(record["question"]), str(record["answer"])))
    if not problems:
        raise ValueError(f"{path} holds no problems")
    return problems


class MathTasks:
    """Tasks that ask the question as the user; environments add their own system prompt."""

    def __init__(self, params: MathTaskParams) -> None:
        self.params = params
        self.problems = load_problems(params.tasks_file) if params.tasks_file else None

    def sample(self, rng: random.Random) -> Task:
        if self.problems is not None:
            question, answer = rng.choice(self.problems)
        else:
            kind = rng.choice(self.params.kinds)
            question, value = _GENERATORS[kind](rng, self.params.difficulty)
            answer = str(value)
        messages: list[Message] = [{"role": "user", "content": question}]
        return Task(id=f"math-{question}", messages=messages, answer=answer)
