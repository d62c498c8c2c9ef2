"""`rollout.max_worker_restarts`: a worker that keeps dying is replaced until the budget is
spent, then the job ends with the worker and its cause named."""

from __future__ import annotations

import logging

import pytest

from relayrl.cluster.job import run_job
from relayrl.cluster.rollout_fleet import FleetDeadError
from relayrl.config_loader import load_config

pytestmark = pytest.mark.slow


def test_the_job_ends_naming_the_last_worker_and_its_cause(
    tiny_model_path, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(
        None,
        [
            "name=restart-budget",
            f"model.path={tiny_model_path}",
            "rollout.num_workers=1",
            "rollout.group_size=2",
            "rollout.max_worker_restarts=1",
            # Every group fails to set up, so each worker ends after its run of failures.
            "env.name=tests.failing_envs:NEVER_BUILDS",
            "learner.micro_batch_tokens=128",
            "trainer.steps=2",
            "trainer.prompts_per_step=1",
            f"output.dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            "output.plot=false",
        ],
    )
    with caplog.at_level(logging.WARNING), pytest.raises(FleetDeadError) as failed:
        run_job(config)
    message = str(failed.value)
    # One restart allowed: worker-0 was replaced by worker-1, whose death ended the job.
    assert "worker-1" in message and "restart budget is spent" in message, message
    assert "this environment cannot be built" in message, message
    replaced = [r.getMessage() for r in caplog.records if "replaced by worker-1" in r.getMessage()]
    assert len(replaced) == 1 and replaced[0].startswith("worker-0 died"), replaced
    assert "worker-2" not in caplog.text
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip(), "a step was trained"
