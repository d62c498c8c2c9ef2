"""A user's own rollout workflow (examples/chat_workflow.py, plain chat-completions code) plugged
in by `rollout.workflow` and trained in a real job: real Ray, Redis and DeepSpeed, the tiny model,
the multi-turn math-feedback env. Its trajectories must be token-faithful: sampled spans carry
the engine's ids and log-probs (re-scoring them with the initial weights gives the same
log-probs), and what the environment said is masked, unversioned and without log-probs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from examples.chat_workflow import ChatCompletionsWorkflow, EngineChatClient
from relayrl import metric_keys as keys
from relayrl.actors.engine import Completion, SamplingSettings
from relayrl.actors.workflow import WorkflowContext
from relayrl.cluster.preflight import check_workflow
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.config import AgentConfig, SamplingConfig
from relayrl.config_loader import load_config
from relayrl.envs.base import StepResult, Task
from relayrl.envs.tool_calls import HermesFormat
from relayrl.errors import JobConfigError
from relayrl.metrics import read_metrics
from relayrl.trajectory import NO_VERSION, EpisodeEnd, Trajectory, decode
from tests.agent_loop_fakes import GenerateCall, RecordingEngine, RecordingToolEnv
from tests.agent_loop_fakes import assert_token_faithful as assert_agent_loop_faithful
from tests.engine_harness import DrivenEngine, driven_engine
from tests.job_harness import job_on_own_redis

WORKFLOW = "examples.chat_workflow:ChatCompletionsWorkflow"
STEPS = 2


@pytest.fixture(scope="module")
def finished_job(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp("chat-workflow-job"),
        [
            "name=chat-workflow",
            f"model.path={tiny_model_path}",
            f"rollout.workflow={WORKFLOW}",
            "rollout.num_workers=1",
            "rollout.group_size=2",
            "rollout.sampling.max_new_tokens=8",
            "rollout.agent.max_turns=3",
            "rollout.agent.max_total_tokens=400",
            "buffer.trim_acknowledged=false",
            "env.name=math-feedback",
            "env.params.max_attempts=3",
            "learner.lr=1e-3",
            "learner.micro_batch_tokens=256",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "output.plot=false",
        ],
    )


def _trajectories(finished_job) -> list[Trajectory]:
    config, _, client = finished_job
    return [decode(fields[PAYLOAD_FIELD]) for _, fields in client.xrange(config.stream_name)]


@pytest.mark.slow
def test_the_job_trains_on_the_workflow_s_episodes(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r[keys.LOSS_TOTAL]) for r in records)
    [report] = result.worker_reports
    assert report["trajectories"] >= STEPS * 2 * 2
    assert report["turns"] >= report["trajectories"]


@pytest.mark.slow
def test_sampled_spans_are_the_engine_s_tokens_and_observations_are_masked(finished_job) -> None:
    trajectories = _trajectories(finished_job)
    assert trajectories
    for traj in trajectories:
        assert traj.finish_reason in (EpisodeEnd.STOP, EpisodeEnd.LENGTH, EpisodeEnd.MAX_TURNS)
        assert traj.turns and traj.turns[0].start == traj.prompt_len
        sampled = np.zeros(len(traj.tokens), dtype=bool)
        for turn in traj.turns:
            sampled[turn.start : turn.end] = True
            assert (traj.versions[turn.start : turn.end] >= 0).all()
            assert (traj.logprobs[turn.start : turn.end] <= 0).all()
        # Exactly the turns' spans train; prompt and feedback carry no version or log-prob.
        np.testing.assert_array_equal(traj.loss_mask.astype(bool), sampled)
        assert (traj.versions[~sampled] == NO_VERSION).all()
        assert not traj.logprobs[~sampled].any()
        assert traj.logprobs[sampled].any()


@pytest.mark.slow
def test_recorded_log_probs_are_the_policy_s_on_the_recorded_tokens(
    finished_job, tiny_model_path: str
) -> None:
    """Episodes sampled wholly by version 0 are re-scored with the initial weights: a
    re-tokenized span would not reproduce the engine's log-probs."""
    first_policy = [t for t in _trajectories(finished_job) if (t.sampled_versions() == 0).all()]
    assert first_policy
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()
    for traj in first_policy:
        tokens = torch.from_numpy(traj.tokens.astype(np.int64))[None]
        with torch.no_grad():
            logits = model(tokens).logits[0, :-1].float()
        scored = logits.log_softmax(-1).gather(-1, tokens[0, 1:, None]).squeeze(-1)
        mask = traj.loss_mask[1:].astype(bool)
        np.testing.assert_allclose(scored.numpy()[mask], traj.logprobs[1:][mask], atol=2e-3)


PROMPT = [{"role": "user", "content": "what is 3 + 4"}]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: str) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def driven(tiny_model_path: str, tokenizer: Any) -> Iterator[DrivenEngine]:
    yield from driven_engine("transformers", tiny_model_path, tokenizer)


def _context(engine: Any, tokenizer: Any) -> WorkflowContext:
    return WorkflowContext(
        engine,
        tokenizer,
        SamplingConfig(max_new_tokens=8, temperature=0.8),
        AgentConfig(max_turns=3, max_total_tokens=256),
        stop_strings=HermesFormat.stop_strings,
        worker_id="w",
    )


def _turn_calls(calls: list[GenerateCall], traj: Trajectory) -> list[Completion]:
    """Each turn's completion: one the engine sampled from exactly the episode before it (a
    group's first turns share the prompt, so the span's own ids pick among those)."""
    found = []
    for turn in traj.turns:
        prefix = traj.tokens[: turn.start].tolist()
        span = traj.tokens[turn.start : turn.end].tolist()
        candidates = [c for call in calls if call.prompt_ids == prefix for c in call.completions]
        assert candidates, f"turn at {turn.start} was not generated from exactly its prefix"
        found.append(next((c for c in candidates if c.token_ids == span), candidates[0]))
    return found


def test_chat_episodes_are_what_the_agent_loop_would_record(
    driven: DrivenEngine, tokenizer: Any
) -> None:
    """The same token-faithfulness check the built-in agent loop passes: every sampled span is
    exactly one completion, the env saw the decoded text, the whole sequence is the chat
    transcript, and feedback text never turned into control tokens."""
    recording = RecordingEngine(driven.engine)
    workflow = ChatCompletionsWorkflow.from_context(_context(recording, tokenizer))
    envs = [RecordingToolEnv(HermesFormat(), "echo", retry=True) for _ in range(2)]
    outcomes = driven.run(workflow.run_group(Task(id="t", messages=PROMPT), envs))
    assert len(outcomes) == 2
    for outcome, env in zip(outcomes, envs, strict=True):
        traj = outcome.to_trajectory("g", {})
        assert traj.finish_reason is EpisodeEnd.MAX_TURNS and len(traj.turns) == 3
        assert_agent_loop_faithful(traj, _turn_calls(recording.calls, traj), env, tokenizer, PROMPT)


def test_a_request_that_rewrites_the_model_s_reply_is_refused(
    driven: DrivenEngine, tokenizer: Any
) -> None:
    """Changing the model's reply in the history would train tokens it never sampled."""
    client = EngineChatClient(
        driven.engine, tokenizer, SamplingSettings(max_new_tokens=4), AgentConfig()
    )
    reply = driven.run(client.create(PROMPT))
    edited = {"role": "assistant", "content": reply.message["content"] + " (edited)"}
    with pytest.raises(ValueError, match="verbatim"):
        driven.run(client.create([*PROMPT, edited, {"role": "user", "content": "again"}]))


class StepFails(RecordingToolEnv):
    async def step(self, action: str) -> StepResult:
        raise KeyError("the reward service is down")


def test_an_env_failure_ends_only_its_own_episode_masked(
    driven: DrivenEngine, tokenizer: Any
) -> None:
    workflow = ChatCompletionsWorkflow.from_context(_context(driven.engine, tokenizer))
    envs = [
        StepFails(HermesFormat(), "echo", retry=True),
        RecordingToolEnv(HermesFormat(), "echo", retry=True),
    ]
    failed, played = driven.run(workflow.run_group(Task(id="t", messages=PROMPT), envs))
    assert failed.finish_reason is EpisodeEnd.ERROR and failed.episode.error == "KeyError"
    assert not failed.to_trajectory("g", {}).loss_mask.any()
    assert played.finish_reason is EpisodeEnd.MAX_TURNS
    assert played.to_trajectory("g", {}).loss_mask.any()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.no_such_module:Workflow", "cannot import it"),
        ("examples.chat_workflow:chat_agent", "not a class"),
        ("examples.chat_workflow:EngineChatClient", "from_context"),
    ],
)
def test_preflight_refuses_a_workflow_that_is_not_one(
    target: str, message: str, tmp_path: Path
) -> None:
    config = load_config(None, [f"rollout.workflow={target}", f"output.dir={tmp_path}"])
    with pytest.raises(JobConfigError, match=message) as raised:
        check_workflow(config)
    assert "rollout.workflow" in str(raised.value)


def test_preflight_accepts_the_built_in_and_the_example(tmp_path: Path) -> None:
    for target in ("relayrl.actors.agent_loop:AgentLoop", WORKFLOW):
        check_workflow(load_config(None, [f"rollout.workflow={target}"]))
