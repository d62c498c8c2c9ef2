"""Property test of the agent loop over generated episodes with a scripted engine: every
episode is token-faithful, calls are batched as promised, and each turn's tool record is
what the environment decided."""

from __future__ import annotations

import asyncio
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from relayrl.actors.agent_loop import AgentLoop
from relayrl.chat_format import prompt_token_ids
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.base import Task
from relayrl.envs.tool_calls import CodeBlockFormat, HermesFormat
from tests.agent_loop_fakes import (
    RecordingToolEnv,
    ScriptedEngine,
    ScriptedTurn,
    assert_token_faithful,
    episode_calls,
)

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}]
TASK = Task(id="t", messages=PROMPT)
# The kind of turn a script line is, and the tool status its environment step must have.
EXPECTED_STATUS = {"call": "ok", "malformed": "invalid", "answer": None, "void": None}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


words = st.text(alphabet=string.ascii_lowercase + " .,\n", max_size=24)

CALLS = {
    "code": lambda n: f"\n```python\nprint({n})\n```\n",
    "hermes": lambda n: f'<tool_call>{{"name": "echo", "arguments": {{"x": {n}}}}}</tool_call>',
}
MALFORMED = {
    "code": ["```python\nprint(1)", "```python\n\n```\n"],
    "hermes": [
        '<tool_call>{"name": echo}</tool_call>',
        '<tool_call>{"name": "echo"',
        "<tool_call>[1, 2]</tool_call>",
        '<tool_call>{"name": "nope", "arguments": {}}</tool_call>',
        '<tool_call>{"name": "echo", "arguments": 3}</tool_call>',
    ],
}


@st.composite
def scripted_turn(draw: st.DrawFn, fmt: str, tag: str, tokenizer: Any) -> tuple[ScriptedTurn, str]:
    eos = tokenizer.eos_token_id
    # Calls twice as often as each other kind, so episodes often run several turns.
    kind = draw(st.sampled_from(["call", "call", "malformed", "answer", "void", "tokens"]))
    text = f"{tag} {draw(words)}"
    ends_with_eos = draw(st.booleans())
    if kind == "call":
        text += CALLS[fmt](draw(st.integers(0, 999)))
        ends_with_eos = False  # the stop string ended the turn
    elif kind == "malformed":
        text += draw(st.sampled_from(MALFORMED[fmt]))
    elif kind == "answer":
        text += " ANSWER"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if kind == "tokens":
        # Raw sampled ids, control tokens included, that were never text.
        ids += draw(st.lists(st.integers(0, len(tokenizer) - 1), min_size=1, max_size=12))
    if ends_with_eos:
        ids.append(eos)
    finish = "stop" if ends_with_eos or kind == "call" else "length"
    return ScriptedTurn(tuple(ids), finish), kind


@st.composite
def scenario(draw: st.DrawFn, tokenizer: Any) -> dict[str, Any]:
    prompt_len = len(prompt_token_ids(tokenizer, PROMPT))
    fmt = draw(st.sampled_from(["code", "hermes"]))
    group_size = draw(st.integers(1, 4))
    max_turns = draw(st.integers(1, 5))
    scripts = [
        # Each episode's turns start with its own letter, so no two episodes share a history.
        [draw(scripted_turn(fmt, f"{'ABCD'[e]}{t}", tokenizer)) for t in range(max_turns)]
        for e in range(group_size)
    ]
    return {
        "fmt": fmt,
        "retry": draw(st.booleans()),
        "scripts": scripts,
        "agent": AgentConfig(
            max_turns=max_turns,
            max_total_tokens=draw(st.integers(prompt_len + 1, prompt_len + 600)),
            drop_void_trajectories=draw(st.booleans()),
        ),
        "max_new_tokens": draw(st.integers(3, 80)),
    }


def make_env(fmt: str, retry: bool) -> RecordingToolEnv:
    if fmt == "code":
        return RecordingToolEnv(CodeBlockFormat(), "python", retry)
    return RecordingToolEnv(HermesFormat(), "echo", retry)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_generated_episode_is_token_faithful(tokenizer: Any, data: st.DataObject) -> None:
    case = data.draw(scenario(tokenizer))
    agent: AgentConfig = case["agent"]
    scripts = [[turn for turn, _ in script] for script in case["scripts"]]
    kinds = [[kind for _, kind in script] for script in case["scripts"]]
    engine = ScriptedEngine(scripts)
    envs = [make_env(case["fmt"], case["retry"]) for _ in scripts]
    loop = AgentLoop(
        engine,
        tokenizer,
        SamplingConfig(max_new_tokens=case["max_new_tokens"]),
        agent,
        stop_strings=envs[0].call_format.stop_strings,
    )
    group_id = "g"
    outcomes = asyncio.run(loop.run_group(TASK, envs))

    assert engine.calls[0].n == len(scripts)
    assert all(call.n == 1 for call in engine.calls[1:])
    assert len(engine.calls) == 1 + sum(len(o.episode.turns) - 1 for o in outcomes)
    assert engine.calls[0].prompt_ids == prompt_token_ids(tokenizer, PROMPT)
    for index, (outcome, env) in enumerate(zip(outcomes, envs, strict=True)):
        traj = outcome.to_trajectory(group_id, TASK.to_record())
        completions = episode_calls(engine.calls, traj, index)
        assert_token_faithful(traj, completions, env, tokenizer, PROMPT)
        assert len(traj.tokens) <= agent.max_total_tokens

        for turn, result, completion, script_turn, kind in zip(
            traj.turns, env.results, completions, scripts[index], kinds[index], strict=False
        ):
            assert (turn.tool_status, turn.reward) == (result.tool_status, result.reward)
            if kind in EXPECTED_STATUS and tuple(completion.token_ids) == script_turn.token_ids:
                assert turn.tool_status == EXPECTED_STATUS[kind], (kind, env.actions)
            if turn.tool_status == "invalid":
                assert result.observation and result.observation.strip()
        assert traj.reward == pytest.approx(sum(turn.reward for turn in traj.turns))

        voids = sum(result.void for result in env.results)
        last = env.results[-1]
        if agent.drop_void_trajectories and voids:
            assert traj.finish_reason == "void_turn"
        elif last.done:
            assert traj.finish_reason == completions[-1].finish_reason
        elif len(traj.turns) == agent.max_turns:
            assert traj.finish_reason == "max_turns"
        else:
            assert traj.finish_reason == "length"
