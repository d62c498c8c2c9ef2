"""Bucket planning shared by every weight path: names in state order, grouped into runs of
at most `bucket_bytes` (one tensor larger than that is a bucket of its own)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from relayrl.weights import TensorMeta


def state_metadata(state: Mapping[str, torch.Tensor]) -> list[TensorMeta]:
    return [TensorMeta(name, t.dtype, tuple(t.shape)) for name, t in state.items()]


def plan_buckets(metadata: Sequence[TensorMeta], bucket_bytes: int) -> list[list[str]]:
    buckets: list[list[str]] = []
    current: list[str] = []
    current_bytes = 0
    for meta in metadata:
        if current and current_bytes + meta.num_bytes > bucket_bytes:
            buckets.append(current)
            current, current_bytes = [], 0
        current.append(meta.name)
        current_bytes += meta.num_bytes
    if current:
        buckets.append(current)
    return buckets


class StateBuckets:
    """A `WeightBuckets` over tensors that exist already (views of live parameters, or
    copies): nothing is gathered, and it can be iterated again (to serve a joining engine)."""

    def __init__(self, state: Mapping[str, torch.Tensor], bucket_bytes: int) -> None:
        self._state = state
        self._metadata = state_metadata(state)
        self._plan = plan_buckets(self._metadata, bucket_bytes)

    def metadata(self) -> list[TensorMeta]:
        return self._metadata

    def __iter__(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        for names in self._plan:
            yield [(name, self._state[name]) for name in names]
