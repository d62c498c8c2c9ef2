from __future__ import annotations

from relayrl.cluster.controller import AdmissionState
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.trajectory import Trajectory
from tests.trajectories import trajectory


def test_synchronous_mode_admits_one_batch_until_the_learner_books_it() -> None:
    state = AdmissionState(batch_size=8, max_staleness=0)
    assert state.capacity() == 8
    state.admit("w0", 4)
    state.admit("w1", 4)
    assert state.capacity() == 0
    # Pushed groups are in the stream (the backlog) before their slots come back.
    state.backlog = 8
    state.finish("w0", 4)
    state.finish("w1", 4)
    assert state.capacity() == 0  # nothing more until the learner has booked them
    state.backlog = 0
    state.version = 1
    assert state.capacity() == 8


def test_nothing_is_admitted_before_a_version_is_published() -> None:
    state = AdmissionState(batch_size=4, max_staleness=1, version=None)
    assert state.capacity() == 0
    state.version = 3
    assert state.capacity() == 8


def test_staleness_k_lets_generation_run_k_versions_ahead() -> None:
    state = AdmissionState(batch_size=4, max_staleness=2)
    assert state.capacity() == 12
    state.backlog = 12
    assert state.capacity() == 0
    state.backlog = 8  # the learner trained one batch
    assert state.capacity() == 4


def test_dead_worker_leases_are_released_once() -> None:
    state = AdmissionState(batch_size=4, max_staleness=0)
    state.admit("w0", 4)
    assert state.capacity() == 0
    assert state.forget_worker("w0") == 4
    assert state.capacity() == 4 and state.running == 0
    assert state.forget_worker("w0") == 0
    assert state.finish("w0", 4) == 0  # a late release of a forgotten lease returns nothing
    assert state.running == 0


def test_failed_samples_give_their_slots_back() -> None:
    state = AdmissionState(batch_size=4, max_staleness=0)
    state.admit("w0", 4)
    state.finish("w0", 4)
    assert state.capacity() == 4


def _traj() -> Trajectory:
    return trajectory(sampled=2)


def test_backlog_counts_unbooked_stream_entries(redis_server) -> None:
    """What admission counts comes from the stream: a push that was never released (its
    worker died) is counted, booked entries are not, acknowledged ones are gone."""
    buffer = RedisStreamBuffer(redis_server.url, "adm:stream")
    buffer.ensure_group()
    assert buffer.backlog() == 0
    buffer.push([_traj(), _traj()])  # the worker is killed before it releases its slots
    assert buffer.backlog() == 2
    entries = buffer.read(10, block_ms=10)
    assert buffer.backlog() == 2  # delivered, not yet booked
    buffer.book(2)
    assert buffer.backlog() == 0
    buffer.ack([e.entry_id for e in entries], booked=2)
    assert buffer.backlog() == 0
    buffer.push([_traj()])
    buffer.book(0)
    buffer.reset_booked()
    assert buffer.backlog() == 1
