"""Named answer checks for dataset tasks: math-verify equivalence, exact match, numeric
tolerance, and Python unit tests run in the sandbox.

Each verifier says up front whether a dataset's reference can be checked against at all
(`reference_problem`), so a bad row is reported when the data is read, not mid-training."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

from relayrl.envs.math_answers import last_boxed, shared_verifier
from relayrl.envs.python_sandbox import SandboxedPython, SandboxParams
from relayrl.envs.tags import tagged

VerifierName = Literal["math_verify", "exact_match", "numeric", "python_tests"]
AnswerFormat = Literal["boxed", "answer_tag", "text"]

# As in envs/math_answers.py: longer references are not short answers.
MAX_REFERENCE_CHARS = 200
_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?:/\d+)?")


@dataclass(frozen=True)
class Verdict:
    correct: bool
    # The response gave an answer in the expected form (a boxed value, a code block...).
    answered: bool


class Verifier(Protocol):
    def reference_problem(self, reference: str) -> str | None:
        """Why `reference` cannot be checked against, or None when it can."""
        ...

    async def verify(self, response: str, reference: str) -> Verdict: ...


def extract_answer(text: str, answer_format: AnswerFormat) -> str | None:
    """The response's final answer: its last \\boxed{}, its last <answer> tag, or the text."""
    if answer_format == "boxed":
        return last_boxed(text)
    if answer_format == "answer_tag":
        found = tagged(text, "<answer>", "</answer>")
        return found[-1].strip() if found else None
    stripped = text.strip()
    return stripped or None


def parse_number(text: str) -> float | None:
    """A number written plainly, with thousands separators, or as a fraction a/b."""
    cleaned = text.replace(",", "").replace("$", "").strip()
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        value = float(Fraction(cleaned)) if "/" in cleaned else float(cleaned)
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return value if math.isfinite(value) else None


class MathVerify:
    def __init__(self, answer_format: AnswerFormat) -> None:
        self.answer_format = answer_format

    def reference_problem(self, reference: str) -> str | None:
        if len(reference) > MAX_REFERENCE_CHARS:
            return f"the answer is longer than {MAX_REFERENCE_CHARS} characters"
        from math_verify import parse

        # Parsing here runs off the main thread, where math-verify's alarm cannot; the
        # reference is short and the dataset's own, so it goes without one.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        if not parse(f"\\boxed{{{reference}}}", parsing_timeout=None):  # type: ignore[arg-type]
            return "math-verify cannot parse the answer"
        return None

    async def verify(self, response: str, reference: str) -> Verdict:
        answer = extract_answer(response, self.answer_format)
        if answer is None:
            return Verdict(correct=False, answered=False)
        return Verdict(await shared_verifier().equivalent(reference, answer), answered=True)


class ExactMatch:
    def __init__(self, answer_format: AnswerFormat, case_sensitive: bool) -> None:
        self.answer_format = answer_format
        self.case_sensitive = case_sensitive

    def _normal(self, text: str) -> str:
        collapsed = " ".join(text.split())
        return collapsed if self.case_sensitive else collapsed.casefold()

    def reference_problem(self, reference: str) -> str | None:
        return None if reference.strip() else "the answer is empty"

    async def verify(self, response: str, reference: str) -> Verdict:
        answer = extract_answer(response, self.answer_format)
        if answer is None:
            return Verdict(correct=False, answered=False)
        return Verdict(self._normal(answer) == self._normal(reference), answered=True)


class NumericTolerance:
    def __init__(self, answer_format: AnswerFormat, rel_tol: float, abs_tol: float) -> None:
        self.answer_format = answer_format
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def reference_problem(self, reference: str) -> str | None:
        return None if parse_number(reference) is not None else "the answer is not a number"

    async def verify(self, response: str, reference: str) -> Verdict:
        answer = extract_answer(response, self.answer_format)
        value = None if answer is None else parse_number(answer)
        if value is None:
            return Verdict(correct=False, answered=answer is not None)
        expected = parse_number(reference)
        close = expected is not None and math.isclose(
            value, expected, rel_tol=self.rel_tol, abs_tol=self.abs_tol
        )
        return Verdict(close, answered=True)


class PythonTests:
    """The response's last ```python block, followed by the row's tests (asserts), run in the
    sandbox: correct when the program exits cleanly."""

    def __init__(self, sandbox: SandboxParams) -> None:
        self.sandbox = SandboxedPython(sandbox)

    def reference_problem(self, reference: str) -> str | None:
        try:
            compile(reference, "<tests>", "exec")
        except (SyntaxError, ValueError) as error:
            return f"the tests do not compile ({type(error).__name__}: {error})"
        return None

    async def verify(self, response: str, reference: str) -> Verdict:
        blocks = _CODE_BLOCK.findall(response)
        if not blocks:
            return Verdict(correct=False, answered=False)
        result = await self.sandbox.run(f"{blocks[-1]}\n\n{reference}\n")
        return Verdict(correct=result.status == "ok", answered=True)
