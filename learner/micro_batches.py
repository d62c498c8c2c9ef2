"""This rank's micro-batches, padded so every rank makes the same number of passes.

ZeRO-3 gathers each layer's parameters collectively in every forward and scatters gradients in
every backward, so a rank that runs fewer passes than another would hang the group. A rank with
fewer micro-batches runs stand-ins: a real row with its loss mask zeroed, which trains nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from relayrl.learner.batching import PaddedBatch, pad_rows, plan_micro_batches
from relayrl.learner.rank_sync import max_over_ranks
from relayrl.trajectory import Trajectory


@dataclass(frozen=True)
class MicroBatch:
    rows: slice  # rows of the whole batch
    stand_in: bool = False  # runs only to keep the ranks' collectives in step


def rank_rows(count: int, rank: int, world_size: int) -> slice:
    """The contiguous share of `count` sequences that `rank` trains on."""
    per_rank = math.ceil(count / world_size)
    return slice(min(rank * per_rank, count), min((rank + 1) * per_rank, count))


def length_order(trajectories: list[Trajectory], world_size: int) -> list[Trajectory]:
    """The batch reordered so micro-batches carry little padding: longest first, dealt to the
    ranks' shares (rank_rows) in turn, so each share is sorted and the shares stay even. A
    step's losses and gradients are sums over sequences, so the order changes neither."""
    count = len(trajectories)
    room = [len(range(count)[rank_rows(count, r, world_size)]) for r in range(world_size)]
    shares: list[list[Trajectory]] = [[] for _ in range(world_size)]
    longest_first = sorted(trajectories, key=lambda t: len(t.tokens), reverse=True)
    rank = 0
    for trajectory in longest_first:
        while len(shares[rank]) == room[rank]:
            rank = (rank + 1) % world_size
        shares[rank].append(trajectory)
        rank = (rank + 1) % world_size
    return [t for share in shares for t in share]


def rank_micro_batches(
    trajectories: list[Trajectory], rank: int, world_size: int, token_budget: int
) -> list[MicroBatch]:
    """Every rank calls this together: its own micro-batches, then stand-ins up to the most
    any rank has."""
    mine = rank_rows(len(trajectories), rank, world_size)
    lengths = [len(t.tokens) for t in trajectories[mine]]
    plans = [
        MicroBatch(slice(mine.start + p.start, mine.start + p.stop))
        for p in plan_micro_batches(lengths, token_budget)
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
    return batch
