"""Shared-prompt packing: the samples of one prompt run the prompt through the model once.

A causal LM's hidden state at a position depends only on the tokens up to it, so sequences
that start with the same tokens have the same hidden states there. A micro-batch lays each
prompt's samples out as one row, [shared prefix | rest of sample 1 | rest of sample 2 | ...],
with positions restarting after the prefix for every sample and an attention mask that lets
each sample see the prefix and itself only. The hidden states are then gathered back into the
padded [B, T] layout every loss reads, so the scores (and their gradients, which the gather sums
over the samples) are those of the padded batch; only the prefix's repeated work is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from relayrl.trajectory import Trajectory


@dataclass(frozen=True)
class SharedPrefixRows:
    """The packed rows of one micro-batch and where each padded position's hidden state is."""

    input_ids: torch.Tensor  # [R, L] int64
    position_ids: torch.Tensor  # [R, L] int64
    segments: torch.Tensor  # [R, L] int64: 0 the prefix, i the rest of sample i, -1 padding
    gather: torch.Tensor  # [B, T] int64: flat index into the [R * L] packed positions

    def to(self, device: torch.device) -> SharedPrefixRows:
        return SharedPrefixRows(
            self.input_ids.to(device),
            self.position_ids.to(device),
            self.segments.to(device),
            self.gather.to(device),
        )

    def attention_mask(self) -> torch.Tensor:
        """[R, 1, L, L] bool, True where a query may attend: causal, and within the prefix or
        its own sample; a padding position sees only itself (no empty softmax row)."""
        length = self.segments.shape[1]
        positions = torch.arange(length, device=self.segments.device)
        causal = positions[None, :, None] >= positions[None, None, :]
        query, key = self.segments[:, :, None], self.segments[:, None, :]
        visible = causal & (key >= 0) & ((key == 0) | (key == query))
        itself = torch.eye(length, dtype=torch.bool, device=self.segments.device)[None]
        return (visible | (itself & (query < 0)))[:, None]


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class _Cluster:
    """Sequences with one prompt: their common prefix and the length of their packed row."""

    def __init__(self, index: int, tokens: np.ndarray) -> None:
        self.members = [index]
        self.prefix = tokens
        self.total = len(tokens)

    def add(self, index: int, tokens: np.ndarray) -> None:
        self.members.append(index)
        self.prefix = self.prefix[: _common_prefix(self.prefix, tokens)]
        self.total += len(tokens)

    def packed_length(self) -> int:
        return self.total - (len(self.members) - 1) * len(self.prefix)


class PackedSize:
    """Grows one sequence at a time; the padded size (rows x longest row) of the packed rows."""

    def __init__(self) -> None:
        self.clusters: dict[bytes | int, _Cluster] = {}

    def add(self, index: int, trajectory: Trajectory) -> None:
        tokens = np.asarray(trajectory.tokens, dtype=np.int64)
        # No prompt, nothing to share: a row of its own.
        key = tokens[: trajectory.prompt_len].tobytes() if trajectory.prompt_len else index
        if key in self.clusters:
            self.clusters[key].add(index, tokens)
        else:
            self.clusters[key] = _Cluster(index, tokens)

    def tokens(self) -> int:
        lengths = [c.packed_length() for c in self.clusters.values()]
        return len(lengths) * max(lengths, default=0)

    def shares_a_prefix(self) -> bool:
        return any(len(c.members) > 1 and len(c.prefix) for c in self.clusters.values())


def prompt_clusters(trajectories: list[Trajectory]) -> list[list[int]]:
    """Indices of the sequences grouped by prompt, each group in the order given."""
    size = PackedSize()
    for index, trajectory in enumerate(trajectories):
        size.add(index, trajectory)
    return [c.members for c in size.clusters.values()]


def plan_packed_micro_batches(trajectories: list[Trajectory], token_budget: int) -> list[slice]:
    """Consecutive runs of sequences whose packed rows fit the budget (rows x longest row);
    a run that does not fit even alone gets a micro-batch of its own."""
    slices: list[slice] = []
    start = 0
    size = PackedSize()
    for index, trajectory in enumerate(trajectories):
        size.add(index, trajectory)
        if index > start and size.tokens() > token_budget:
            slices.append(slice(start, index))
            start, size = index, PackedSize()
            size.add(index, trajectory)
    if trajectories:
        slices.append(slice(start, len(trajectories)))
    return slices


def pack_shared_prefixes(chosen: list[Trajectory], length: int) -> SharedPrefixRows | None:
    """The packed rows of `chosen` (padded to `length` in the [B, T] layout), or None when no
    two of them share a prefix (the padded batch is then the cheaper layout)."""
    size = PackedSize()
    for index, trajectory in enumerate(chosen):
        size.add(index, trajectory)
    if not size.shares_a_prefix():
        return None
    clusters = list(size.clusters.values())
    width = max(c.packed_length() for c in clusters)
    rows = (len(clusters), width)
    input_ids = torch.zeros(rows, dtype=torch.long)
    position_ids = torch.zeros(rows, dtype=torch.long)
    segments = torch.full(rows, -1, dtype=torch.long)
    gather = torch.zeros((len(chosen), length), dtype=torch.long)
    for row, cluster in enumerate(clusters):
        shared = len(cluster.prefix)
        input_ids[row, :shared] = torch.from_numpy(cluster.prefix)
        position_ids[row, :shared] = torch.arange(shared)
        segments[row, :shared] = 0
        start = shared
        for number, index in enumerate(cluster.members, start=1):
            tokens = np.asarray(chosen[index].tokens, dtype=np.int64)
            rest = len(tokens) - shared
            stop = start + rest
            input_ids[row, start:stop] = torch.from_numpy(tokens[shared:])
            position_ids[row, start:stop] = torch.arange(shared, len(tokens))
            segments[row, start:stop] = number
            where = torch.cat([torch.arange(shared), torch.arange(start, stop)])
            gather[index, : len(tokens)] = row * width + where
            start = stop
    return SharedPrefixRows(input_ids, position_ids, segments, gather)
