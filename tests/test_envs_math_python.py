"""Math with a Python tool: code runs in the real sandbox, answers are checked by math-verify,
and a host that cannot sandbox fails when the environment is built."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import Iterator

import pytest

from relayrl.envs.base import StepResult
from relayrl.envs.math_answers import last_boxed, shared_verifier
from relayrl.envs.math_python import MathPythonEnv, MathPythonParams
from relayrl.envs.math_tasks import MathTaskParams, MathTasks
from relayrl.envs.registry import resolve_env
from relayrl.envs.sandbox import SandboxUnavailable, check_host
from relayrl.envs.sandbox.tools import host_tools


def play(params: MathPythonParams, turns: list[str], seed: int = 0) -> tuple[str, list[StepResult]]:
    spec = resolve_env("math-python")
    task = spec.make_tasks(params).sample(random.Random(seed))
    env = spec.make_env(params)

    async def go() -> list[StepResult]:
        await env.reset(task)
        results = [await env.step(turn) for turn in turns]
        await env.close()
        return results

    return str(task.answer), asyncio.run(go())


def test_code_runs_in_the_sandbox_and_a_boxed_answer_is_verified() -> None:
    params = MathPythonParams(kinds=["modular_power"], sandbox={"wall_s": 1.0})
    answer, results = play(
        params,
        ["I'll compute.\n```python\nimport sys\nprint(40 + 2)\nprint(sys.version_info[0])\n```\n",
         "```python\nwhile True: pass\n```\n",
         "```python\n1 / 0\n```\n",
         "The answer is \\boxed{ANSWER}."],
    )  # fmt: skip
    first, looping, failing, final = results
    assert (first.tool, first.tool_status, first.done) == ("python", "ok", False)
    assert first.observation == "```output\n42\n3\n```"
    assert looping.tool_status == "timeout" and "ran out of time" in looping.observation
    assert failing.tool_status == "error" and "ZeroDivisionError" in failing.observation
    assert final.done and final.tool is None and not final.void
    assert final.reward_channels == {"correct": 0.0, "format": 1.0, "tool_success": 1 / 3}

    _, results = play(params, [f"So \\boxed{{{answer}}}"])
    assert results[0].reward_channels["correct"] == 1.0
    assert results[0].reward == pytest.approx(1.1)


def test_hermes_calls_reach_the_same_tool_and_a_reply_without_answer_is_void() -> None:
    params = MathPythonParams(tool_format="hermes")
    assert resolve_env("math-python").stop_strings(params) == ("</tool_call>",)
    _, results = play(
        params,
        ['<tool_call>{"name": "python", "arguments": {"code": "print(7 * 6)"}}</tool_call>',
         '<tool_call>{"name": "python", "arguments": {}}</tool_call>',
         "I am not sure."],
    )  # fmt: skip
    assert results[0].observation == "<tool_response>\n42\n</tool_response>"
    assert results[1].tool_status == "invalid" and '"code"' in results[1].observation
    assert results[2].void and results[2].done and results[2].reward == 0.0


def test_math_verify_accepts_equivalent_forms_and_survives_hostile_ones() -> None:
    async def check() -> list[bool]:
        verifier = shared_verifier()
        pairs = [("0.5", "\\frac{1}{2}"), ("12", "12.0"), ("12", "13"), ("3", "10^{10^{10}}")]
        return [await verifier.equivalent(gold, answer) for gold, answer in pairs]

    started = time.monotonic()
    assert asyncio.run(check()) == [True, True, False, False]
    assert time.monotonic() - started < 30


def test_a_dead_verifier_child_counts_as_wrong_and_is_replaced() -> None:
    async def check() -> list[bool]:
        verifier = shared_verifier()
        before = await verifier.equivalent("2", "2")
        verifier._process.kill()  # dies on the next answer, as under the OOM killer
        return [before, await verifier.equivalent("2", "2"), await verifier.equivalent("2", "2")]

    assert asyncio.run(check()) == [True, False, True]


def test_last_boxed_handles_nesting_and_missing_braces() -> None:
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\boxed{2} \\boxed{unclosed") == "2"
    assert last_boxed("no box") is None


def test_generated_problems_match_their_answers_and_files_load(tmp_path) -> None:
    tasks = MathTasks(MathTaskParams(kinds=["gcd", "prime_count"], difficulty=1))
    rng = random.Random(1)
    for _ in range(20):
        task = tasks.sample(rng)
        question = task.messages[0]["content"]
        if question.startswith("How many prime"):
            limit = int(question.split("below ")[1].rstrip("?"))
            primes = [n for n in range(2, limit) if all(n % d for d in range(2, int(n**0.5) + 1))]
            assert int(task.answer) == len(primes)
    path = tmp_path / "problems.jsonl"
    path.write_text('{"question": "1+1?", "answer": 2}\n\n{"question": "Half?", "answer": "1/2"}\n')
    from_file = MathTasks(MathTaskParams(tasks_file=str(path)))
    assert {from_file.sample(rng).answer for _ in range(20)} == {"2", "1/2"}


@pytest.fixture
def host_without_bubblewrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda p, **kw: None if p == "bwrap" else real_which(p, **kw)
    )
    check_host.cache_clear()
    host_tools.cache_clear()
    yield
    check_host.cache_clear()
    host_tools.cache_clear()


@pytest.mark.usefixtures("host_without_bubblewrap")
def test_a_host_without_the_sandbox_fails_when_the_env_is_built() -> None:
    with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
        MathPythonEnv(MathPythonParams())
