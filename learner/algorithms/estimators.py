"""Advantage estimators behind one call: AdvantageInputs in, per-token advantages out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from relayrl.learner.algorithms.advantages import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    final_token_rewards,
)
from relayrl.learner.algorithms.gae import discounted_returns, gae_advantages
from relayrl.learner.algorithms.masked import masked_whiten
from relayrl.learner.algorithms.types import AdvantageInputs, AdvantageOutput

SequenceAdvantages = Callable[[Tensor, Tensor], Tensor]


def _token_rewards(inputs: AdvantageInputs, sequence_rewards: Tensor) -> Tensor:
    """[N, T]: the sequence reward on the last policy token plus any per-token rewards."""
    token_rewards = final_token_rewards(sequence_rewards, inputs.loss_mask)
    if inputs.token_rewards is not None:
        token_rewards = token_rewards + inputs.token_rewards
    return token_rewards


class SequenceEstimator:
    """A sequence-level estimator ([N] rewards -> [N]) spread over each sequence's tokens."""

    def __init__(self, estimate: SequenceAdvantages) -> None:
        self.estimate = estimate

    @torch.no_grad()
    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        rewards = inputs.rewards
        if inputs.token_rewards is not None:
            rewards = rewards + inputs.token_rewards.sum(dim=-1)
        advantages = self.estimate(rewards, inputs.group_ids)
        return AdvantageOutput(advantages=broadcast_to_tokens(advantages, inputs.loss_mask))


class TokenReinforcePlusPlus:
    """REINFORCE++ (Hu 2025) with per-token returns, whitened over the batch's policy tokens."""

    def __init__(self, *, gamma: float, group_baseline: bool, eps: float) -> None:
        self.gamma = gamma
        self.group_baseline = group_baseline
        self.eps = eps

    @torch.no_grad()
    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        rewards = inputs.rewards
        if self.group_baseline:
            rewards = dr_grpo_advantages(rewards, inputs.group_ids)
        token_rewards = _token_rewards(inputs, rewards)
        returns = discounted_returns(token_rewards, inputs.loss_mask, gamma=self.gamma)
        return AdvantageOutput(advantages=masked_whiten(returns, inputs.loss_mask, self.eps))


class GAEEstimator:
    """GAE (Schulman et al. 2016) from critic values; also returns the critic's targets."""

    def __init__(self, *, gamma: float, lam: float, normalize: bool, eps: float) -> None:
        self.gamma = gamma
        self.lam = lam
        self.normalize = normalize
        self.eps = eps

    @torch.no_grad()
    def __call__(self, inputs: AdvantageInputs) -> AdvantageOutput:
        if inputs.values is None:
            raise ValueError("GAE needs AdvantageInputs.values from the critic")
        advantages, returns = gae_advantages(
            _token_rewards(inputs, inputs.rewards),
            inputs.values,
            inputs.loss_mask,
            gamma=self.gamma,
            lam=self.lam,
        )
        if self.normalize:
            advantages = masked_whiten(advantages, inputs.loss_mask, self.eps)
        return AdvantageOutput(advantages=advantages, returns=returns)
