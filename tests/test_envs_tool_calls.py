"""Tool-call parsing in both formats, and ToolEnv turning every bad call into an observation."""

from __future__ import annotations

import asyncio
import json

import pytest

from relayrl.envs.base import Task
from relayrl.envs.calculator import CalculatorTool
from relayrl.envs.tool_calls import CodeBlockFormat, HermesFormat, MalformedCall, ToolCall
from tests.agent_loop_fakes import RecordingToolEnv


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Let me check.\n```python\nprint(2 ** 10)\n```\n",
            ToolCall("python", {"code": "print(2 ** 10)"}),
        ),
        ("```py\nx = 1\nprint(x)\n```", ToolCall("python", {"code": "x = 1\nprint(x)"})),
        # Only the last block runs; an earlier finished one is context.
        ("```python\na\n```\nthen\n```python\nb\n```\n", ToolCall("python", {"code": "b"})),
        ("No code here, the answer is \\boxed{4}.", None),
        ("```python\nprint(1)\n```\nSo the answer is 1.", None),  # text after the block: final
        ("```text\nnot code\n```\n", None),
        ("An unfinished ```bash\nls", None),
    ],
)
def test_code_blocks(text: str, expected: ToolCall | None) -> None:
    assert CodeBlockFormat().parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("```python\nprint(1)", "not closed"),
        ("```python\n\n```\n", "empty"),
    ],
)
def test_broken_code_blocks_say_what_is_wrong(text: str, problem: str) -> None:
    call = CodeBlockFormat().parse(text)
    assert isinstance(call, MalformedCall) and problem in call.problem
    assert call.tool == "python"


def hermes(body: str) -> str:
    return f"I will call it.\n<tool_call>\n{body}\n</tool_call>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (hermes('{"name": "calculator", "arguments": {"expression": "1+2"}}'),
         ToolCall("calculator", {"expression": "1+2"})),
        (hermes('{"name": "ping"}'), ToolCall("ping", {})),
        ('<tool_call>{"name": "a", "arguments": {}}</tool_call> then '
         '<tool_call>{"name": "b", "arguments": {"k": [1]}}</tool_call>\n',
         ToolCall("b", {"k": [1]})),
        ('<tool_call>{"name": "a"}</tool_call> and the answer is 3', None),
        ("plain text", None),
    ],
)  # fmt: skip
def test_hermes_calls(text: str, expected: ToolCall | None) -> None:
    assert HermesFormat().parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (hermes("{name: calculator}"), "not valid JSON"),
        (hermes('["calculator"]'), 'string "name"'),
        (hermes('{"name": 3}'), 'string "name"'),
        (hermes('{"name": "calculator", "arguments": "1+2"}'), "must be a JSON object"),
        ('<tool_call>{"name": "calculator", "arguments": {', "not closed"),
    ],
)
def test_malformed_hermes_calls_say_what_is_wrong(text: str, problem: str) -> None:
    call = HermesFormat().parse(text)
    assert isinstance(call, MalformedCall) and problem in call.problem


def test_hermes_instructions_list_every_tool_as_a_function() -> None:
    text = HermesFormat().instructions([CalculatorTool()])
    listed = text.split("<tools>\n")[1].split("\n</tools>")[0]
    spec = json.loads(listed)
    assert spec["function"]["name"] == "calculator"
    assert spec["function"]["parameters"]["required"] == ["expression"]


def run_steps(env: RecordingToolEnv, actions: list[str]) -> list:
    async def go() -> list:
        await env.reset(Task(id="t", messages=[{"role": "user", "content": "q"}]))
        return [await env.step(action) for action in actions]

    return asyncio.run(go())


def test_bad_calls_become_observations_and_the_episode_goes_on() -> None:
    env = RecordingToolEnv(HermesFormat(), "echo", retry=False)
    results = run_steps(
        env,
        [
            hermes("{oops"),
            hermes('{"name": "missing", "arguments": {}}'),
            hermes('{"name": "echo", "arguments": {"a": 1}}'),
            "ANSWER",
        ],
    )
    assert [r.tool_status for r in results] == ["invalid", "invalid", "ok", None]
    assert [r.tool for r in results] == [None, "missing", "echo", None]
    assert [r.done for r in results] == [False, False, False, True]
    assert "not valid JSON" in results[0].observation
    assert "unknown tool 'missing'; use: echo" in results[1].observation
    assert results[2].observation.startswith("<tool_response>\n")
    assert env.tool_success() == pytest.approx(1 / 3)


def test_step_before_reset_is_a_programming_error() -> None:
    env = RecordingToolEnv(HermesFormat(), "echo", retry=False)
    with pytest.raises(RuntimeError, match="before reset"):
        asyncio.run(env.step("x"))
