"""Sequence-level advantage estimators: rewards [N] and group ids [N] in, advantages [N] out."""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.learner.algorithms.groups import group_index, group_sum
from relayrl.learner.algorithms.masked import zero_off_mask


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, *, normalize_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO (Shao et al. 2024): (r - group mean) / (group std + eps), std with Bessel's correction.

    A group of one sample is its own mean, so its advantage is 0.
    """
    index, sizes = group_index(group_ids)
    counts = sizes.to(rewards.dtype)
    means = group_sum(rewards, index, len(sizes)) / counts
    centered = rewards - means[index]
    if not normalize_std:
        return centered
    variances = group_sum(centered**2, index, len(sizes)) / (counts - 1).clamp(min=1)
    return centered / (variances.sqrt()[index] + eps)


def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Dr.GRPO (Liu et al. 2025): r - group mean; dividing by the std biases toward easy prompts."""
    return grpo_advantages(rewards, group_ids, normalize_std=False)


def rloo_advantages(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024): r - mean of the other rewards of its group (0 when alone)."""
    index, sizes = group_index(group_ids)
    totals = group_sum(rewards, index, len(sizes))[index]
    counts = sizes[index].to(rewards.dtype)
    others_mean = (totals - rewards) / (counts - 1).clamp(min=1)
    return torch.where(counts > 1, rewards - others_mean, torch.zeros_like(rewards))


def reinforce_pp_advantages(
    rewards: Tensor, group_ids: Tensor, *, group_baseline: bool = False, eps: float = 1e-6
) -> Tensor:
    """REINFORCE++ (Hu 2025): rewards normalized over the batch (population std).

    With `group_baseline` the group mean is subtracted first ("REINFORCE++-baseline").
    """
    centered = dr_grpo_advantages(rewards, group_ids) if group_baseline else rewards
    return (centered - centered.mean()) / (centered.std(unbiased=False) + eps)


def broadcast_to_tokens(sequence_values: Tensor, loss_mask: Tensor) -> Tensor:
    """[N] -> [N, T]: each sequence's value on its policy tokens, 0 elsewhere."""
    return zero_off_mask(sequence_values[:, None].expand_as(loss_mask), loss_mask)


def final_token_rewards(rewards: Tensor, loss_mask: Tensor) -> Tensor:
    """[N] -> [N, T]: each reward on its sequence's last policy token (dropped if it has none)."""
    positions = torch.arange(loss_mask.shape[-1], device=loss_mask.device)
    last = torch.where(loss_mask > 0, positions, -1).max(dim=-1).values
    token_rewards = torch.zeros(loss_mask.shape, dtype=rewards.dtype, device=rewards.device)
    rows = (last >= 0).nonzero().squeeze(-1)
    token_rewards[rows, last[rows]] = rewards[rows]
    return token_rewards
