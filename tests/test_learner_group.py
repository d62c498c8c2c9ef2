"""The learner group on real Ray, Redis and DeepSpeed, fed hand-made batches through the buffer:
ZeRO-3 over two ranks with a KL reference, decoupled PPO, importance weights and dynamic
sampling, checked down to the direction the first step moves each response."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from relayrl.algorithm_config import AlgorithmConfig
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.cluster.weights.object_store import (
    ObjectStorePublisher,
    ObjectStoreSubscriber,
    WeightStore,
)
from relayrl.config import JobConfig
from relayrl.learner.checkpoint import read_ledger
from relayrl.trajectory import Trajectory
from tests.learner_data import TrajectoryMaker, learner_config

pytestmark = pytest.mark.slow

SHIFT = 2.0  # behaviour log-probs this much below the model's: importance weight e^2


RAY_CPUS = 4  # the conftest's ray_instance: two learner ranks and their actors


@pytest.fixture(scope="module")
def cluster(ray_instance: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield redis.url
    redis.stop()


@pytest.fixture(scope="module")
def maker(tiny_model_path: str) -> TrajectoryMaker:
    return TrajectoryMaker(tiny_model_path)


def start(
    config: JobConfig, model_path: str, url: str, stream: str
) -> tuple[LearnerGroup, RedisStreamBuffer, Any]:
    buffer = RedisStreamBuffer(url, stream, trim_acknowledged=False)
    buffer.ensure_group()
    store = WeightStore.remote()
    publisher = ObjectStorePublisher(store, timeout_s=300)
    group = LearnerGroup(
        config, model_path, buffer.with_consumer("learner-0"), publisher, CountingRefill(), 600
    )
    return group, buffer, ObjectStoreSubscriber(store, timeout_s=300)


class CountingRefill:
    """No rollout fleet here: the test feeds the buffer itself, so a refill only counts."""

    def __init__(self) -> None:
        self.booked_entries = 0

    def booked(self, count: int) -> None:
        self.booked_entries += count


def sampled(groups: list[list[Trajectory]]) -> int:
    return sum(t.num_sampled_tokens for group in groups for t in group)


@pytest.fixture(scope="module")
def zero3_run(cluster: str, maker: TrajectoryMaker, tiny_model_path: str, tmp_path_factory):
    algorithm = AlgorithmConfig.model_validate(
        {
            "kl": {"coef": 0.1, "estimator": "k3", "placement": "loss"},
            "dynamic_sampling": {},
            "off_policy": {
                "decoupled": True,
                "importance_sampling": {"level": "token", "mode": "truncate", "cap": 2.0},
            },
        }
    )
    config = learner_config(
        str(tmp_path_factory.mktemp("zero3")),
        {
            "learner.num_ranks": 2,
            "learner.zero_stage": 3,
            "trainer.prompts_per_step": 2,
            "learner.warmup_steps": 2,
            # Rank 0's two long rows need two micro-batches, rank 1's short ones one.
            "learner.micro_batch_tokens": 64,
            "learner.algorithm": algorithm,
        },
    )
    group, buffer, weights = start(config, tiny_model_path, cluster, "zero3:stream")
    flat = maker.group([1.0, 1.0], 8, 8)
    batches = [
        [maker.group([1.0, 0.0], 16, 24, logprob_shift=-SHIFT), maker.group([0.0, 1.0], 6, 10)],
        [maker.group([1.0, 0.0], 10, 12, version=1), maker.group([0.5, 0.0], 10, 14, version=0)],
        [maker.group([0.0, 1.0], 10, 12, version=2), maker.group([1.0, 0.0], 8, 12, version=2)],
    ]
    metrics = []
    for step, groups in enumerate(batches):
        buffer.push([t for g in ([flat] if step == 0 else []) + groups for t in g])
        metrics.append(group.train_step())
        if step == 0:
            _, after_first_step = weights.fetch(newer_than=0)
    folder = Path(group.save_checkpoint())
    published = weights.fetch(newer_than=len(batches) - 1)
    stats = buffer.stats()
    group.kill()
    return {
        "metrics": metrics,
        "batches": batches,
        "flat": flat,
        "folder": folder,
        "published": published,
        "after_first_step": after_first_step,
        "stats": stats,
    }


def test_zero3_two_ranks_take_real_steps(zero3_run) -> None:
    metrics = zero3_run["metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["batch/trajectories"] == 4 for m in metrics)
    assert all(math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0 for m in metrics)
    # Two warm-up steps: half the rate, then the full rate.
    assert [m["lr"] for m in metrics] == pytest.approx([5e-4, 1e-3, 1e-3])


def test_flat_group_is_dropped_counted_and_booked(zero3_run) -> None:
    first = zero3_run["metrics"][0]
    assert first["filter/dropped_trajectories"] == 2
    assert first["discarded/dynamic_sampling"] == 2
    ledger = read_ledger(zero3_run["folder"].parent)
    assert [r["step"] for r in ledger] == [1, 2, 3]
    assert ledger[0]["discarded"] == {"dynamic_sampling": [t.id for t in zero3_run["flat"]]}
    trained = [t.id for g in zero3_run["batches"][0] for t in g]
    assert ledger[0]["trajectory_ids"] == trained
    assert len(ledger[0]["entry_ids"]) == 6
    # Dropped entries are acknowledged with the checkpoint like trained ones.
    assert zero3_run["stats"].pending == 0


def test_importance_weights_use_the_proximal_policy_under_zero3(zero3_run) -> None:
    first = zero3_run["metrics"][0]
    shifted, exact = zero3_run["batches"][0]
    # Before the first update the proximal policy is the model the behaviour came from.
    assert first["off_policy/is_weight_max"] == pytest.approx(math.exp(SHIFT), rel=1e-3)
    assert first["off_policy/is_weight_min"] == pytest.approx(1.0, abs=1e-3)
    assert first["off_policy/truncated_fraction"] == pytest.approx(
        sampled([shifted]) / sampled([shifted, exact])
    )
    assert first["off_policy/is_weight_mean"] == pytest.approx(
        (sampled([shifted]) * math.exp(SHIFT) + sampled([exact])) / sampled([shifted, exact]),
        rel=1e-3,
    )


def test_kl_to_the_reference_starts_at_zero_and_grows(zero3_run) -> None:
    kl = [m["loss/kl"] for m in zero3_run["metrics"]]
    assert abs(kl[0]) < 1e-5
    assert kl[2] > 1e-7


def test_staleness_histogram_counts_tokens_per_version_lag(zero3_run) -> None:
    metrics, batches = zero3_run["metrics"], zero3_run["batches"]
    hist = [{k: v for k, v in m.items() if k.startswith("staleness/hist_")} for m in metrics]
    assert hist[0] == {"staleness/hist_0": sampled(batches[0])}
    fresh, stale = batches[1]
    assert hist[1] == {"staleness/hist_0": sampled([fresh]), "staleness/hist_1": sampled([stale])}


def test_zero3_checkpoint_loads_with_transformers(zero3_run, tiny_model_path: str) -> None:
    trained = AutoModelForCausalLM.from_pretrained(zero3_run["folder"] / "hf")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    changed = [
        name
        for name, tensor in trained.state_dict().items()
        if not torch.equal(tensor, initial.state_dict()[name])
    ]
    assert changed
    info, published = zero3_run["published"]
    assert info.version == 3
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(tensor, published[name], rtol=0, atol=0)


def test_first_step_raises_better_responses_and_lowers_worse_ones(
    zero3_run, maker: TrajectoryMaker, tiny_model_path: str
) -> None:
    updated = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    updated.load_state_dict(zero3_run["after_first_step"])
    for trajectories in zero3_run["batches"][0]:
        best = max(t.reward for t in trajectories)
        for trajectory in trajectories:
            mask = trajectory.loss_mask > 0
            before = maker.logprobs(trajectory.tokens)[mask].sum()
            after = maker.logprobs(trajectory.tokens, updated)[mask].sum()
            # GRPO: the better sample of each group has a positive advantage, the other negative.
            sign = 1.0 if trajectory.reward == best else -1.0
            assert sign * (after - before) > 0, (trajectory.reward, before, after)
