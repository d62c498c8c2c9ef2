"""SFT trains on exactly the token stream the agent loop builds at rollout time: a verified
demonstration rendered by the SFT tokenizer path, and the same demonstration played through
the real agent loop and the real env by an engine that emits its assistant turns, give the
same token ids and the same loss mask."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from transformers import AutoTokenizer

from relayrl.actors.agent_loop import AgentLoop
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.demos import Demonstration
from relayrl.envs.base import Task
from relayrl.envs.demos import BUILDERS, play_demo
from relayrl.envs.registry import resolve_env
from relayrl.learner.sft_data import ConversationTokenizer, Framing, sampled_ids, training_rows
from relayrl.models import resolve_model
from tests.agent_loop_fakes import ScriptedEngine, ScriptedTurn

ENVS = {
    "math-python": {"difficulty": 2},
    "countdown": {},
    "text-to-sql": {},
    "math-python-hermes": {"tool_format": "hermes"},
}


@pytest.fixture(scope="module", params=["tiny-random", "smollm2-135m"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return AutoTokenizer.from_pretrained(resolve_model(request.param))


Played = list[tuple[Task, Demonstration]]


@pytest.fixture(scope="module")
def demos() -> dict[str, Played]:
    """Three verified demonstrations per env, with the tasks they were played on."""
    built: dict[str, Played] = {}
    for key, params in ENVS.items():
        name = key.removesuffix("-hermes")
        spec = resolve_env(name)
        model = spec.params_model.model_validate(params)
        tasks, rng = spec.make_tasks(model), random.Random(7)
        built[key] = []
        while len(built[key]) < 3:
            task = tasks.sample(rng)
            demo = asyncio.run(play_demo(spec, model, BUILDERS[name], task, name))
            assert demo is not None
            built[key].append((task, demo))
    return built


def rollout_stream(
    task: Task, demo: Demonstration, env_key: str, tokenizer: Any, agent: AgentConfig
) -> tuple[list[int], list[int]]:
    """The demo's episode as the agent loop records it, the engine emitting its turns."""
    spec = resolve_env(env_key.removesuffix("-hermes"))
    params = spec.params_model.model_validate(ENVS[env_key])
    assistant = [m["content"] for m in demo.messages if m["role"] == "assistant"]
    turns = [ScriptedTurn(sampled_ids(tokenizer, text), "stop") for text in assistant[:-1]] + [
        ScriptedTurn([*sampled_ids(tokenizer, assistant[-1]), tokenizer.eos_token_id], "stop")
    ]
    loop = AgentLoop(
        ScriptedEngine([turns]),
        tokenizer,
        SamplingConfig(max_new_tokens=512),
        agent,
        stop_strings=spec.stop_strings(params),
    )
    [outcome] = asyncio.run(loop.run_group(task, [spec.make_env(params)]))
    assert outcome.episode.reward_channels["correct"] == 1.0
    trajectory = outcome.to_trajectory("g", task.to_record())
    return trajectory.tokens.tolist(), trajectory.loss_mask.tolist()


@pytest.mark.parametrize("role", ["user", "tool"])
@pytest.mark.parametrize("env_key", list(ENVS))
def test_sft_tokens_match_the_agent_loop(
    tokenizer: Any, demos: dict[str, Played], env_key: str, role: str
) -> None:
    agent = AgentConfig(max_turns=4, max_total_tokens=4096, observation_role=role)
    framing = Framing(role, agent.max_observation_chars, agent.max_observation_tokens)
    frame = ConversationTokenizer(tokenizer, framing)
    for task, demo in demos[env_key]:
        assert frame(demo) == rollout_stream(task, demo, env_key, tokenizer, agent)


def test_the_mask_covers_exactly_the_assistant_turns(
    tokenizer: Any, demos: dict[str, Played]
) -> None:
    frame = ConversationTokenizer(tokenizer, Framing())
    for _, demo in demos["math-python"]:
        ids, mask = frame(demo)
        trained = [token for token, on in zip(ids, mask, strict=True) if on]
        assistant = [m["content"] for m in demo.messages if m["role"] == "assistant"]
        expected = [t for text in assistant for t in sampled_ids(tokenizer, text)]
        assert trained == [*expected, tokenizer.eos_token_id]
        assert tokenizer.decode(trained, skip_special_tokens=True) == "".join(assistant)


def test_rows_are_cut_at_max_tokens(tokenizer: Any, demos: dict[str, Played]) -> None:
    conversations = [demo for _, demo in demos["countdown"]]
    full = training_rows(conversations, tokenizer, Framing(), 100_000)
    longest = max(len(row.tokens) for row in full)
    cut = training_rows(conversations, tokenizer, Framing(), longest - 5)
    assert max(len(row.tokens) for row in cut) == longest - 5
    for whole, part in zip(full, cut, strict=True):
        n = len(part.tokens)
        assert part.tokens.tolist() == whole.tokens[:n].tolist()
        assert part.loss_mask.tolist() == whole.loss_mask[:n].tolist()
