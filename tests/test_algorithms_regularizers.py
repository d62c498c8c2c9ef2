"""KL estimators, the KL reward penalty, dynamic sampling and the overlong penalty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from relayrl.learner.algorithms import (
    dynamic_sampling_keep_mask,
    kl_divergence,
    kl_penalty_rewards,
    overlong_penalty,
)

LOGPROBS = [[-1.0, -0.2, -3.0], [-0.5, -2.5, -0.1]]
REF_LOGPROBS = [[-1.3, -0.2, -1.0], [-0.1, -2.0, -4.0]]


def reference_kl(estimator: str) -> np.ndarray:
    log_r = np.array(REF_LOGPROBS) - np.array(LOGPROBS)
    ratio = np.exp(log_r)
    return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": ratio - 1 - log_r}[estimator]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimators_match_schulman(estimator: str) -> None:
    actual = kl_divergence(
        torch.tensor(LOGPROBS, dtype=torch.float64),
        torch.tensor(REF_LOGPROBS, dtype=torch.float64),
        estimator,
    )
    np.testing.assert_allclose(actual.numpy(), reference_kl(estimator), atol=1e-12)


def test_k3_is_unbiased_and_non_negative() -> None:
    generator = torch.Generator().manual_seed(0)
    policy = torch.log_softmax(torch.randn(8, generator=generator, dtype=torch.float64), -1)
    reference = torch.log_softmax(torch.randn(8, generator=generator, dtype=torch.float64), -1)
    exact = (policy.exp() * (policy - reference)).sum()
    # Expectation under the policy of the per-token estimate equals the exact KL.
    for estimator in ("k1", "k3"):
        expected = (policy.exp() * kl_divergence(policy, reference, estimator)).sum()
        assert expected.item() == pytest.approx(exact.item(), rel=1e-12)
    assert (kl_divergence(policy, reference, "k3") >= 0).all()


def test_kl_penalty_rewards_are_negative_coef_times_kl_on_the_mask() -> None:
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    logprobs = torch.tensor(LOGPROBS, dtype=torch.float64, requires_grad=True)
    penalty = kl_penalty_rewards(
        logprobs, torch.tensor(REF_LOGPROBS, dtype=torch.float64), mask, coef=0.05, estimator="k1"
    )
    np.testing.assert_allclose(
        penalty.numpy(), -0.05 * reference_kl("k1") * mask.numpy(), atol=1e-12
    )
    assert not penalty.requires_grad


def test_dynamic_sampling_drops_groups_with_equal_rewards() -> None:
    group_ids = torch.tensor([5, 5, 2, 2, 2, 8, 1, 1])
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.7, 0.50, 0.52])
    keep = dynamic_sampling_keep_mask(rewards, group_ids)
    # group 5 all equal, group 8 alone: dropped; groups 2 and 1 differ: kept.
    assert keep.tolist() == [False, False, True, True, True, False, True, True]
    tolerant = dynamic_sampling_keep_mask(rewards, group_ids, reward_tolerance=0.05)
    assert tolerant.tolist() == [False, False, True, True, True, False, False, False]


def test_overlong_penalty_is_linear_in_the_buffer() -> None:
    lengths = torch.tensor([10, 80, 90, 95, 100, 130])
    penalty = overlong_penalty(lengths, max_len=100, buffer_len=20, penalty_factor=0.5)
    expected = [0.0, 0.0, -0.25, -0.375, -0.5, -0.5]
    assert penalty.tolist() == pytest.approx(expected)
    assert math.isclose(
        overlong_penalty(torch.tensor([81]), max_len=100, buffer_len=20).item(), -0.05, rel_tol=1e-6
    )
