"""`rollout.weight_update` in a whole job on the transformers engine: under `interrupt` a
version published while a sample generates is loaded mid-turn, so a stored turn carries two
versions; under `finish` every turn ends on the weights it started with."""

from __future__ import annotations

import pytest

from relayrl.metrics import read_metrics
from tests.job_harness import (
    assert_nothing_discarded,
    job_on_own_redis,
    stored_trajectories,
    turn_versions,
)

pytestmark = pytest.mark.slow


def job_overrides(model_path: str, mode: str) -> list[str]:
    return [
        f"name=update-{mode}",
        f"model.path={model_path}",
        "rollout.num_workers=1",
        "rollout.group_size=2",
        # Long samples make generating slower than a learner step: every publish lands while
        # the worker is mid-sample, under either mode.
        "rollout.sampling.max_new_tokens=800",
        f"rollout.weight_update={mode}",
        "env.name=tests.plugin_envs:DIGITS",
        "buffer.trim_acknowledged=false",
        "learner.micro_batch_tokens=1024",
        "trainer.steps=3",
        "trainer.prompts_per_step=1",
        "trainer.max_staleness=1",
        "output.tensorboard=false",
    ]


@pytest.mark.parametrize("mode", ["interrupt", "finish"])
def test_a_turn_switches_version_only_under_interrupt(mode, tiny_model_path, tmp_path) -> None:
    job = job_on_own_redis(tmp_path, job_overrides(tiny_model_path, mode))
    config, result, client = next(job)
    try:
        records = read_metrics(result.metrics)
        assert [r["step"] for r in records] == [1, 2, 3]
        assert_nothing_discarded(records)
        stored = [t for _, t in stored_trajectories(client, config.stream_name)]
        per_turn = turn_versions(stored)
        switched = [versions for versions in per_turn if len(set(versions)) > 1]
        if mode == "interrupt":
            assert switched, f"no stored turn spans a load: {[set(v) for v in per_turn]}"
            # The engine held one version per step and loaded the next in place.
            assert all(len(set(versions)) == 2 for versions in switched)
        else:
            assert switched == []
            assert len({versions[0] for versions in per_turn}) > 1, "never loaded a version"
    finally:
        job.close()
