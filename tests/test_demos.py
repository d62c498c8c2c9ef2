"""Demonstrations: built for math-python, countdown and text-to-sql by playing them through the
real env (math-python's programs run in the real sandbox), graded correct by it, written and
read back in the JSONL format; an env without a builder is named, not guessed at."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from relayrl.cli import EXIT_USER_ERROR, main
from relayrl.demos import DemoFormatError, Demonstration, read_demos, write_demos
from relayrl.envs.base import Task
from relayrl.envs.demos import NoDemoBuilderError, build_demos
from relayrl.envs.registry import resolve_env

CASES = {
    "math-python": ({"difficulty": 3}, "```output\n"),
    "countdown": ({"max_numbers": 5}, "<tool_response>\n"),
    "text-to-sql": ({}, "<tool_response>\n"),
}


async def replay_tool_turns(env_name: str, params: dict, demo: Demonstration) -> None:
    """The demo's tool-calling turns through a fresh env give back the recorded observations:
    they are the tools' real output, not text the builder made up."""
    spec = resolve_env(env_name)
    env = spec.make_env(spec.params_model.model_validate(params))
    user = [m for m in demo.prompt if m["role"] == "user"]
    assert await env.reset(Task(id=demo.task_id, messages=user)) == demo.prompt
    turns = demo.messages[len(demo.prompt) :]
    for call, observation in zip(turns[:-1:2], turns[1::2], strict=True):
        result = await env.step(call["content"])
        assert (result.observation, result.tool_status) == (observation["content"], "ok")
    await env.close()


@pytest.mark.parametrize("env_name", list(CASES))
def test_every_demo_is_graded_correct_with_real_tool_output(env_name: str) -> None:
    params, result_opening = CASES[env_name]
    report = asyncio.run(build_demos(env_name, params, 6, seed=11))
    assert len(report.demos) == 6
    assert report.rejected == report.no_template == 0
    for demo in report.demos:
        assert demo.env == env_name and demo.reward is not None and demo.reward >= 1.0
        roles = [m["role"] for m in demo.messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        assert demo.messages[3]["content"].startswith(result_opening)
        asyncio.run(replay_tool_turns(env_name, params, demo))
    assert len({demo.task_id for demo in report.demos}) == 6


def test_math_python_demo_shows_the_programs_real_output() -> None:
    [demo] = asyncio.run(build_demos("math-python", {"kinds": ["prime_count"]}, 1, seed=0)).demos
    limit = int(demo.messages[1]["content"].split("below ")[1].rstrip("?"))
    primes = sum(all(n % d for d in range(2, int(n**0.5) + 1)) for n in range(2, limit))
    assert demo.messages[2]["content"].endswith("\n```\n")  # ends at the env's stop string
    assert demo.messages[3]["content"] == f"```output\n{primes}\n```"
    assert demo.messages[4]["content"].endswith(f"\\boxed{{{primes}}}.")


def test_hermes_calls_for_math_python() -> None:
    [demo] = asyncio.run(build_demos("math-python", {"tool_format": "hermes"}, 1, seed=0)).demos
    call = demo.messages[2]["content"]
    body = call.split("<tool_call>\n", 1)[1].removesuffix("\n</tool_call>")
    assert json.loads(body)["name"] == "python"
    assert demo.messages[3]["content"].startswith("<tool_response>\n")


def test_tasks_without_a_template_are_counted_not_faked(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"question": "What is the airspeed of a swallow?", "answer": "11"}\n')
    report = asyncio.run(build_demos("math-python", {"tasks_file": str(tasks)}, 3, seed=0))
    assert report.demos == [] and report.no_template == 1


def test_an_env_without_a_builder_is_refused_by_name() -> None:
    with pytest.raises(NoDemoBuilderError, match=r"'arithmetic'.*math-python"):
        asyncio.run(build_demos("arithmetic", {}, 1, seed=0))


def test_the_jsonl_format_round_trips_and_bad_lines_name_their_number(tmp_path: Path) -> None:
    demos = asyncio.run(build_demos("countdown", {}, 3, seed=2)).demos
    path = tmp_path / "demos.jsonl"
    write_demos(path, demos)
    assert read_demos(path) == demos
    good = path.read_text().splitlines()[0]
    broken = json.loads(good)
    broken["messages"] = broken["messages"][:-1]  # ends with the tool message
    path.write_text(good + "\n" + json.dumps(broken) + "\n")
    with pytest.raises(DemoFormatError, match=r"demos.jsonl:2: .*end with an assistant"):
        read_demos(path)
    for messages, problem in [
        ([{"role": "assistant", "content": "hi"}], "prompt"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "empty"),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
            ],
            "alternate",
        ),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": 3}], "content"),
    ]:
        with pytest.raises(DemoFormatError, match=problem):
            Demonstration(messages)


def test_relayrl_demos_writes_verified_demos_and_refuses_other_envs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "demos", "env": {"name": "text-to-sql"}}))
    out = tmp_path / "sql.jsonl"
    assert main(["demos", str(config), "--n", "4", "--out", str(out)]) == 0
    assert len(read_demos(out)) == 4
    assert "wrote 4 demonstrations of text-to-sql" in capsys.readouterr().out
    config.write_text(yaml.safe_dump({"name": "demos", "env": {"name": "math-feedback"}}))
    assert main(["demos", str(config), "--n", "4", "--out", str(out)]) == EXIT_USER_ERROR
    assert "'math-feedback' has no demonstration builder" in capsys.readouterr().err


def test_held_out_tasks_never_become_demonstrations() -> None:
    first = asyncio.run(build_demos("countdown", {}, 5, seed=4))
    held_out = frozenset(demo.task_id for demo in first.demos[:3])
    again = asyncio.run(build_demos("countdown", {}, 5, seed=4, held_out=held_out))
    assert len(again.demos) == 5
    assert not held_out & {demo.task_id for demo in again.demos}
