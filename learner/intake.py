"""Rank 0's side of the buffer: whole groups in, exactly-once accounting out.

Every entry the learner reads ends in exactly one state (docs/exactly-once.md): trained by a
step, or discarded with a reason (a duplicate of an episode it trained or holds, too stale,
filtered, from a timeline a resume threw away), both in the ledger, or dead-lettered with a
reason. Entries are acknowledged only after the checkpoint holding their step is durable, so
a crash at any moment re-delivers them and the ledger (truncated to the restored step) says
what was trained. A re-delivered entry is recognised by its entry id (a replay of something
held or committed) and by its trajectory id (a producer's retried push), against everything
the learner holds: the group assembler, the batch being built, uncommitted steps, the ledger.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relayrl.admission import SampleRefill
from relayrl.buffer import BufferEntry, TrajectoryConsumer
from relayrl.faults import fault_point
from relayrl.learner import checkpoint
from relayrl.learner.batching import GroupAssembler
from relayrl.learner.discard import DiscardReason
from relayrl.learner.group_filter import ZeroVarianceFilter
from relayrl.trajectory import Trajectory

log = logging.getLogger(__name__)

# Entries another consumer has held this long without acknowledging are taken over.
ABANDONED_AFTER_MS = 60_000
# A batch whose step failed this many times (an exception or a dead process) is quarantined,
# so one poison entry cannot crash every resume.
MAX_STEP_ATTEMPTS = 3
# In the checkpoint folder: the batch being trained and the failed attempts per entry.
IN_FLIGHT_FILE = "in_flight.json"


class BatchTimeoutError(RuntimeError):
    """No complete batch arrived in time: the rollout side is stalled or dead."""


@dataclass
class StepRecord:
    step: int
    entry_ids: list[str] = field(default_factory=list)  # everything this step acknowledges
    trajectory_ids: list[str] = field(default_factory=list)  # trained on
    discarded: dict[DiscardReason, list[str]] = field(default_factory=dict)  # -> trajectories
    discarded_entry_ids: dict[DiscardReason, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "entry_ids": self.entry_ids,
            "trajectory_ids": self.trajectory_ids,
            "discarded": self.discarded,
            "discarded_entry_ids": self.discarded_entry_ids,
        }


def invalid_for_model(trajectory: Trajectory, vocab_size: int | None) -> str | None:
    """Why the learner cannot train on a well-formed trajectory, or None."""
    if vocab_size is not None and len(trajectory.tokens):
        low, high = int(trajectory.tokens.min()), int(trajectory.tokens.max())
        if low < 0 or high >= vocab_size:
            return f"token ids span [{low}, {high}], outside the vocabulary of {vocab_size}"
    # One that trains no token (a masked void or error episode) stays: its group needs it.
    return None


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
        *,
        root: Path | None = None,
        vocab_size: int | None = None,
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
        self.root = root  # the checkpoint folder: ledger, `latest`, in-flight batch
        self.vocab_size = vocab_size
        self.assembler = GroupAssembler(group_size)
        # Trajectory ids committed steps trained or discarded (a duplicate's id is its
        # original's, which is committed or still held).
        self.seen_ids: set[str] = set()
        self.committed_entries: set[str] = set()
        # Read and not yet committed (assembler, batch, discards, uncommitted steps): entry id
        # -> trajectory id, None for a duplicate (its original holds the trajectory id).
        self._held: dict[str, str | None] = {}
        self._held_trajectories: set[str] = set()
        self.uncommitted: list[StepRecord] = []
        self._discards: list[tuple[BufferEntry, DiscardReason]] = []
        self._failures: dict[str, int] = {}  # entry id -> failed steps it was trained in
        self._broken_groups: set[str] = set()  # groups with a dead-lettered member
        self._started = False
        self.last_entry_id: str | None = None  # stream position, kept in checkpoints

    # ---- start-up ------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        if self.root is not None:
            self._restore_ledger(self.root, checkpoint.committed_step(self.root))
            self._count_failed_attempt(self.root)
        self.consumer.claim_abandoned(ABANDONED_AFTER_MS)

    def restore(self, root: Path, step: int) -> None:
        """Forget steps after the restored checkpoint; their entries are still pending and
        will be delivered again."""
        self.root = root
        self._restore_ledger(root, step)

    def _restore_ledger(self, root: Path, step: int) -> None:
        records = checkpoint.truncate_ledger(root, step)
        self.seen_ids = set()
        for record in records:
            self._remember(record["trajectory_ids"], record["discarded"])
        self.committed_entries = {e for record in records for e in record["entry_ids"]}
        self._held.clear()
        self._held_trajectories.clear()
        self.uncommitted = []
        self._discards = []

    def _count_failed_attempt(self, root: Path) -> None:
        """A batch still marked in flight at start-up is one whose step never finished."""
        path = root / IN_FLIGHT_FILE
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        self._failures = {k: int(v) for k, v in saved["failures"].items()}
        for entry_id in saved["batch"]:
            self._failures[entry_id] = self._failures.get(entry_id, 0) + 1
        if saved["batch"]:
            log.warning("the last step on %d entries never finished", len(saved["batch"]))
        self._save_in_flight([])

    def _save_in_flight(self, batch: list[BufferEntry]) -> None:
        if self.root is None:
            return
        state = {"batch": [e.entry_id for e in batch], "failures": self._failures}
        self.root.mkdir(parents=True, exist_ok=True)
        checkpoint.write_atomically(self.root / IN_FLIGHT_FILE, json.dumps(state))

    # ---- reading -------------------------------------------------------------------------

    def _admit(self, entries: list[BufferEntry]) -> None:
        if entries:
            self.last_entry_id = entries[-1].entry_id
        fresh: list[BufferEntry] = []
        committed: list[str] = []
        broken: set[str] = set()
        quarantined = duplicates = 0
        for entry in entries:
            entry_id, trajectory_id = entry.entry_id, entry.trajectory.id
            if entry_id in self._held:
                continue  # a replay (reconnect, claim) of an entry this learner holds
            if entry_id in self.committed_entries:
                committed.append(entry_id)  # committed by a step whose acks were lost
                continue
            problem = self._quarantine_reason(entry)
            if problem is not None:
                quarantined += self.consumer.dead_letter(entry_id, problem)
                broken.add(entry.trajectory.group_id)
                continue
            if trajectory_id in self.seen_ids or trajectory_id in self._held_trajectories:
                self._held[entry_id] = None
                self._discards.append((entry, DiscardReason.DUPLICATE))
                duplicates += 1
            else:
                self._held[entry_id] = trajectory_id
                self._held_trajectories.add(trajectory_id)
                fresh.append(entry)
        broken |= self.consumer.take_broken_groups()
        self._broken_groups |= broken
        orphans = [e for e in fresh if e.trajectory.group_id in self._broken_groups]
        self.assembler.add(e for e in fresh if e.trajectory.group_id not in self._broken_groups)
        for group_id in broken:
            orphans += self.assembler.remove_group(group_id)
        if orphans:
            self._discard(orphans, DiscardReason.INCOMPLETE_GROUP)
        if committed:
            self.consumer.ack(committed)
        self.consumer.book(duplicates)
        self._notify(quarantined + duplicates + len(committed))

    def _quarantine_reason(self, entry: BufferEntry) -> str | None:
        failures = self._failures.get(entry.entry_id, 0)
        if failures >= MAX_STEP_ATTEMPTS:
            return f"quarantined: in a batch whose training step failed {failures} times"
        return invalid_for_model(entry.trajectory, self.vocab_size)

    def _notify(self, count: int) -> None:
        if count and self.refill is not None:
            self.refill.booked(count)

    def _too_stale(self, group: list[BufferEntry], version: int) -> bool:
        if self.max_staleness is None:
            return False
        stalest = max(int(e.trajectory.staleness(version).max(initial=0)) for e in group)
        return stalest > self.max_staleness

    @staticmethod
    def _from_lost_timeline(group: list[BufferEntry], version: int) -> bool:
        return any(int(e.trajectory.sampled_versions().max(initial=0)) > version for e in group)

    def next_batch(self, version: int) -> list[BufferEntry]:
        """`prompts_per_step` complete groups fresh enough to train policy `version` on."""
        self._start()
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
            if self._from_lost_timeline(group, version):
                self._discard(group, DiscardReason.LOST_TIMELINE)
            elif self._too_stale(group, version):
                self._discard(group, DiscardReason.STALE)
            elif self.group_filter is not None and not self.group_filter.keeps(group):
                self._discard(group, DiscardReason.ZERO_VARIANCE)
            else:
                batch.extend(group)
        self._save_in_flight(batch)
        return batch

    def _discard(self, group: list[BufferEntry], reason: DiscardReason) -> None:
        self._discards.extend((entry, reason) for entry in group)
        self.consumer.book(len(group))
        self._notify(len(group))

    # ---- booking and committing ----------------------------------------------------------

    def oldest_stale_version(self) -> int | None:
        """The oldest policy version a sample discarded as stale since the last step came from:
        a lag just past the bound is a group overtaken in flight, a far older one a worker that
        generated on weights it should have replaced."""
        versions = [
            int(sampled.min())
            for entry, reason in self._discards
            if reason is DiscardReason.STALE and len(sampled := entry.trajectory.sampled_versions())
        ]
        return min(versions, default=None)

    def record_step(self, step: int, trained: list[BufferEntry]) -> dict[DiscardReason, int]:
        """Book a finished step; returns discard counts by reason (for metrics)."""
        record = StepRecord(step)
        for entry in trained:
            record.entry_ids.append(entry.entry_id)
            record.trajectory_ids.append(entry.trajectory.id)
            self._failures.pop(entry.entry_id, None)
        for entry, reason in self._discards:
            record.entry_ids.append(entry.entry_id)
            record.discarded.setdefault(reason, []).append(entry.trajectory.id)
            record.discarded_entry_ids.setdefault(reason, []).append(entry.entry_id)
        self._discards = []
        self.uncommitted.append(record)
        self.consumer.book(len(trained))
        self._notify(len(trained))
        self._save_in_flight([])
        return dict(Counter({reason: len(ids) for reason, ids in record.discarded.items()}))

    def write_ledger(self, root: Path) -> None:
        checkpoint.append_ledger(root, [record.to_json() for record in self.uncommitted])

    def commit(self, folder: Path) -> int:
        """Make the checkpoint in `folder` the one to resume from: ledger, then `latest`, then
        the acks, each durable before the next; returns how many entries were acknowledged."""
        root = folder.parent
        self.write_ledger(root)
        fault_point("after_ledger_before_latest")
        checkpoint.mark_latest(root, folder)
        fault_point("after_latest_before_acks")
        return self.acknowledge()

    def acknowledge(self) -> int:
        """After the checkpoint is marked latest: release the committed entries."""
        ids = [entry_id for record in self.uncommitted for entry_id in record.entry_ids]
        for record in self.uncommitted:
            self._remember(record.trajectory_ids, record.discarded)
        self.committed_entries.update(ids)
        for entry_id in ids:
            self._held_trajectories.discard(self._held.pop(entry_id, None) or "")
        self.uncommitted = []
        return self.consumer.ack(ids, booked=len(ids))

    def _remember(self, trained: list[str], discarded: dict[str, list[str]]) -> None:
        self.seen_ids.update(trained)
        for reason, trajectory_ids in discarded.items():
            if reason != DiscardReason.DUPLICATE:
                self.seen_ids.update(trajectory_ids)
