"""From buffer entries to training tensors: whole groups in, padded micro-batches out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from relayrl.buffer import BufferEntry
from relayrl.learner.shared_prefix import SharedPrefixRows
from relayrl.trajectory import NO_VERSION, Trajectory


class GroupAssembler:
    """Holds entries until each prompt's group is complete; hands out batches of whole groups
    in arrival order, so group baselines always see every sample of their prompt."""

    def __init__(self, group_size: int) -> None:
        self.group_size = group_size
        self._groups: OrderedDict[str, list[BufferEntry]] = OrderedDict()

    def add(self, entries: Iterable[BufferEntry]) -> None:
        for entry in entries:
            group = self._groups.setdefault(entry.trajectory.group_id, [])
            if any(e.trajectory.id == entry.trajectory.id for e in group):
                continue
            group.append(entry)

    def complete_groups(self) -> int:
        return sum(len(g) >= self.group_size for g in self._groups.values())

    def remove_group(self, group_id: str) -> list[BufferEntry]:
        """Take out a group that can never complete (a member was dead-lettered)."""
        return self._groups.pop(group_id, [])

    def held(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def take(self, num_groups: int) -> list[BufferEntry] | None:
        """`num_groups` complete groups, or None while fewer are ready."""
        ready = [gid for gid, g in self._groups.items() if len(g) >= self.group_size]
        if len(ready) < num_groups:
            return None
        batch: list[BufferEntry] = []
        for group_id in ready[:num_groups]:
            batch.extend(self._groups.pop(group_id))
        return batch


@dataclass(frozen=True)
class PaddedBatch:
    """Right-padded token tensors; every [B, T] tensor is aligned to `input_ids`."""

    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64
    loss_mask: torch.Tensor  # [B, T] float32
    old_logprobs: torch.Tensor  # [B, T] float32
    versions: torch.Tensor  # [B, T] int64, NO_VERSION off the loss mask
    rows: slice  # which sequences of the whole batch these are
    # The same sequences with each shared prompt computed once (learner/shared_prefix.py).
    packing: SharedPrefixRows | None = None

    def to(self, device: torch.device) -> PaddedBatch:
        """The same batch on the engine's device (a no-op on CPU)."""
        return PaddedBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            old_logprobs=self.old_logprobs.to(device),
            versions=self.versions.to(device),
            rows=self.rows,
            packing=self.packing.to(device) if self.packing is not None else None,
        )


def pad_rows(trajectories: list[Trajectory], rows: slice, pad_id: int) -> PaddedBatch:
    chosen = trajectories[rows]
    length = max(len(t.tokens) for t in chosen)
    size = (len(chosen), length)
    input_ids = torch.full(size, pad_id, dtype=torch.long)
    attention = torch.zeros(size, dtype=torch.long)
    loss_mask = torch.zeros(size, dtype=torch.float32)
    old_logprobs = torch.zeros(size, dtype=torch.float32)
    versions = torch.full(size, NO_VERSION, dtype=torch.long)
    for i, traj in enumerate(chosen):
        n = len(traj.tokens)
        input_ids[i, :n] = torch.from_numpy(traj.tokens.astype("int64"))
        attention[i, :n] = 1
        loss_mask[i, :n] = torch.from_numpy(traj.loss_mask.astype("float32"))
        old_logprobs[i, :n] = torch.from_numpy(traj.logprobs)
        versions[i, :n] = torch.from_numpy(traj.versions.astype("int64"))
    return PaddedBatch(input_ids, attention, loss_mask, old_logprobs, versions, rows)


def plan_micro_batches(lengths: list[int], token_budget: int) -> list[slice]:
    """Consecutive runs of sequences whose padded size (rows x longest) fits the budget; a
    sequence longer than the budget gets a micro-batch of its own."""
    slices: list[slice] = []
    start = 0
    longest = 0
    for index, length in enumerate(lengths):
        candidate = max(longest, length)
        if index > start and candidate * (index - start + 1) > token_budget:
            slices.append(slice(start, index))
            start, candidate = index, length
        longest = candidate
    if lengths:
        slices.append(slice(start, len(lengths)))
    return slices
