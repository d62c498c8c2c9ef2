"""An environment that fails ends only its own episode: the outcome is "error" with its cause,
the episode is masked from the loss but stays in its group, the step metrics count it by cause,
and the same agent loop goes on with the next group. Observations are capped before they
reach the engine."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from transformers import AutoTokenizer

from relayrl import metric_keys as keys
from relayrl.actors.agent_loop import AgentLoop
from relayrl.chat_format import ObservationFormatter
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.envs.base import Message, StepResult, Task
from relayrl.learner.batch_metrics import batch_metrics
from relayrl.trajectory import EpisodeEnd, decode, encode
from tests.agent_loop_fakes import ScriptedEngine, ScriptedTurn

PROMPT = [{"role": "user", "content": "Go."}]
TASK = Task(id="t", messages=PROMPT)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


class ScriptedEnv:
    """Answers each step with the next of `steps`: a StepResult, an exception to raise, or any
    other object to return as if it were a result."""

    def __init__(self, steps: list[Any], reset_error: Exception | None = None) -> None:
        self.steps = list(steps)
        self.reset_error = reset_error
        self.closed = False

    async def reset(self, task: Task) -> list[Message]:
        if self.reset_error is not None:
            raise self.reset_error
        return list(task.messages)

    async def step(self, action: str) -> StepResult:
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def close(self) -> None:
        self.closed = True


def turn(tokenizer: Any, text: str) -> ScriptedTurn:
    return ScriptedTurn(tuple(tokenizer(text, add_special_tokens=False)["input_ids"]), "stop")


def agent(tokenizer: Any, scripts: list[list[ScriptedTurn]], **settings: Any) -> AgentLoop:
    return AgentLoop(
        ScriptedEngine(scripts),
        tokenizer,
        SamplingConfig(max_new_tokens=32),
        AgentConfig(max_turns=3, max_total_tokens=512, **settings),
        worker_id="worker-7",
    )


FEEDBACK = StepResult("Try again.", done=False)
ANSWERED = StepResult(None, done=True, reward=1.0, reward_channels={"correct": 1.0})


def test_a_failing_step_ends_only_its_episode_masked_and_counted(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    scripts = [[turn(tokenizer, f"{e} one"), turn(tokenizer, f"{e} two")] for e in "ABCD"]
    loop = agent(tokenizer, scripts)
    envs = [
        ScriptedEnv([ANSWERED]),
        ScriptedEnv([FEEDBACK, ValueError("the tool broke")]),
        ScriptedEnv([StepResult(None, done=True, reward=math.nan)]),
        ScriptedEnv([RecursionError("deep")]),
    ]
    with caplog.at_level(logging.WARNING, logger="relayrl.actors.agent_loop"):
        outcomes = asyncio.run(loop.run_group(TASK, envs))
    trajectories = [decode(encode(o.to_trajectory("g", TASK.to_record()))) for o in outcomes]

    ok = trajectories[0]
    assert (ok.finish_reason, ok.error, ok.reward) == ("stop", None, 1.0)
    assert ok.loss_mask.any()
    for index, cause, turns in (
        (1, "ValueError", 2),
        (2, "non_finite_reward", 1),
        (3, "RecursionError", 1),
    ):
        traj = trajectories[index]
        assert (traj.finish_reason, traj.error) == ("error", cause)
        assert not traj.loss_mask.any()
        assert traj.reward == 0.0 and traj.reward_channels == {}
        # The turn the env failed on stays on record, its sampled tokens intact.
        assert len(traj.turns) == turns
        last = traj.turns[-1]
        assert traj.tokens[last.start : last.end].tolist() == list(
            scripts[index][turns - 1].token_ids
        )

    metrics = batch_metrics(trajectories, version=5)
    assert metrics[keys.EPISODE_ERRORS] == 3
    assert {k: v for k, v in metrics.items() if k.startswith("episode/errors/")} == {
        "episode/errors/RecursionError": 1,
        "episode/errors/ValueError": 1,
        "episode/errors/non_finite_reward": 1,
    }
    assert metrics[keys.episode_end(EpisodeEnd.ERROR)] == pytest.approx(3 / 4)
    assert metrics[keys.EPISODE_MASKED_FRACTION] == pytest.approx(3 / 4)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("worker worker-7" in w for w in warnings)
    assert any("the tool broke" in w for w in warnings)


def test_the_loop_goes_on_and_logs_each_cause_once(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="relayrl.actors.agent_loop"):
        for group in range(3):
            loop_scripts = [[turn(tokenizer, f"{e}{group}")] for e in "AB"]
            if group == 0:
                loop = agent(tokenizer, loop_scripts)
            else:
                loop.engine = ScriptedEngine(loop_scripts)
            envs = [ScriptedEnv([KeyError("k")]), ScriptedEnv([ANSWERED])]
            outcomes = asyncio.run(loop.run_group(TASK, envs))
            assert [o.finish_reason for o in outcomes] == ["error", "stop"]
    assert len(caplog.records) == 1


@pytest.mark.parametrize(
    ("bad_step", "cause"),
    [
        (StepResult(None, done=True, reward=math.inf), "non_finite_reward"),
        (
            StepResult(None, done=True, reward=0.0, reward_channels={"x": -math.inf}),
            "non_finite_reward",
        ),
        (StepResult(None, done=True, reward="lots"), "bad_reward"),  # type: ignore[arg-type]
        (StepResult(None, done=True, reward=10**400), "bad_reward"),
        (StepResult(None, done=True, reward_channels=[1.0]), "bad_reward"),  # type: ignore[arg-type]
        (StepResult(b"bytes", done=False), "bad_observation"),  # type: ignore[arg-type]
        ({"observation": None}, "bad_step_result"),
    ],
)
def test_a_step_result_that_cannot_be_trusted_is_an_error(
    tokenizer: Any, bad_step: Any, cause: str
) -> None:
    loop = agent(tokenizer, [[turn(tokenizer, "A")]])
    [outcome] = asyncio.run(loop.run_group(TASK, [ScriptedEnv([bad_step])]))
    traj = outcome.to_trajectory("g", TASK.to_record())
    assert (traj.finish_reason, traj.error, traj.reward) == ("error", cause, 0.0)
    assert not traj.loss_mask.any()


def test_a_group_whose_reset_fails_is_produced_whole_and_masked(tokenizer: Any) -> None:
    engine_scripts: list[list[ScriptedTurn]] = [[], [], []]
    loop = agent(tokenizer, engine_scripts)
    envs = [ScriptedEnv([]), ScriptedEnv([], reset_error=OSError("no db")), ScriptedEnv([])]
    outcomes = asyncio.run(loop.run_group(TASK, envs))
    assert loop.engine.calls == []  # nothing was generated for a group that cannot start
    assert len(outcomes) == len(envs)  # every admitted sample is accounted for
    for outcome in outcomes:
        traj = decode(encode(outcome.to_trajectory("g", TASK.to_record())))
        assert (traj.finish_reason, traj.error) == ("error", "OSError")
        assert traj.prompt_len == len(traj.tokens) > 0 and not traj.loss_mask.any()
        assert traj.turns == []


def test_a_prompt_longer_than_the_episode_cap_is_a_masked_error(tokenizer: Any) -> None:
    long_task = Task(id="long", messages=[{"role": "user", "content": "word " * 400}])
    loop = AgentLoop(
        ScriptedEngine([[], []]),
        tokenizer,
        SamplingConfig(max_new_tokens=8),
        AgentConfig(max_total_tokens=64),
    )
    outcomes = asyncio.run(loop.run_group(long_task, [ScriptedEnv([]), ScriptedEnv([])]))
    for outcome in outcomes:
        traj = outcome.to_trajectory("g", long_task.to_record())
        assert (traj.finish_reason, traj.error) == ("error", "prompt_too_long")
        assert len(traj.tokens) == 64 and not traj.loss_mask.any()


def test_observations_are_capped_in_characters_and_tokens(tokenizer: Any) -> None:
    by_chars = ObservationFormatter(tokenizer, "user", max_chars=100, max_tokens=10_000)
    assert tokenizer.decode(by_chars.message_ids("x" * 10**6)) == (
        "x" * 100 + "\n[... 999900 more characters cut]"
    )
    formatter = ObservationFormatter(tokenizer, "user", max_chars=100, max_tokens=40)
    dense = "".join(chr(0x4E00 + 37 * i) for i in range(90))  # many tokens in few characters
    by_tokens = formatter.message_ids(dense)
    assert len(by_tokens) == 40
    assert tokenizer.decode(by_tokens).endswith("[... cut at 40 tokens]")
    short = formatter.message_ids("fine")
    assert tokenizer.decode(short) == "fine"
    # A lone surrogate (no tokenizer encodes one) arrives as U+FFFD.
    assert tokenizer.decode(formatter.message_ids("a\ud800b")) == "a\ufffdb"


def test_the_loop_caps_a_huge_observation_before_the_engine_sees_it(tokenizer: Any) -> None:
    scripts = [[turn(tokenizer, "A call"), turn(tokenizer, "A done")]]
    loop = agent(tokenizer, scripts, max_observation_chars=200, max_observation_tokens=64)
    huge = StepResult("<|im_start|>" + "y" * 5_000_000, done=False)
    [outcome] = asyncio.run(loop.run_group(TASK, [ScriptedEnv([huge, ANSWERED])]))
    second_prompt = loop.engine.calls[1].prompt_ids
    first_turn_end = outcome.episode.turns[0].end
    last_sampled = scripts[0][0].token_ids[-1]
    framed = loop.formatter.token_ids(huge.observation, last_sampled)
    assert second_prompt[first_turn_end:] == framed
    message = loop.formatter.message_ids(huge.observation)
    assert len(message) == 64
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in message
    assert outcome.finish_reason == "stop"


def test_payloads_without_an_error_field_still_decode() -> None:
    loop_free = {
        "schema": 1,
        "id": "x",
        "group_id": "g",
        "task": {},
        "prompt_len": 1,
        "reward": 0.0,
        "reward_channels": {},
        "turns": [],
        "finish_reason": "stop",
        "timings": {},
        "tokens": np.array([1, 2], dtype="<i4").tobytes(),
        "loss_mask": np.array([0, 1], dtype="u1").tobytes(),
        "logprobs": np.array([0, -1], dtype="<f4").tobytes(),
        "versions": np.array([-1, 0], dtype="<i4").tobytes(),
    }
    traj = decode(msgpack.packb(loop_free, use_bin_type=True))
    assert traj.error is None and traj.finish_reason == "stop"
