"""The agent loop on both real engines (transformers and vLLM) and the tiny model: multi-turn
episodes stay token-faithful, the stored log-probs are the model's on exactly the stored
tokens, and stop strings end a turn where they complete."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from relayrl.actors.agent_loop import AgentLoop
from relayrl.actors.engine import SamplingSettings
from relayrl.actors.hf_engine import TransformersEngine, TransformersSettings
from relayrl.chat_format import prompt_token_ids
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.base import Task
from relayrl.envs.tool_calls import HermesFormat
from relayrl.learner.algorithms.logprobs import token_logprobs
from tests.agent_loop_fakes import (
    RecordingEngine,
    RecordingToolEnv,
    assert_token_faithful,
    episode_calls,
)
from tests.engine_harness import ENGINE_KINDS, DrivenEngine, EngineKind, driven_engine

PROMPT = [{"role": "user", "content": "what is 3 + 4"}]
TEMPERATURE = 0.8


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def driven(
    request: pytest.FixtureRequest, tiny_model_path: str, tokenizer: Any
) -> Iterator[DrivenEngine]:
    kind: EngineKind = request.param
    yield from driven_engine(kind, tiny_model_path, tokenizer)


def test_multi_turn_episodes_are_token_faithful_on_the_real_engine(
    driven: DrivenEngine, tokenizer: Any, tiny_model_path: str
) -> None:
    recording = RecordingEngine(driven.engine)
    # The random model never answers, so every turn gets "try again" until the turn cap.
    envs = [RecordingToolEnv(HermesFormat(), "echo", retry=True) for _ in range(3)]
    loop = AgentLoop(
        recording,
        tokenizer,
        SamplingConfig(max_new_tokens=8, temperature=TEMPERATURE),
        AgentConfig(max_turns=3, max_total_tokens=256),
        stop_strings=HermesFormat.stop_strings,
    )
    outcomes = driven.run(loop.run_group(Task(id="t", messages=PROMPT), envs))

    assert [call.n for call in recording.calls] == [3] + [1] * 6
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    for index, (outcome, env) in enumerate(zip(outcomes, envs, strict=True)):
        traj = outcome.to_trajectory("g", {})
        assert (len(traj.turns), traj.finish_reason) == (3, "max_turns")
        assert [result.observation for result in env.results[:2]] == ["No answer. Try again."] * 2
        assert_token_faithful(
            traj, episode_calls(recording.calls, traj, index), env, tokenizer, PROMPT
        )
        tokens = torch.tensor(traj.tokens[None, :], dtype=torch.long)
        with torch.no_grad():
            recomputed = token_logprobs(model(input_ids=tokens).logits, tokens, TEMPERATURE)[0]
        sampled = torch.from_numpy(traj.loss_mask.astype(bool))
        torch.testing.assert_close(
            torch.from_numpy(traj.logprobs)[sampled],
            recomputed[sampled],
            atol=driven.logprob_atol,
            rtol=driven.logprob_atol,
        )


def test_stop_strings_end_a_turn_on_the_token_that_completes_them(
    driven: DrivenEngine, tokenizer: Any
) -> None:
    prompt = prompt_token_ids(tokenizer, [{"role": "user", "content": "hi"}])
    settings = SamplingSettings(max_new_tokens=24, seed=3, stop_strings=("e",))
    completions = driven.run(driven.engine.generate(prompt, settings, n=4))
    stopped_by_string = 0
    for completion in completions:
        text = tokenizer.decode(completion.token_ids)
        before_last = tokenizer.decode(completion.token_ids[:-1])
        assert "e" not in before_last
        assert len(completion.logprobs) == len(completion.versions) == len(completion.token_ids)
        if completion.token_ids[-1] != tokenizer.eos_token_id and "e" in text:
            assert completion.finish_reason == "stop"
            stopped_by_string += 1
    assert stopped_by_string >= 2
    unstopped = driven.run(
        driven.engine.generate(prompt, SamplingSettings(max_new_tokens=24, seed=3), 4)
    )
    # The same seed samples the same tokens; the stop string only cut them short.
    pairs = list(zip(completions, unstopped, strict=True))
    assert all(full.token_ids[: len(short.token_ids)] == short.token_ids for short, full in pairs)
    assert any(len(full.token_ids) > len(short.token_ids) for short, full in pairs)


def test_stop_strings_without_a_tokenizer_are_refused(tiny_model_path: str) -> None:
    bare = TransformersEngine(TransformersSettings(tiny_model_path), (2,))
    with pytest.raises(ValueError, match="tokenizer"):
        asyncio.run(bare.generate([1, 5, 6], SamplingSettings(4, stop_strings=("x",)), 1))
