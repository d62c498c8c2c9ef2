"""Templated demonstrations for the built-in environments, each verified by playing it through
the real environment (its real tool output in the conversation) and kept only when the
environment grades it correct.

A builder is a scripted policy: given the task and the environment's messages so far, it
writes the next assistant turn, or None when it has no template for the task."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from relayrl.demos import Demonstration
from relayrl.envs.base import EnvSpec, Message, Task
from relayrl.envs.demo_solvers import countdown_expression, math_program
from relayrl.envs.registry import resolve_env
from relayrl.errors import UserError

Builder = Callable[[BaseModel, Task, list[str]], str | None]

_RESULT_BODY = re.compile(r"```output\n(.*)\n```|<tool_response>\n(.*)\n</tool_response>", re.S)
# Turns a scripted policy may take before a demonstration is given up on.
MAX_DEMO_TURNS = 4


class NoDemoBuilderError(UserError):
    """The environment has no demonstration builder."""


def _tool_call(call_format: str, tool: str, arguments: dict[str, str]) -> str:
    """A tool call written as the env's call format parses it, ending at its stop string."""
    if call_format == "code":
        return f"```python\n{arguments['code']}\n```\n"
    return f"<tool_call>\n{json.dumps({'name': tool, 'arguments': arguments})}\n</tool_call>"


def _fenced_body(observation: str) -> str:
    """The text inside an observation's ```output fence or <tool_response> tags."""
    match = re.search(
        r"```output\n(.*)\n```|<tool_response>\n(.*)\n</tool_response>", observation, re.S
    )
    return (match.group(1) or match.group(2)) if match else observation.strip()


def math_python_turn(params: Any, task: Task, observations: list[str]) -> str | None:
    if not observations:
        program = math_program(task.messages[-1]["content"])
        if program is None:
            return None
        call = _tool_call(params.tool_format, "python", {"code": program})
        return f"I will compute this with Python.\n\n{call}"
    output = _fenced_body(observations[-1]).strip()
    return f"The program printed {output}, so the answer is \\boxed{{{output}}}."


def countdown_turn(params: Any, task: Task, observations: list[str]) -> str | None:
    expression = countdown_expression(task.answer["numbers"], task.answer["target"])
    if expression is None:
        return None
    if not observations:
        call = _tool_call("hermes", "calculator", {"expression": expression})
        return f"Let me check {expression} with the calculator.\n{call}"
    value = _fenced_body(observations[-1]).strip()
    return f"{expression} = {value}, the target.\n<answer>{expression}</answer>"


def text_to_sql_turn(params: Any, task: Task, observations: list[str]) -> str | None:
    query = str(task.answer)
    if not observations:
        call = _tool_call("hermes", "run_sql", {"query": query})
        return f"Let me run the query first.\n{call}"
    return f"The query returns the rows asked for.\n```sql\n{query}\n```"


BUILDERS: dict[str, Builder] = {
    "math-python": math_python_turn,
    "countdown": countdown_turn,
    "text-to-sql": text_to_sql_turn,
}


class DemoRejected(RuntimeError):
    """The environment did not grade a scripted conversation correct."""


@dataclass(frozen=True)
class DemoReport:
    demos: list[Demonstration]
    tried: int
    no_template: int  # tasks the builder had no template for
    rejected: int  # played through the env but not graded correct


async def play_demo(
    spec: EnvSpec, params: BaseModel, builder: Builder, task: Task, env_name: str
) -> Demonstration | None:
    """The builder's conversation on `task` through a fresh env; None when it cannot write
    one. Raises DemoRejected when the env does not grade it correct."""
    env = spec.make_env(params)
    try:
        messages: list[Message] = list(await env.reset(task))
        observations: list[str] = []
        for _ in range(MAX_DEMO_TURNS):
            text = builder(params, task, observations)
            if text is None:
                return None
            messages.append({"role": "assistant", "content": text})
            result = await env.step(text)
            if result.done or result.observation is None:
                if result.reward_channels.get("correct") != 1.0:
                    raise DemoRejected(f"graded {result.reward_channels}")
                return Demonstration(messages, env_name, task.id, result.reward)
            observations.append(result.observation)
            messages.append({"role": "tool", "content": result.observation})
        raise DemoRejected(f"no answer in {MAX_DEMO_TURNS} turns")
    finally:
        await env.close()


async def build_demos(
    env_name: str,
    env_params: dict[str, Any],
    count: int,
    seed: int,
    held_out: frozenset[str] = frozenset(),
) -> DemoReport:
    """Up to `count` verified demonstrations on distinct tasks sampled with `seed`, none of
    them a task whose id is in `held_out` (the evaluation's)."""
    builder = BUILDERS.get(env_name)
    if builder is None:
        known = ", ".join(sorted(BUILDERS))
        raise NoDemoBuilderError(
            f"env {env_name!r} has no demonstration builder (built-in builders: {known}); "
            "write its conversations in the demonstration JSONL format yourself"
        )
    spec = resolve_env(env_name)
    params = spec.params_model.model_validate(env_params)
    tasks = spec.make_tasks(params)
    rng = random.Random(seed)
    demos: list[Demonstration] = []
    seen: set[str] = set()
    tried = no_template = rejected = 0
    # Distinct tasks may run out (text-to-sql has a fixed question set): stop sampling then.
    for _ in range(count * 20):
        if len(demos) >= count:
            break
        task = tasks.sample(rng)
        if task.id in seen or task.id in held_out:
            continue
        seen.add(task.id)
        tried += 1
        try:
            demo = await play_demo(spec, params, builder, task, env_name)
        except DemoRejected:
            rejected += 1
            continue
        if demo is None:
            no_template += 1
        else:
            demos.append(demo)
    return DemoReport(demos, tried, no_template, rejected)
