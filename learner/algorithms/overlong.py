"""DAPO soft overlong punishment (Yu et al. 2025)."""

from __future__ import annotations

from torch import Tensor


def overlong_penalty(
    response_lengths: Tensor, *, max_len: int, buffer_len: int, penalty_factor: float = 1.0
) -> Tensor:
    """[N] reward to add: 0 up to max_len - buffer_len tokens, then falling linearly to
    -penalty_factor at max_len, and -penalty_factor beyond."""
    start = max_len - buffer_len
    excess = (response_lengths.float() - start).clamp(min=0.0) / buffer_len
    return -penalty_factor * excess.clamp(max=1.0)
