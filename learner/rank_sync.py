"""Small collectives over the learner ranks; each is a no-op in a single-rank group."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(values: Tensor, op: dist.ReduceOp.RedOpType) -> Tensor:
    """A reduced copy on the input's device; NCCL groups reduce on the GPU, gloo anywhere."""
    result = values.detach().clone()
    if not _distributed():
        return result
    on_gpu = dist.get_backend() == "nccl"
    moved = result.to(torch.device("cuda", torch.cuda.current_device())) if on_gpu else result
    dist.all_reduce(moved, op=op)
    return moved.to(values.device)


def sum_over_ranks(values: Tensor) -> Tensor:
    """Element-wise sum of `values` over ranks (a reduced copy; the input is left alone)."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def max_over_ranks(values: Tensor) -> Tensor:
    return _all_reduce(values, dist.ReduceOp.MAX)


def merge_rows(own_rows: Tensor) -> Tensor:
    """The whole batch's [N, T] tensor from each rank's copy holding only its own rows (zeros
    elsewhere); rows never overlap, so the sum is the merge."""
    return sum_over_ranks(own_rows)


class WeightedMeans:
    """Per-key means weighted by token counts, accumulated over micro-batches, then over ranks.
    Every rank must add the same keys (each runs the same losses on the same number of
    micro-batches), because the reduction is one tensor in key order."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._weight = 0.0

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value * weight
        self._weight += weight

    def reduce(self) -> dict[str, float]:
        keys = sorted(self._sums)
        packed = torch.tensor([*(self._sums[k] for k in keys), self._weight], dtype=torch.float64)
        *sums, weight = sum_over_ranks(packed).tolist()
        return {key: total / max(weight, 1.0) for key, total in zip(keys, sums, strict=True)}
