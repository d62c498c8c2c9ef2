"""Per-group reductions over samples that share a prompt (`group_ids` need not be contiguous)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_index(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's group as an index 0..G-1 ([N] int64), and each group's size ([G])."""
    _, index, sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return index, sizes


def group_sum(values: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """Sum of `values` [N] within each group: [G]."""
    return values.new_zeros(num_groups).index_add_(0, index, values)


def group_reduce(values: Tensor, index: Tensor, num_groups: int, reduce: str) -> Tensor:
    """`amax` or `amin` of `values` [N] within each group: [G]."""
    start = values.new_zeros(num_groups)
    return start.scatter_reduce_(0, index, values, reduce=reduce, include_self=False)
