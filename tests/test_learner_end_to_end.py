"""PPO with a critic and GRPO with a KL to the reference, each trained end to end: real Ray,
Redis, rollout workers and DeepSpeed, the tiny model and an environment whose rewards vary."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.cluster.job import JobResult, run_job
from relayrl.config_loader import load_config
from relayrl.learner.value_model import CHECKPOINT_FOLDER
from relayrl.metrics import read_metrics

pytestmark = pytest.mark.slow

STEPS = 2
# The conftest's ray_instance: both jobs reuse it instead of each starting a Ray.
RAY_CPUS = 4


def train(model_path: str, out: Path, name: str, algorithm: list[str]) -> JobResult:
    config = load_config(
        None,
        [
            f"name={name}",
            f"model.path={model_path}",
            "rollout.num_workers=1",
            "rollout.group_size=4",
            "rollout.sampling.max_new_tokens=8",
            "env.name=tests.plugin_envs:DIGITS",
            "learner.lr=1e-3",
            "learner.micro_batch_tokens=128",
            f"trainer.steps={STEPS}",
            "trainer.prompts_per_step=2",
            "trainer.max_staleness=1",
            f"output.dir={out}",
            "output.tensorboard=false",
            "output.plot=false",
            *[f"learner.algorithm.{assignment}" for assignment in algorithm],
        ],
    )
    return run_job(config)


def weights_changed(checkpoint: Path, model_path: str) -> bool:
    trained = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    initial = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    return any(not torch.equal(tensor, initial[name]) for name, tensor in trained.items())


@pytest.fixture(scope="module")
def ppo_run(ray_instance, tiny_model_path: str, tmp_path_factory) -> JobResult:
    out = tmp_path_factory.mktemp("ppo") / "run"
    return train(tiny_model_path, out, "ppo-critic", ["advantage.name=gae", "critic.lr=1e-3"])


@pytest.fixture(scope="module")
def kl_run(ray_instance, tiny_model_path: str, tmp_path_factory) -> JobResult:
    out = tmp_path_factory.mktemp("grpo-kl") / "run"
    return train(tiny_model_path, out, "grpo-kl", ["kl.coef=0.05", "kl.estimator=k2"])


def test_ppo_trains_the_policy_and_the_critic(ppo_run: JobResult, tiny_model_path: str) -> None:
    records = read_metrics(ppo_run.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        assert math.isfinite(record["loss/total"]) and record["grad_norm"] > 0
        assert math.isfinite(record["critic/value_mse"]) and record["critic/grad_norm"] > 0
        assert 0.0 <= record["critic/value_clip_fraction"] <= 1.0
    assert ppo_run.checkpoint is not None
    assert weights_changed(ppo_run.checkpoint, tiny_model_path)
    # The critic's engine and optimizer state are saved next to the policy's, for resuming.
    assert any((ppo_run.checkpoint.parent / CHECKPOINT_FOLDER).iterdir())


def test_grpo_pays_a_kl_that_starts_at_zero(kl_run: JobResult, tiny_model_path: str) -> None:
    records = read_metrics(kl_run.metrics)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    kl = [r["loss/kl"] for r in records]
    # Step 1 trains the initial weights, which are the reference's.
    assert abs(kl[0]) < 1e-6 and kl[-1] > 0
    assert all(math.isfinite(r["loss/total"]) for r in records)
    assert kl_run.checkpoint is not None
    assert weights_changed(kl_run.checkpoint, tiny_model_path)
