from __future__ import annotations

from pathlib import Path

import pytest

from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.learner.checkpoint import read_ledger
from relayrl.learner.intake import BatchIntake, BatchTimeoutError
from relayrl.trajectory import Trajectory
from tests.trajectories import trajectory


def traj(group: str, version: int, traj_id: str | None = None) -> Trajectory:
    return trajectory(group, version=version, reward=float(version), traj_id=traj_id)


def make_intake(url: str, max_staleness: int | None = 1, timeout: float = 2.0):
    buffer = RedisStreamBuffer(url, "intake:stream", trim_acknowledged=False)
    buffer.ensure_group()
    intake = BatchIntake(buffer, 2, 1, max_staleness, timeout, read_block_ms=50)
    return buffer, intake


def test_duplicates_and_stale_groups_are_discarded_and_booked(redis_server, tmp_path: Path):
    buffer, intake = make_intake(redis_server.url)
    first = [traj("a", 3, "a1"), traj("a", 3, "a2")]
    buffer.push(first)
    batch = intake.next_batch(version=3)
    assert [e.trajectory.id for e in batch] == ["a1", "a2"]
    assert intake.record_step(1, batch) == {}

    # A producer retry re-sends group a; group b is too stale for version 5 (k = 1).
    buffer.push(first)
    buffer.push([traj("b", 3, "b1"), traj("b", 3, "b2")])
    buffer.push([traj("c", 4, "c1"), traj("c", 4, "c2")])
    batch = intake.next_batch(version=5)
    assert [e.trajectory.id for e in batch] == ["c1", "c2"]
    assert intake.oldest_stale_version() == 3
    assert intake.record_step(2, batch) == {"duplicate": 2, "stale": 2}
    assert intake.oldest_stale_version() is None

    intake.write_ledger(tmp_path)
    assert intake.acknowledge() == 8
    ledger = read_ledger(tmp_path)
    assert ledger[1]["trajectory_ids"] == ["c1", "c2"]
    assert ledger[1]["discarded"] == {"duplicate": ["a1", "a2"], "stale": ["b1", "b2"]}
    assert buffer.stats().pending == 0


def test_restore_truncates_the_ledger_and_rereads_uncommitted_entries(redis_server, tmp_path):
    buffer, intake = make_intake(redis_server.url, max_staleness=None)
    buffer.push([traj("a", 0, "a1"), traj("a", 0, "a2")])
    buffer.push([traj("b", 0, "b1"), traj("b", 0, "b2")])
    intake.record_step(1, intake.next_batch(0))
    intake.write_ledger(tmp_path)
    intake.acknowledge()
    intake.record_step(2, intake.next_batch(1))
    intake.write_ledger(tmp_path)  # step 2 reached the ledger, but its checkpoint never did

    _, restarted = make_intake(redis_server.url, max_staleness=None)
    restarted.restore(tmp_path, step=1)
    assert [r["step"] for r in read_ledger(tmp_path)] == [1]
    again = restarted.next_batch(1)
    assert [e.trajectory.id for e in again] == ["b1", "b2"]


def test_timeout_names_what_is_missing(redis_server) -> None:
    buffer, intake = make_intake(redis_server.url, timeout=0.3)
    buffer.push([traj("a", 0)])
    with pytest.raises(BatchTimeoutError, match="1 trajectories held, 0 complete groups of 2"):
        intake.next_batch(0)
