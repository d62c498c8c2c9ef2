"""This rank's micro-batches, padded so every rank makes the same number of passes.

ZeRO-3 gathers each layer's parameters collectively in every forward and scatters gradients in
every backward, so a rank that runs fewer passes than another would hang the group. A rank with
fewer micro-batches runs stand-ins: a real row with its loss mask zeroed, which trains nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from relayrl.learner.batching import PaddedBatch, pad_rows
from relayrl.learner.rank_sync import max_over_ranks
from relayrl.learner.shared_prefix import (
    PackedSize,
    pack_shared_prefixes,
    plan_packed_micro_batches,
    prompt_clusters,
)
from relayrl.trajectory import Trajectory


@dataclass(frozen=True)
class MicroBatch:
    rows: slice  # rows of the whole batch
    stand_in: bool = False  # runs only to keep the ranks' collectives in step


def rank_rows(count: int, rank: int, world_size: int) -> slice:
    """The contiguous share of `count` sequences that `rank` trains on."""
    per_rank = math.ceil(count / world_size)
    return slice(min(rank * per_rank, count), min((rank + 1) * per_rank, count))


def packing_order(trajectories: list[Trajectory], world_size: int) -> list[Trajectory]:
    """The batch reordered so micro-batches pack well: the samples of a prompt side by side
    (they share one packed row, learner/shared_prefix.py), prompts with the longest packed row
    first, each dealt whole to the rank share (rank_rows) with the most room left, split only
    where a share is full. A step's losses and gradients are sums over sequences, so the order
    changes neither."""
    count = len(trajectories)
    room = [len(range(count)[rank_rows(count, r, world_size)]) for r in range(world_size)]
    shares: list[list[Trajectory]] = [[] for _ in range(world_size)]
    clusters = [
        sorted((trajectories[i] for i in members), key=lambda t: len(t.tokens), reverse=True)
        for members in prompt_clusters(trajectories)
    ]
    clusters.sort(key=packed_length, reverse=True)
    for cluster in clusters:
        while cluster:
            rank = max(range(world_size), key=lambda r: room[r] - len(shares[r]))
            free = room[rank] - len(shares[rank])
            shares[rank].extend(cluster[:free])
            cluster = cluster[free:]
    return [t for share in shares for t in share]


def packed_length(cluster: list[Trajectory]) -> int:
    size = PackedSize()
    for index, trajectory in enumerate(cluster):
        size.add(index, trajectory)
    return size.tokens()


def rank_micro_batches(
    trajectories: list[Trajectory], rank: int, world_size: int, token_budget: int
) -> list[MicroBatch]:
    """Every rank calls this together: its own micro-batches, then stand-ins up to the most
    any rank has."""
    mine = rank_rows(len(trajectories), rank, world_size)
    lengths = [len(t.tokens) for t in trajectories[mine]]
    plans = [
        MicroBatch(slice(mine.start + p.start, mine.start + p.stop))
        for p in plan_packed_micro_batches(trajectories[mine], token_budget)
    ]
    most = int(max_over_ranks(torch.tensor([len(plans)])).item())
    # A rank without rows borrows the batch's first one; it is masked out either way.
    stand_in_row = slice(mine.start, mine.start + 1) if lengths else slice(0, 1)
    return plans + [MicroBatch(stand_in_row, stand_in=True)] * (most - len(plans))


def micro_batch_tensors(
    trajectories: list[Trajectory], micro: MicroBatch, pad_id: int
) -> PaddedBatch:
    batch = pad_rows(trajectories, micro.rows, pad_id)
    if micro.stand_in:
        return replace(batch, loss_mask=torch.zeros_like(batch.loss_mask))
    packing = pack_shared_prefixes(trajectories[micro.rows], batch.input_ids.shape[1])
    return replace(batch, packing=packing)
