"""Dynamic sampling in a synchronous job: every flat group the learner discards is booked at
once, the controller admits as many new samples, and each step still trains a full batch."""

from __future__ import annotations

import pytest

from relayrl.cluster.audit import audit_stream
from relayrl.learner.checkpoint import read_ledger
from relayrl.metrics import read_metrics
from tests.job_harness import job_on_own_redis, stored_trajectories

pytestmark = pytest.mark.slow

STEPS = 3
PROMPTS = 2
GROUP = 2


@pytest.fixture(scope="module")
def run(tiny_model_path: str, tmp_path_factory: pytest.TempPathFactory):
    yield from job_on_own_redis(
        tmp_path_factory.mktemp("dynamic-sampling"),
        [
            "name=dynamic-sampling",
            f"model.path={tiny_model_path}",
            "rollout.num_workers=1",
            f"rollout.group_size={GROUP}",
            "rollout.sampling.max_new_tokens=8",
            # Half the tasks reward every reply alike: their groups are flat.
            "env.name=tests.plugin_envs:HALF_FLAT",
            "buffer.trim_acknowledged=false",
            "learner.micro_batch_tokens=128",
            "learner.algorithm.dynamic_sampling.reward_tolerance=0.0",
            # Generous, so a refill that never reaches the controller shows as a failed step.
            "learner.batch_timeout_s=120",
            f"trainer.steps={STEPS}",
            f"trainer.prompts_per_step={PROMPTS}",
            # Synchronous: admission allows one batch per version, so every discarded group
            # must be replaced through the refill or the step starves.
            "trainer.max_staleness=0",
            "trainer.checkpoint_every=1",
            "output.tensorboard=false",
        ],
    )


def test_flat_groups_are_discarded_and_replaced_within_the_step(run) -> None:
    config, result, client = run
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    dropped = [r["filter/dropped_trajectories"] for r in records]
    assert sum(dropped) > 0, "no flat group was drawn"
    for record in records:
        assert record["batch/trajectories"] == PROMPTS * GROUP
        assert record.get("discarded/dynamic_sampling", 0) == record["filter/dropped_trajectories"]
        assert record["discarded/total"] == record["filter/dropped_trajectories"]
        # On-policy all the same: replacements were sampled with the current version.
        assert record["staleness/max"] == 0

    stored = {t.id: t for _, t in stored_trajectories(client, config.stream_name)}
    ledger = read_ledger(result.output_dir / "checkpoints")
    for record, step in zip(records, ledger, strict=True):
        flat = step["discarded"].get("dynamic_sampling", [])
        assert len(flat) == record["filter/dropped_trajectories"]
        flat_groups: dict[str, set[float]] = {}
        for i in flat:
            flat_groups.setdefault(stored[i].group_id, set()).add(stored[i].reward)
        assert all(len(rewards) == 1 for rewards in flat_groups.values()), flat_groups
        trained_groups: dict[str, list[float]] = {}
        for i in step["trajectory_ids"]:
            trained_groups.setdefault(stored[i].group_id, []).append(stored[i].reward)
        assert all(len(set(rewards)) > 1 for rewards in trained_groups.values()), trained_groups
    report = audit_stream(client, config.stream_name, result.output_dir / "checkpoints")
    assert report.ok, "\n".join(report.lines())
