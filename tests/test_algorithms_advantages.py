"""Advantage estimators against plain numpy/python references on hand-made batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relayrl.algorithm_config import (
    DrGRPOAdvantageConfig,
    GAEAdvantageConfig,
    GRPOAdvantageConfig,
    ReinforcePlusPlusAdvantageConfig,
    RLOOAdvantageConfig,
)
from relayrl.learner.algorithms import AdvantageInputs, build_advantage_estimator
from relayrl.learner.algorithms.advantages import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    final_token_rewards,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from relayrl.learner.algorithms.gae import discounted_returns, gae_advantages

# Unequal, non-contiguous groups: 7 has three samples, 3 has three, 9 is alone, 4 has two.
GROUP_IDS = [7, 3, 7, 3, 3, 9, 7, 4, 4]
REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 2.0, 0.3, 0.3]

# Multi-turn masks with holes (observation tokens), one row without policy tokens.
MASK = [
    [0, 1, 1, 0, 0, 1, 1, 0],
    [0, 0, 1, 1, 1, 1, 0, 0],
    [0, 1, 0, 1, 0, 1, 0, 1],
    [0, 0, 0, 0, 0, 0, 0, 0],
]


def groups_of(group_ids: list[int]) -> dict[int, list[int]]:
    members: dict[int, list[int]] = {}
    for index, group in enumerate(group_ids):
        members.setdefault(group, []).append(index)
    return members


def reference_grpo(rewards: list[float], group_ids: list[int], normalize_std: bool) -> np.ndarray:
    out = np.zeros(len(rewards))
    for members in groups_of(group_ids).values():
        values = np.array([rewards[i] for i in members])
        std = values.std(ddof=1) if len(values) > 1 else 0.0
        for i in members:
            centered = rewards[i] - values.mean()
            out[i] = centered / (std + 1e-6) if normalize_std else centered
    return out


def reference_rloo(rewards: list[float], group_ids: list[int]) -> np.ndarray:
    out = np.zeros(len(rewards))
    for members in groups_of(group_ids).values():
        for i in members:
            others = [rewards[j] for j in members if j != i]
            out[i] = rewards[i] - np.mean(others) if others else 0.0
    return out


def tensors() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(REWARDS, dtype=torch.float64), torch.tensor(GROUP_IDS)


def test_grpo_normalizes_within_unequal_groups() -> None:
    rewards, group_ids = tensors()
    expected = reference_grpo(REWARDS, GROUP_IDS, normalize_std=True)
    np.testing.assert_allclose(grpo_advantages(rewards, group_ids).numpy(), expected, atol=1e-9)
    # The lone sample of group 9 and the tied group 4 get 0, not NaN.
    assert grpo_advantages(rewards, group_ids)[[5, 7, 8]].tolist() == [0.0, 0.0, 0.0]


def test_dr_grpo_only_subtracts_the_group_mean() -> None:
    rewards, group_ids = tensors()
    expected = reference_grpo(REWARDS, GROUP_IDS, normalize_std=False)
    np.testing.assert_allclose(dr_grpo_advantages(rewards, group_ids).numpy(), expected, atol=1e-12)


def test_rloo_leaves_each_sample_out_of_its_baseline() -> None:
    rewards, group_ids = tensors()
    expected = reference_rloo(REWARDS, GROUP_IDS)
    np.testing.assert_allclose(rloo_advantages(rewards, group_ids).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("group_baseline", [False, True])
def test_reinforce_pp_normalizes_over_the_batch(group_baseline: bool) -> None:
    rewards, group_ids = tensors()
    base = reference_grpo(REWARDS, GROUP_IDS, False) if group_baseline else np.array(REWARDS)
    expected = (base - base.mean()) / (base.std() + 1e-6)
    actual = reinforce_pp_advantages(rewards, group_ids, group_baseline=group_baseline)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-9)


def test_broadcast_and_final_token_rewards_follow_the_mask() -> None:
    mask = torch.tensor(MASK, dtype=torch.float64)
    values = torch.tensor([1.0, -2.0, 3.0, 4.0], dtype=torch.float64)
    np.testing.assert_array_equal(
        broadcast_to_tokens(values, mask).numpy(), np.array(MASK) * values.numpy()[:, None]
    )
    expected = np.zeros((4, 8))
    expected[0, 6], expected[1, 5], expected[2, 7] = 1.0, -2.0, 3.0  # row 3 has no token
    np.testing.assert_array_equal(final_token_rewards(values, mask).numpy(), expected)


def reference_gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Textbook GAE over each row's policy tokens; a reward on an observation token is added
    to the policy token before it."""
    advantages = np.zeros_like(rewards)
    for row in range(len(mask)):
        steps = [t for t in range(mask.shape[1]) if mask[row, t]]
        step_rewards = {t: 0.0 for t in steps}
        for t in range(mask.shape[1]):
            earlier = [s for s in steps if s <= t]
            if earlier:
                step_rewards[earlier[-1]] += rewards[row, t]
        running = 0.0
        for k in reversed(range(len(steps))):
            t = steps[k]
            next_value = values[row, steps[k + 1]] if k + 1 < len(steps) else 0.0
            delta = step_rewards[t] + gamma * next_value - values[row, t]
            running = delta + gamma * lam * running
            advantages[row, t] = running
    return advantages, (advantages + values) * mask


def gae_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    generator = np.random.default_rng(0)
    mask = np.array(MASK, dtype=np.float64)
    values = generator.normal(size=mask.shape)
    rewards = np.zeros(mask.shape)
    rewards[0, 6], rewards[1, 5], rewards[2, 7] = 1.0, -1.0, 0.5  # final rewards
    rewards[0, 3] = 0.25  # a per-turn reward on an observation token: credited to t=2
    rewards[2, 0] = 9.0  # before any policy token: not attributable, dropped
    rewards[1, 3] = -0.1  # a shaping reward on a policy token
    return rewards, values, mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.9, 0.8), (0.99, 0.0)])
def test_gae_runs_over_policy_tokens_only(gamma: float, lam: float) -> None:
    rewards, values, mask = gae_batch()
    expected_advantages, expected_returns = reference_gae(rewards, values, mask, gamma, lam)
    advantages, returns = gae_advantages(
        torch.from_numpy(rewards),
        torch.from_numpy(values),
        torch.from_numpy(mask),
        gamma=gamma,
        lam=lam,
    )
    np.testing.assert_allclose(advantages.numpy(), expected_advantages, atol=1e-12)
    np.testing.assert_allclose(returns.numpy(), expected_returns, atol=1e-12)
    assert (advantages.numpy()[mask == 0] == 0).all()


def test_discounted_returns_sum_later_policy_rewards() -> None:
    rewards, _, mask = gae_batch()
    expected, _ = reference_gae(rewards, np.zeros_like(rewards), mask, 0.5, 1.0)
    actual = discounted_returns(torch.from_numpy(rewards), torch.from_numpy(mask), gamma=0.5)
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-12)


def estimator_inputs(**extra: torch.Tensor) -> AdvantageInputs:
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)
    return AdvantageInputs(
        rewards=rewards,
        group_ids=torch.tensor([0, 0, 1, 1]),
        loss_mask=torch.tensor(MASK, dtype=torch.float64),
        **extra,
    )


@pytest.mark.parametrize(
    ("config", "reference"),
    [
        (GRPOAdvantageConfig(), lambda r, g: reference_grpo(r, g, True)),
        (DrGRPOAdvantageConfig(), lambda r, g: reference_grpo(r, g, False)),
        (RLOOAdvantageConfig(), reference_rloo),
    ],
)
def test_sequence_estimators_add_token_rewards_and_broadcast(config, reference) -> None:
    token_rewards = torch.zeros(4, 8, dtype=torch.float64)
    token_rewards[0, 1], token_rewards[2, 3] = -0.3, -0.2  # e.g. -beta * KL
    inputs = estimator_inputs(token_rewards=token_rewards)
    output = build_advantage_estimator(config)(inputs)
    sequence = reference([0.7, 0.0, 0.3, 2.0], [0, 0, 1, 1])
    np.testing.assert_allclose(
        output.advantages.numpy(), sequence[:, None] * np.array(MASK), atol=1e-9
    )
    assert output.returns is None


def test_token_level_reinforce_pp_whitens_kl_shaped_returns() -> None:
    token_rewards = torch.zeros(4, 8, dtype=torch.float64)
    token_rewards[0, 1], token_rewards[1, 3] = -0.3, -0.2
    config = ReinforcePlusPlusAdvantageConfig(token_level_returns=True, gamma=0.9)
    output = build_advantage_estimator(config)(estimator_inputs(token_rewards=token_rewards))
    mask = np.array(MASK, dtype=np.float64)
    rewards = token_rewards.numpy().copy()
    rewards[0, 6] += 1.0
    rewards[2, 7] += 0.5  # row 1's reward 0.0 and row 3 (no tokens) add nothing
    returns, _ = reference_gae(rewards, np.zeros_like(rewards), mask, 0.9, 1.0)
    on = mask > 0
    expected = np.where(on, (returns - returns[on].mean()) / (returns[on].std() + 1e-6), 0.0)
    np.testing.assert_allclose(output.advantages.numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("normalize", [False, True])
def test_gae_estimator_returns_critic_targets(normalize: bool) -> None:
    _, values, mask = gae_batch()
    config = GAEAdvantageConfig(gamma=0.9, lam=0.8, normalize=normalize)
    output = build_advantage_estimator(config)(estimator_inputs(values=torch.from_numpy(values)))
    rewards = np.zeros_like(values)
    rewards[0, 6], rewards[2, 7] = 1.0, 0.5
    advantages, returns = reference_gae(rewards, values, mask, 0.9, 0.8)
    if normalize:
        on = mask > 0
        advantages = (advantages - advantages[on].mean()) / (advantages[on].std() + 1e-6)
        advantages = np.where(on, advantages, 0.0)
    np.testing.assert_allclose(output.advantages.numpy(), advantages, atol=1e-9)
    assert output.returns is not None
    np.testing.assert_allclose(output.returns.numpy(), returns, atol=1e-12)


def test_gae_estimator_without_values_names_them() -> None:
    estimator = build_advantage_estimator(GAEAdvantageConfig())
    with pytest.raises(ValueError, match="values"):
        estimator(estimator_inputs())
