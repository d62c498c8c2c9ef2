"""The learner's pieces that need no engine: rewards and KL shaping, dynamic sampling in the
intake, where the ratio starts, staleness counts and ZeRO-3 stand-in micro-batches."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from relayrl import metric_keys as keys
from relayrl.algorithm_config import (
    AlgorithmConfig,
    DynamicSamplingConfig,
    OffPolicyConfig,
    OverlongConfig,
)
from relayrl.buffer import BufferEntry
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.learner.batch_metrics import batch_metrics
from relayrl.learner.batching import pad_rows
from relayrl.learner.checkpoint import read_ledger
from relayrl.learner.discard import DiscardReason
from relayrl.learner.group_filter import ZeroVarianceFilter
from relayrl.learner.intake import BatchIntake
from relayrl.learner.micro_batches import MicroBatch, micro_batch_tensors, rank_rows
from relayrl.learner.off_policy import OffPolicyCorrection
from relayrl.learner.rewards import advantage_inputs, shaped_rewards
from relayrl.learner.scoring import PROXIMAL, REFERENCE
from relayrl.learner.staleness import staleness_histogram
from relayrl.trajectory import Trajectory, Turn
from tests.trajectories import trajectory


def traj(
    group: str, reward: float, sampled: int = 3, version: int = 0, traj_id: str | None = None
) -> Trajectory:
    return trajectory(
        group, prompt_len=2, sampled=sampled, version=version, reward=reward, traj_id=traj_id
    )


def entries(*trajectories: Trajectory) -> list[BufferEntry]:
    return [BufferEntry(f"{i}-0", t) for i, t in enumerate(trajectories)]


OVERLONG = OverlongConfig(max_len=10, buffer_len=4, penalty_factor=1.0)


def test_overlong_penalty_shapes_the_reward_by_sampled_tokens() -> None:
    batch = [traj("g", 1.0, sampled=5), traj("g", 1.0, sampled=8), traj("g", 0.0, sampled=12)]
    # Penalty starts after 10 - 4 = 6 tokens: 0, -2/4, -1 (capped).
    assert shaped_rewards(batch, OVERLONG).tolist() == pytest.approx([1.0, 0.5, -1.0])
    assert shaped_rewards(batch, None).tolist() == [1.0, 1.0, 0.0]


def test_dynamic_sampling_judges_the_shaped_rewards() -> None:
    keep = ZeroVarianceFilter(DynamicSamplingConfig(), None, group_size=2)
    assert not keep.keeps(entries(traj("g", 1.0), traj("g", 1.0)))
    assert keep.keeps(entries(traj("g", 1.0), traj("g", 0.0)))
    # Equal rewards, but one response runs into the overlong penalty: the group has signal.
    with_penalty = ZeroVarianceFilter(DynamicSamplingConfig(), OVERLONG, group_size=2)
    assert with_penalty.keeps(entries(traj("g", 1.0, sampled=3), traj("g", 1.0, sampled=9)))
    tolerant = ZeroVarianceFilter(DynamicSamplingConfig(reward_tolerance=0.1), None, group_size=2)
    assert not tolerant.keeps(entries(traj("g", 1.0), traj("g", 0.95)))
    with pytest.raises(ValueError, match="group_size"):
        ZeroVarianceFilter(DynamicSamplingConfig(), None, group_size=1)


def test_intake_drops_flat_groups_refills_and_books_them(redis_server, tmp_path: Path) -> None:
    buffer = RedisStreamBuffer(redis_server.url, "filter:stream", trim_acknowledged=False)
    buffer.ensure_group()
    group_filter = ZeroVarianceFilter(DynamicSamplingConfig(), None, group_size=2)
    intake = BatchIntake(buffer, 2, 1, None, 2.0, read_block_ms=50, group_filter=group_filter)
    buffer.push([traj("flat", 1.0, traj_id="f1"), traj("flat", 1.0, traj_id="f2")])
    buffer.push([traj("good", 1.0, traj_id="g1"), traj("good", 0.0, traj_id="g2")])
    batch = intake.next_batch(version=0)
    assert [e.trajectory.id for e in batch] == ["g1", "g2"]
    assert intake.record_step(1, batch) == {DiscardReason.ZERO_VARIANCE: 2}
    intake.write_ledger(tmp_path)
    assert intake.acknowledge() == 4
    (record,) = read_ledger(tmp_path)
    assert record["trajectory_ids"] == ["g1", "g2"]
    assert record["discarded"] == {DiscardReason.ZERO_VARIANCE: ["f1", "f2"]}


def test_kl_in_the_reward_becomes_per_token_rewards_from_the_proximal_policy() -> None:
    batch = [traj("a", 1.0), traj("a", 0.0), traj("b", 0.5, sampled=2)]
    padded = pad_rows(batch, slice(None), pad_id=0)
    proximal = torch.full(padded.loss_mask.shape, -0.5)
    reference = torch.full(padded.loss_mask.shape, -0.8)
    algorithm = AlgorithmConfig.model_validate(
        {"kl": {"coef": 0.1, "estimator": "k1", "placement": "reward"}, "overlong": OVERLONG}
    )
    inputs = advantage_inputs(batch, padded, {PROXIMAL: proximal, REFERENCE: reference}, algorithm)
    # k1 = log pi - log pi_ref = 0.3 per policy token, reward -0.1 * 0.3 there and 0 elsewhere.
    expected = -0.1 * 0.3 * padded.loss_mask
    torch.testing.assert_close(inputs.token_rewards, expected)
    assert inputs.group_ids.tolist() == [0, 0, 1]
    assert inputs.values is None
    # In the loss, the KL leaves the rewards alone.
    in_loss = AlgorithmConfig.model_validate({"kl": {"coef": 0.1}})
    assert advantage_inputs(batch, padded, {REFERENCE: reference}, in_loss).token_rewards is None


def test_ratio_starts_from_behaviour_proximal_or_current_policy() -> None:
    batch = pad_rows([traj("a", 1.0), traj("a", 0.0)], slice(None), pad_id=0)
    current = torch.full(batch.loss_mask.shape, -1.0 + math.log(3.0), requires_grad=True)
    proximal = torch.full(batch.loss_mask.shape, -1.0 + math.log(1.5))

    old, weights = OffPolicyCorrection(None).ratio_inputs(current, batch, None)
    assert old is batch.old_logprobs and weights is None

    decoupled = OffPolicyCorrection(OffPolicyConfig(decoupled=True))
    assert decoupled.needs_proximal
    old, weights = decoupled.ratio_inputs(current, batch, proximal)
    assert old is proximal
    torch.testing.assert_close(weights, 1.5 * batch.loss_mask)

    truncated = OffPolicyCorrection(
        OffPolicyConfig.model_validate({"importance_sampling": {"cap": 2.0}})
    )
    assert not truncated.needs_proximal
    old, weights = truncated.ratio_inputs(current, batch, None)
    # Not decoupled: the ratio starts at the current policy, the weight is pi / mu capped.
    assert not old.requires_grad and torch.equal(old, current.detach())
    torch.testing.assert_close(weights, 2.0 * batch.loss_mask)
    assert truncated.metrics() == pytest.approx(
        {
            keys.OFF_POLICY_IS_WEIGHT_MEAN: 3.0,
            keys.OFF_POLICY_IS_WEIGHT_MAX: 3.0,
            keys.OFF_POLICY_IS_WEIGHT_MIN: 3.0,
            keys.off_policy_fraction("truncated"): 1.0,
        }
    )
    # The statistics start again each step.
    assert truncated.metrics() == {}


def test_staleness_histogram_counts_sampled_tokens_per_lag() -> None:
    batch = [traj("a", 1.0, sampled=3, version=4), traj("a", 0.0, sampled=2, version=2)]
    assert staleness_histogram(batch, version=4) == {
        keys.staleness_hist(0): 3,
        keys.staleness_hist(2): 2,
    }


def test_batch_metrics_say_how_episodes_ended_and_which_trained_nothing() -> None:
    two_turns = replace(traj("a", 1.0, sampled=4, version=3), finish_reason="max_turns")
    two_turns.turns = [Turn(2, 4, tool="python"), Turn(5, 6)]
    truncated = replace(traj("a", 0.0, sampled=2, version=2), finish_reason="length")
    void = traj("b", 0.0, sampled=3, version=3)
    void.loss_mask[:] = 0
    void.finish_reason = "void_turn"

    metrics = batch_metrics([two_turns, truncated, void], version=4)

    ends = {k.removeprefix("episode/end_"): v for k, v in metrics.items() if "/end_" in k}
    assert ends == pytest.approx({"max_turns": 1 / 3, "length": 1 / 3, "void_turn": 1 / 3})
    assert metrics[keys.RESPONSE_TRUNCATED_FRACTION] == pytest.approx(1 / 3)
    assert metrics[keys.EPISODE_MASKED_FRACTION] == pytest.approx(1 / 3)
    assert metrics[keys.EPISODE_TURNS_MEAN] == pytest.approx(4 / 3)
    assert metrics[keys.BATCH_SAMPLED_TOKENS] == 6
    assert (metrics[keys.STALENESS_MAX], metrics[keys.BATCH_MIN_TOKEN_VERSION]) == (2, 2)
    assert metrics[keys.staleness_hist(1)] == 4 and metrics[keys.staleness_hist(2)] == 2
    assert metrics[keys.REWARD_MEAN] == pytest.approx(1 / 3)


def test_batch_metrics_of_a_batch_that_trains_nothing() -> None:
    void = traj("b", 0.0)
    void.loss_mask[:] = 0
    metrics = batch_metrics([void, void], version=5)
    assert metrics[keys.EPISODE_MASKED_FRACTION] == 1.0
    assert (metrics[keys.STALENESS_MAX], metrics[keys.BATCH_MIN_TOKEN_VERSION]) == (0, 5)
    assert not any(key.startswith("staleness/hist_") for key in metrics)


def test_ranks_split_rows_and_stand_ins_train_nothing() -> None:
    assert [rank_rows(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]
    # More ranks than rows: the last rank has none and runs stand-ins only.
    assert rank_rows(5, 3, 4) == slice(5, 5)
    batch = [traj("a", 1.0), traj("a", 0.0)]
    real = micro_batch_tensors(batch, MicroBatch(slice(0, 1)), pad_id=0)
    stand_in = micro_batch_tensors(batch, MicroBatch(slice(0, 1), stand_in=True), pad_id=0)
    assert torch.equal(real.input_ids, stand_in.input_ids)
    assert real.loss_mask.sum() == 3 and stand_in.loss_mask.sum() == 0
