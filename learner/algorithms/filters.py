"""DAPO dynamic sampling (Yu et al. 2025): keep only groups whose rewards differ."""

from __future__ import annotations

import torch
from torch import Tensor

from relayrl.learner.algorithms.groups import group_index, group_reduce


@torch.no_grad()
def dynamic_sampling_keep_mask(
    rewards: Tensor, group_ids: Tensor, *, reward_tolerance: float = 0.0
) -> Tensor:
    """[N] bool: False for every sample of a group whose rewards span <= reward_tolerance.

    Such a group has zero group-relative advantage everywhere, so it only dilutes the batch;
    the learner discards it (`DiscardReason.ZERO_VARIANCE`) and reads more samples to refill
    the batch. A group of one is discarded.
    """
    index, sizes = group_index(group_ids)
    highest = group_reduce(rewards, index, len(sizes), "amax")
    lowest = group_reduce(rewards, index, len(sizes), "amin")
    return (highest - lowest)[index] > reward_tolerance
