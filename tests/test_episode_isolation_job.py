"""A whole job (real Ray, Redis, DeepSpeed, the tiny random model) whose model writes garbage
every turn, straight into SQLite, and whose environment fails in every other episode: the job
runs to its last step, no worker dies, and the failed episodes reach the learner masked and
counted by cause."""

from __future__ import annotations

import pytest

from relayrl.cluster.redis_buffer import PAYLOAD_FIELD
from relayrl.metrics import read_metrics
from relayrl.trajectory import decode
from tests.job_harness import job_on_own_redis

pytestmark = pytest.mark.slow

STEPS = 2


@pytest.fixture(scope="module")
def finished_job(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp("isolation-job"),
        [
            "name=isolation-e2e",
            f"model.path={tiny_model_path}",
            "rollout.num_workers=1",
            "rollout.group_size=4",
            "rollout.sampling.max_new_tokens=16",
            "rollout.agent.max_turns=3",
            "rollout.agent.max_total_tokens=400",
            "rollout.agent.max_observation_tokens=64",
            "rollout.max_worker_restarts=0",
            "buffer.trim_acknowledged=false",
            "env.name=tests.failing_envs:GarbageSql",
            "learner.micro_batch_tokens=512",
            "learner.batch_timeout_s=300",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "output.plot=false",
        ],
    )


def test_the_job_runs_to_its_last_step_and_counts_the_failed_episodes(finished_job) -> None:
    _, result, _ = finished_job
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # Every other environment fails: half of each step's eight episodes.
    assert all(r["episode/errors"] == r["episode/errors/ValueError"] == 4 for r in records)
    [report] = result.worker_reports
    assert report["trajectories"] >= STEPS * 8


def test_failed_episodes_are_masked_and_the_others_ran_garbage_as_sql(finished_job) -> None:
    config, _, client = finished_job
    trajectories = [decode(f[PAYLOAD_FIELD]) for _, f in client.xrange(config.stream_name)]
    failed = [t for t in trajectories if t.finish_reason == "error"]
    played = [t for t in trajectories if t.finish_reason != "error"]
    assert len(failed) == len(played) > 0
    for traj in failed:
        assert traj.error == "ValueError" and not traj.loss_mask.any()
        assert len(traj.turns) == 1 and traj.reward == 0.0
    for traj in played:
        assert traj.error is None and traj.loss_mask.any()
        assert [turn.tool for turn in traj.turns][:2] == ["run_sql", "run_sql"][: len(traj.turns)]
        assert all(turn.tool_status in ("ok", "error", "invalid") for turn in traj.turns[:2])
