"""Rank 0's side of the buffer: whole groups in, exactly-once accounting out.

Every entry the learner reads ends in exactly one ledger record: trained by a step, or
discarded with a reason (a duplicate of an episode already trained, or too stale). Entries are
acknowledged only after the checkpoint holding their step is durable, so a crash at any moment
re-delivers them and the ledger (truncated to the restored step) says what was trained.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayrl.admission import SampleRefill
from relayrl.buffer import BufferEntry, TrajectoryConsumer
from relayrl.learner import checkpoint
from relayrl.learner.batching import GroupAssembler
from relayrl.learner.group_filter import DROPPED_REASON, ZeroVarianceFilter

# Entries another consumer has held this long without acknowledging are taken over.
ABANDONED_AFTER_MS = 60_000


class BatchTimeoutError(RuntimeError):
    """No complete batch arrived in time: the rollout side is stalled or dead."""


@dataclass
class StepRecord:
    step: int
    entry_ids: list[str] = field(default_factory=list)  # everything this step acknowledges
    trajectory_ids: list[str] = field(default_factory=list)  # trained on
    discarded: dict[str, list[str]] = field(default_factory=dict)  # reason -> trajectory ids

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "entry_ids": self.entry_ids,
            "trajectory_ids": self.trajectory_ids,
            "discarded": self.discarded,
        }


class BatchIntake:
    def __init__(
        self,
        consumer: TrajectoryConsumer,
        group_size: int,
        prompts_per_step: int,
        max_staleness: int | None,
        batch_timeout_s: float,
        read_block_ms: int,
        group_filter: ZeroVarianceFilter | None = None,
        refill: SampleRefill | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.group_size = group_size
        self.prompts_per_step = prompts_per_step
        self.max_staleness = max_staleness
        self.batch_timeout_s = batch_timeout_s
        self.read_block_ms = read_block_ms
        self.group_filter = group_filter
        self.refill = refill
        # Called before each blocking read, while the weights are not changing.
        self.on_idle = on_idle
        self.assembler = GroupAssembler(group_size)
        self.seen_ids: set[str] = set()  # trained or discarded, committed or not
        self.uncommitted: list[StepRecord] = []
        self._discards: list[tuple[BufferEntry, str]] = []
        self._claimed = False
        self.last_entry_id: str | None = None  # stream position, kept in checkpoints

    def _admit(self, entries: list[BufferEntry]) -> None:
        if entries:
            self.last_entry_id = entries[-1].entry_id
        fresh = []
        for entry in entries:
            if entry.trajectory.id in self.seen_ids:
                self._discards.append((entry, "duplicate"))
            else:
                fresh.append(entry)
        self.assembler.add(fresh)

    def _too_stale(self, group: list[BufferEntry], version: int) -> bool:
        if self.max_staleness is None:
            return False
        oldest = min(int(e.trajectory.sampled_versions().min(initial=version)) for e in group)
        return version - oldest > self.max_staleness

    def next_batch(self, version: int) -> list[BufferEntry]:
        """`prompts_per_step` complete groups fresh enough to train policy `version` on."""
        if not self._claimed:
            self.consumer.claim_abandoned(ABANDONED_AFTER_MS)
            self._claimed = True
        deadline = time.monotonic() + self.batch_timeout_s
        batch: list[BufferEntry] = []
        while len(batch) < self.prompts_per_step * self.group_size:
            group = self.assembler.take(1)
            if group is None:
                if time.monotonic() > deadline:
                    raise BatchTimeoutError(
                        f"no complete batch after {self.batch_timeout_s:.0f}s: "
                        f"{self.assembler.held()} trajectories held, "
                        f"{self.assembler.complete_groups()} complete groups of {self.group_size}, "
                        f"{len(self._discards)} discarded since the last step"
                    )
                if self.on_idle is not None:
                    self.on_idle()
                self._admit(
                    self.consumer.read(self.prompts_per_step * self.group_size, self.read_block_ms)
                )
                continue
            if self._too_stale(group, version):
                self._drop(group, "stale")
            elif self.group_filter is not None and not self.group_filter.keeps(group):
                self._drop(group, DROPPED_REASON)
            else:
                batch.extend(group)
        return batch

    def _drop(self, group: list[BufferEntry], reason: str) -> None:
        self._discards.extend((entry, reason) for entry in group)
        if self.refill is not None:
            self.refill.discard(len(group))

    def record_step(self, step: int, trained: list[BufferEntry]) -> dict[str, int]:
        """Book a finished step; returns discard counts by reason (for metrics and refill)."""
        record = StepRecord(step)
        for entry in trained:
            record.entry_ids.append(entry.entry_id)
            record.trajectory_ids.append(entry.trajectory.id)
        for entry, reason in self._discards:
            record.entry_ids.append(entry.entry_id)
            record.discarded.setdefault(reason, []).append(entry.trajectory.id)
        self._discards = []
        self.seen_ids.update(record.trajectory_ids)
        for ids in record.discarded.values():
            self.seen_ids.update(ids)
        self.uncommitted.append(record)
        return dict(Counter({reason: len(ids) for reason, ids in record.discarded.items()}))

    def write_ledger(self, root: Path) -> None:
        checkpoint.append_ledger(root, [record.to_json() for record in self.uncommitted])

    def acknowledge(self) -> int:
        """After the checkpoint is marked latest: release the committed entries."""
        ids = [entry_id for record in self.uncommitted for entry_id in record.entry_ids]
        self.uncommitted = []
        return self.consumer.ack(ids)

    def restore(self, root: Path, step: int) -> None:
        """Forget steps after the restored checkpoint; their entries are still pending and
        will be delivered again."""
        records = checkpoint.truncate_ledger(root, step)
        self.seen_ids = {
            trajectory_id
            for record in records
            for ids in (record["trajectory_ids"], *record["discarded"].values())
            for trajectory_id in ids
        }
