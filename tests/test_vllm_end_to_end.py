"""The whole job with rollout.engine: vllm on the CPU build of vLLM."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from relayrl.cluster.job import run_job
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_job_trains_with_vllm_workers_on_fresh_weights(tiny_model_path, tmp_path) -> None:
    config = load_config(
        None,
        [
            "name=vllm-e2e",
            f"model.path={tiny_model_path}",
            "rollout.engine=vllm",
            "rollout.num_workers=1",
            "rollout.cpus_per_worker=1",
            "rollout.group_size=4",
            "rollout.sampling.max_new_tokens=12",
            "env.name=tests.plugin_envs:DIGITS",
            "learner.lr=1e-3",
            "learner.micro_batch_tokens=256",
            "trainer.steps=3",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=0",
            f"output.dir={tmp_path}/run",
            "output.tensorboard=false",
        ],
    )
    result = run_job(config)
    records = read_metrics(result.metrics)
    assert [r["step"] for r in records] == [1, 2, 3]
    # Synchronous: step s trains only on tokens vLLM sampled with policy version s - 1, so
    # the engine really loaded every published version in place.
    assert [r["batch/min_token_version"] for r in records] == [0, 1, 2]
    assert all(r["staleness/max"] == 0 for r in records)
    assert result.worker_reports[0]["weight_syncs"] >= 2
