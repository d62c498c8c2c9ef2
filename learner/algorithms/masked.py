"""Reductions over the tokens a loss mask selects; masked-out entries may hold garbage."""

from __future__ import annotations

import torch
from torch import Tensor


def zero_off_mask(values: Tensor, loss_mask: Tensor) -> Tensor:
    """`values` where the mask is on, 0 elsewhere (not a product: garbage may be inf or NaN)."""
    return torch.where(loss_mask > 0, values, values.new_zeros(()))


def masked_mean(values: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean of `values` over the masked tokens; 0 when there are none."""
    total = (zero_off_mask(values, loss_mask) * loss_mask).sum()
    return total / loss_mask.sum().clamp(min=1)


def masked_max(values: Tensor, loss_mask: Tensor) -> Tensor:
    """Max of `values` over the masked tokens; 0 when there are none."""
    on_mask = loss_mask > 0
    largest = torch.where(on_mask, values, values.new_full((), -torch.inf)).max()
    return torch.where(on_mask.any(), largest, values.new_zeros(()))


def masked_whiten(values: Tensor, loss_mask: Tensor, eps: float) -> Tensor:
    """(values - mean) / (population std + eps) over the masked tokens, 0 off the mask."""
    mean = masked_mean(values, loss_mask)
    variance = masked_mean((values - mean) ** 2, loss_mask)
    return zero_off_mask((values - mean) / (variance.sqrt() + eps), loss_mask)


def scalar_metrics(metrics: dict[str, Tensor]) -> dict[str, float]:
    """0-d tensors to floats with a single device sync."""
    values = torch.stack([value.detach().float() for value in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))
