"""Multi-turn tool-using training end to end: real Ray, Redis, DeepSpeed and sandbox, the tiny
model, a user's Env class plugged in by `module:Class`, and each of the two rollout engines,
synchronous, so every step trains on the version its engine loaded in place just before."""

from __future__ import annotations

import pytest
import torch

from relayrl import metric_keys as keys
from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.metrics import read_metrics
from relayrl.trajectory import NO_VERSION, decode
from tests.engine_harness import ENGINE_KINDS
from tests.job_harness import assert_nothing_discarded, job_on_own_redis

pytestmark = pytest.mark.slow

STEPS = 3  # two in-place loads into each engine


@pytest.fixture(scope="module", params=ENGINE_KINDS)
def finished_job(
    request: pytest.FixtureRequest, tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory
):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp(f"agent-job-{request.param}"),
        [
            "name=agent-e2e",
            f"model.path={tiny_model_path}",
            f"rollout.engine={request.param}",
            "rollout.num_workers=1",
            "rollout.group_size=2",
            "rollout.sampling.max_new_tokens=8",
            "rollout.agent.max_turns=3",
            "rollout.agent.max_total_tokens=400",
            "buffer.trim_acknowledged=false",
            "env.name=tests.agent_plugin_envs:PythonEveryTurn",
            "learner.lr=1e-3",
            "learner.micro_batch_tokens=256",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=0",
            "output.plot=false",
        ],
    )


def test_the_learner_trained_on_multi_turn_episodes(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r[keys.LOSS_TOTAL])) for r in records)
    assert all(
        {keys.reward_channel("digits"), keys.reward_channel("tool_success")} <= r.keys()
        for r in records
    )
    [report] = result.worker_reports
    assert report["tool_calls"] == 2 * report["trajectories"]
    assert report["turns"] == 3 * report["trajectories"]


def test_synchronous_steps_train_on_the_version_the_engine_just_loaded(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    # Step s trains only on tokens sampled with policy version s - 1, so the engine really
    # loaded every published version in place.
    assert [r[keys.BATCH_MIN_TOKEN_VERSION] for r in records] == list(range(STEPS))
    assert all(r[keys.STALENESS_MAX] == 0 for r in records)
    # The intake's stale filter would hide over-admission from the two checks above.
    assert_nothing_discarded(records)
    [report] = result.worker_reports
    assert report["weight_syncs"] >= STEPS - 1


def test_pushed_episodes_interleave_sampled_turns_and_sandbox_output(finished_job) -> None:
    config, _, client = finished_job
    entries = client.xrange(config.stream_name)
    assert entries
    for _, fields in entries:
        traj = decode(fields[PAYLOAD_FIELD])
        assert [turn.tool for turn in traj.turns] == ["python", "python", None]
        # Random text as a program: the sandbox ran it and typed how it ended.
        assert all(turn.tool_status in ("ok", "error") for turn in traj.turns[:2])
        sampled = traj.loss_mask.astype(bool)
        for turn in traj.turns:
            assert sampled[turn.start : turn.end].all()
            assert (traj.versions[turn.start : turn.end] >= 0).all()
        between = [(a.end, b.start) for a, b in zip(traj.turns, traj.turns[1:], strict=False)]
        for start, end in between:
            assert end > start and not sampled[start:end].any()
            assert (traj.versions[start:end] == NO_VERSION).all()
            assert not traj.logprobs[start:end].any()
