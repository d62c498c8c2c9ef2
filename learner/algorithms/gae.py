"""GAE (Schulman et al. 2016) over the policy's tokens only.

A multi-turn sequence interleaves policy tokens (mask 1) with observation tokens (mask 0). The
policy's time steps are its own tokens, so each row's policy tokens are packed side by side, the
recursion runs over them, and the results are scattered back.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def gae_advantages(
    token_rewards: Tensor, values: Tensor, loss_mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Advantages and returns [N, T], 0 off the mask; the value after the last policy token is 0.

    token_rewards, values, loss_mask: [N, T]. A reward on an observation token arrives after the
    policy token before it, so it is credited to that token (rewards before any policy token
    are dropped).
    """
    on_policy = loss_mask > 0
    # slot[n, t]: index, among row n's policy tokens, of the last policy token at or before t.
    slot = on_policy.long().cumsum(dim=-1) - 1
    rows = torch.arange(loss_mask.shape[0], device=loss_mask.device)[:, None].expand_as(slot)
    width = int(slot.max()) + 1 if slot.numel() else 0
    packed_shape = (loss_mask.shape[0], width)

    credited = slot >= 0
    packed_rewards = token_rewards.new_zeros(packed_shape).index_put_(
        (rows[credited], slot[credited]), token_rewards[credited], accumulate=True
    )
    policy_index = (rows[on_policy], slot[on_policy])
    packed_values = values.new_zeros(packed_shape).index_put_(policy_index, values[on_policy])

    # Rows shorter than `width` are zero-padded at the end, where the recursion stays at 0.
    packed_advantages = torch.zeros_like(packed_values)
    running = packed_values.new_zeros(packed_shape[0])
    next_value = packed_values.new_zeros(packed_shape[0])
    for step in reversed(range(width)):
        delta = packed_rewards[:, step] + gamma * next_value - packed_values[:, step]
        running = delta + gamma * lam * running
        packed_advantages[:, step] = running
        next_value = packed_values[:, step]

    advantages = torch.zeros_like(values)
    advantages[on_policy] = packed_advantages[policy_index]
    returns = torch.where(on_policy, advantages + values, torch.zeros_like(values))
    return advantages, returns


def discounted_returns(token_rewards: Tensor, loss_mask: Tensor, *, gamma: float) -> Tensor:
    """Sum of gamma^k * reward over later policy tokens: GAE with no critic and lambda 1."""
    no_values = torch.zeros_like(token_rewards)
    return gae_advantages(token_rewards, no_values, loss_mask, gamma=gamma, lam=1.0)[0]
