"""Arbitrary model output (huge numbers, deep nesting, lone surrogates, NULs, control tokens,
megabytes of open tags) thrown at every parser, tool and built-in environment's `step`, and
at the agent loop driven by an engine that emits garbage every turn: nothing raises, every
episode ends, and nothing an episode keeps grows without bound."""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Iterator, Mapping
from typing import Any, get_args

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from relayrl.actors.agent_loop import AgentLoop, EpisodeEnd
from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.chat_format import valid_text
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.arith_expr import ExpressionError, evaluate_text
from relayrl.envs.arithmetic import last_integer, parse_answer
from relayrl.envs.base import Env, StepResult, Task
from relayrl.envs.calculator import CalculatorTool
from relayrl.envs.countdown import check_answer
from relayrl.envs.math_answers import last_boxed
from relayrl.envs.registry import resolve_env
from relayrl.envs.sql_database import SqlDatabase
from relayrl.envs.tags import tagged
from relayrl.envs.text_to_sql import RunSqlTool, sql_blocks
from relayrl.envs.tool_calls import CodeBlockFormat, HermesFormat, MalformedCall, ToolCall
from relayrl.envs.tools import ToolStatus
from relayrl.trajectory import decode, encode

CONTROL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "```python\n",
    "\n```\n",
    "```sql\n",
    "```",
    "\\boxed{",
    "}",
    "<answer>",
    "</answer>",
    "\x00",
    "\ud800",
    "\udfff",
    "\u202e",
    "\r\n",
]
# Many of one piece: open tags on which a backtracking regex goes quadratic, brackets past
# any recursion limit.
REPEATED = [
    "[",
    "{",
    '{"a": ',
    "(",
    "\\boxed{",
    "<tool_call>",
    "<answer>",
    "```sql\n",
    "```python\n",
    "<answer> ",
]
pieces = st.one_of(
    st.text(st.characters(categories=["L", "N", "P", "S", "Z", "Cc", "Cs", "Co"]), max_size=40),
    st.sampled_from(CONTROL),
    st.integers(4301, 12_000).map(lambda n: "9" * n),  # past int()'s 4300-digit limit
    st.sampled_from(["1e200", "1e308", "1e999", "-0", "NaN", "Infinity", "0.1", "7"]),
    st.tuples(st.sampled_from(REPEATED), st.integers(1_000, 60_000)).map(lambda p: p[0] * p[1]),
    st.integers(1, 2).map(lambda n: "m" * n * 2**20),  # megabytes
)
raw_text = st.lists(pieces, max_size=5).map("".join)

TEMPLATES = [
    "{text}",
    "<tool_call>{text}</tool_call>",
    '<tool_call>{{"name": "calculator", "arguments": {{"expression": {json}}}}}</tool_call>',
    '<tool_call>{{"name": "run_sql", "arguments": {{"query": {json}}}}}</tool_call>',
    '<tool_call>{{"name": {json}, "arguments": {{}}}}</tool_call>',
    '<tool_call>{{"name": "run_sql", "arguments": {json}}}</tool_call>',
    "```python\n{text}\n```\n",
    "Final:\n```sql\n{text}\n```",
    "<answer>{text}</answer>",
    "\\boxed{{{text}}}",
]


@st.composite
def hostile(draw: st.DrawFn) -> str:
    text = draw(raw_text)
    template = draw(st.sampled_from(TEMPLATES))
    return template.format(text=text, json=json.dumps(text))


arithmetic_text = st.lists(
    st.sampled_from(["1e200", "*", "/", "3", "(", ")", "-", "+", "9" * 150, "0", "1e-300"]),
    max_size=40,
).map("".join)

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)


@FAST
@given(text=hostile())
def test_parsers_return_a_value_for_any_text(text: str) -> None:
    for call_format in (HermesFormat(), CodeBlockFormat()):
        call = call_format.parse(text)
        assert call is None or isinstance(call, ToolCall | MalformedCall)
        if isinstance(call, MalformedCall):
            assert len(call.problem) < 200
    assert last_boxed(text) is None or isinstance(last_boxed(text), str)
    for answer in (parse_answer(text), last_integer(text)):
        assert answer is None or isinstance(answer, int)
    assert all(isinstance(found, str) for found in tagged(text, "<answer>", "</answer>"))
    assert all(isinstance(found, str) for found in sql_blocks(text))
    well_formed, correct = check_answer(text, [1, 2, 3], 6)
    assert isinstance(well_formed, bool) and isinstance(correct, bool)


@FAST
@given(expression=st.one_of(arithmetic_text, raw_text))
def test_the_calculator_answers_any_expression_with_a_typed_result(expression: str) -> None:
    try:
        value = evaluate_text(expression)
    except ExpressionError:
        value = None
    result = asyncio.run(CalculatorTool().call({"expression": expression}))
    assert result.status in get_args(ToolStatus)
    assert (result.status == "ok") == (value is not None) or not expression.strip()
    assert len(result.output) < 3000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | raw_text,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@FAST
@given(arguments=st.dictionaries(st.sampled_from(["query", "expression", "x"]), json_values))
def test_tools_answer_any_arguments_with_a_bounded_typed_result(arguments: dict) -> None:
    database = SqlDatabase(timeout_s=1.0)
    tools = [CalculatorTool(), RunSqlTool(database, max_rows=20, max_chars=2000)]
    for tool in tools:
        result = asyncio.run(tool.call(arguments))
        assert result.status in get_args(ToolStatus)
        assert len(result.output) < 3000
    database.close()


@pytest.fixture(scope="module")
def event_loop_for_envs() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for every example, so math-verify's child process starts once."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def play_step(loop: asyncio.AbstractEventLoop, name: str, params: dict, turn: str) -> StepResult:
    spec = resolve_env(name)
    env_params = spec.params_model.model_validate(params)
    task = spec.make_tasks(env_params).sample(random.Random(len(turn)))
    env = spec.make_env(env_params)

    async def go() -> StepResult:
        await env.reset(task)
        try:
            return await env.step(turn)
        finally:
            await env.close()

    return loop.run_until_complete(go())


def assert_bounded(result: StepResult) -> None:
    assert isinstance(result, StepResult)
    assert math.isfinite(result.reward)
    assert all(math.isfinite(v) for v in result.reward_channels.values())
    assert result.observation is None or len(result.observation) < 5000
    assert result.tool is None or len(result.tool) <= 64


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "text-to-sql"])
def test_fast_envs_step_through_any_turn(
    name: str, event_loop_for_envs: asyncio.AbstractEventLoop
) -> None:
    @FAST
    @given(turn=hostile())
    def check(turn: str) -> None:
        assert_bounded(play_step(event_loop_for_envs, name, {}, turn))

    check()


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(turn=hostile())
def test_math_feedback_steps_through_any_turn(
    turn: str, event_loop_for_envs: asyncio.AbstractEventLoop
) -> None:
    assert_bounded(play_step(event_loop_for_envs, "math-feedback", {}, turn))


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(code=raw_text.map(lambda text: text[:5000]), hermes=st.booleans())
def test_math_python_runs_any_code_in_the_sandbox(
    code: str, hermes: bool, event_loop_for_envs: asyncio.AbstractEventLoop
) -> None:
    if hermes:
        turn = (
            '<tool_call>{"name": "python", "arguments": {"code": '
            + json.dumps(code)
            + "}}</tool_call>"
        )
    else:
        turn = f"```python\n{code}\n```\n"
    params = {"tool_format": "hermes" if hermes else "code", "sandbox": {"wall_s": 2.0}}
    result = play_step(event_loop_for_envs, "math-python", params, turn)
    assert_bounded(result)
    # Code holding a fence of its own is no call: the turn is then a final answer.
    assert result.tool_status in (None, *get_args(ToolStatus))


class GarbageEngine:
    """Every call answers each of its `n` samples with the next drawn token ids, cut at the
    call's token budget: ids that are never text, control tokens, or hostile text."""

    def __init__(self, turns: list[list[int]]) -> None:
        self.turns = turns
        self.calls = 0
        self.longest_prompt = 0

    @property
    def version(self) -> int:
        return 0

    async def generate(
        self, prompt_ids: list[int], settings: SamplingSettings, n: int
    ) -> list[Completion]:
        self.longest_prompt = max(self.longest_prompt, len(prompt_ids))
        completions = []
        for _ in range(n):
            ids = self.turns[self.calls % len(self.turns)][: settings.max_new_tokens]
            self.calls += 1
            finish = "length" if len(ids) == settings.max_new_tokens else "stop"
            completions.append(Completion(ids, [-1.0] * len(ids), finish, [0] * len(ids)))
        return completions

    async def update_weights(self, state: Mapping[str, torch.Tensor], version: int) -> None:
        return None

    async def close(self) -> None:
        return None


class BrokenEnv:
    """An environment whose every step raises, as a buggy plug-in's might."""

    async def reset(self, task: Task) -> list[dict[str, str]]:
        return list(task.messages)

    async def step(self, action: str) -> StepResult:
        raise ZeroDivisionError(action[:10])

    async def close(self) -> None:
        return None


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


@st.composite
def garbage_turn(draw: st.DrawFn, tokenizer: Any) -> list[int]:
    if draw(st.booleans()):
        return draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=0, max_size=80))
    text = valid_text(draw(hostile()))[:3000]  # decoded model text is always valid UTF-8
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


END_REASONS = set(EpisodeEnd)
AGENT = AgentConfig(
    max_turns=4, max_total_tokens=2048, max_observation_chars=2000, max_observation_tokens=200
)


def make_envs(name: str, size: int) -> tuple[Task, list[Env]]:
    if name == "broken":
        return Task(id="b", messages=[{"role": "user", "content": "Go."}]), [BrokenEnv()] * size
    spec = resolve_env(name)
    params = spec.params_model.model_validate({})
    task = spec.make_tasks(params).sample(random.Random(0))
    return task, [spec.make_env(params) for _ in range(size)]


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "text-to-sql", "broken"])
def test_the_agent_loop_ends_every_episode_of_a_garbage_engine(
    name: str, tokenizer: Any, event_loop_for_envs: asyncio.AbstractEventLoop
) -> None:
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(turns=st.lists(garbage_turn(tokenizer), min_size=1, max_size=6))
    def check(turns: list[list[int]]) -> None:
        engine = GarbageEngine(turns)
        loop = AgentLoop(
            engine, tokenizer, SamplingConfig(max_new_tokens=120), AGENT, worker_id="w"
        )
        task, envs = make_envs(name, 3)
        outcomes = event_loop_for_envs.run_until_complete(loop.run_group(task, envs))
        for env in envs:
            event_loop_for_envs.run_until_complete(env.close())
        assert len(outcomes) == 3
        assert engine.longest_prompt < AGENT.max_total_tokens
        frame = len(loop.formatter.before_ids) + len(loop.formatter.after_ids)
        for outcome in outcomes:
            traj = decode(encode(outcome.to_trajectory("g", task.to_record())))
            assert traj.finish_reason in END_REASONS
            assert len(traj.tokens) <= AGENT.max_total_tokens
            assert 1 <= len(traj.turns) <= AGENT.max_turns
            for earlier, later in zip(traj.turns, traj.turns[1:], strict=False):
                assert later.start - earlier.end <= frame + AGENT.max_observation_tokens
            if name == "broken":
                assert (traj.finish_reason, traj.error) == ("error", "ZeroDivisionError")
                assert not traj.loss_mask.any()
            else:
                assert traj.error is None

    check()
