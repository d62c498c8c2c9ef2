"""The whole job with rollout.engine: vllm on the CPU build of vLLM: a turn switches weights
mid-sample only under weight_update interrupt. (Synchronous vLLM training on fresh weights is
asserted on the multi-turn job of test_agent_loop_end_to_end.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from relayrl.cluster.job import run_job
from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.metrics import read_metrics
from tests.job_harness import (
    assert_discarded_only_as_stale,
    job_on_own_redis,
    stored_trajectories,
    turn_versions,
)

pytestmark = pytest.mark.slow


def vllm_overrides(model_path: str, *overrides: str) -> list[str]:
    return [
        "name=vllm-e2e",
        f"model.path={model_path}",
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
        "buffer.trim_acknowledged=false",
        "output.tensorboard=false",
        *overrides,
    ]


def vllm_job(model_path: str, out: Path, *overrides: str) -> JobConfig:
    return load_config(None, [*vllm_overrides(model_path, *overrides), f"output.dir={out}"])


@pytest.mark.parametrize("mode", ["interrupt", "finish"])
def test_a_turn_switches_version_mid_generation_only_under_interrupt(
    mode, tiny_model_path, tmp_path
) -> None:
    overrides = vllm_overrides(
        tiny_model_path,
        f"name=vllm-{mode}",
        "trainer.max_staleness=1",
        f"rollout.weight_update={mode}",
        # Long samples make generating slower than a learner step, so every publish lands
        # while vLLM is mid-sample.
        "rollout.sampling.max_new_tokens=800",
        "learner.micro_batch_tokens=1024",
    )
    job = job_on_own_redis(tmp_path, overrides)
    config, result, client = next(job)
    try:
        records = read_metrics(result.metrics)
        assert [r["step"] for r in records] == [1, 2, 3]
        # vLLM runs every admitted group at once, and 800-token samples finish out of order.
        assert_discarded_only_as_stale(records)
        per_turn = turn_versions([t for _, t in stored_trajectories(client, config.stream_name)])
        switched = [versions for versions in per_turn if len(set(versions)) > 1]
        if mode == "interrupt":
            # vLLM paused its running requests, loaded the version and went on with them.
            assert switched, f"no stored turn spans a load: {[set(v) for v in per_turn]}"
        else:
            assert switched == []
        assert result.worker_reports[0]["weight_syncs"] >= 2
    finally:
        job.close()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 3, reason="a learner GPU and two engine GPUs")
def test_nccl_push_reaches_engines_that_join_after_the_first_publish(tiny_model_path, tmp_path):
    config = vllm_job(
        tiny_model_path,
        tmp_path / "run",
        "rollout.num_workers=2",
        "rollout.gpus_per_worker=1",
        "rollout.weight_update=interrupt",
        "rollout.weight_transport=nccl",
        "rollout.vllm.gpu_memory_utilization=0.3",
        "rollout.vllm.weight_sync_timeout_s=120",
        "learner.gpus_per_rank=1",
        "trainer.max_staleness=0",
        "trainer.steps=4",
    )
    result = run_job(config)
    records = read_metrics(result.metrics)
    # Synchronous, so every step's tokens came from the version just pushed over NCCL.
    assert [r["batch/min_token_version"] for r in records] == [0, 1, 2, 3]
    assert all(report["weight_syncs"] >= 3 for report in result.worker_reports)
