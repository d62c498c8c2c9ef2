from __future__ import annotations

import random

import pytest

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


def test_a_running_group_overtaken_by_later_ones_still_holds_back_admission() -> None:
    """k = 1, batches of two groups of 2. Four groups start under v0 and the learner trains the
    first two to finish. Were a group to start now while d (v0) still runs, it and c could
    make the v1 batch first, and d would be trained by policy 2: two versions behind."""
    state = AdmissionState(batch_size=4, max_staleness=1)
    for worker in "abcd":
        state.admit(worker, 2)
    state.backlog = 4  # a and b pushed
    state.finish("a", 2)
    state.finish("b", 2)
    state.backlog = 0  # trained by policy 0 and booked once v1 is published
    state.trained_batch()
    assert state.version == 1 and state.oldest_running_version() == 0
    assert state.capacity() == 0
    state.backlog = 2  # c pushed: d can still be beaten to the v1 batch
    state.finish("c", 2)
    assert state.capacity() == 0
    state.backlog = 4  # d pushed: nothing started later can reach the stream before it
    state.finish("d", 2)
    assert state.capacity() == 4


def test_a_release_frees_the_workers_newest_lease_first() -> None:
    state = AdmissionState(batch_size=2, max_staleness=2)
    state.admit("w0", 2)
    state.trained_batch()
    state.admit("w0", 2)
    assert state.finish("w0", 2) == 2
    # Which lease ended is not said: the v0 one is kept, the stricter bound.
    assert state.oldest_running_version() == 0 and state.capacity() == 6 - 2 - 2


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_no_schedule_trains_a_group_more_than_max_staleness_behind(max_staleness: int) -> None:
    """Groups of random length start whenever admission allows; the learner trains the first
    complete groups in stream order (as the intake does), throws some away (a filter) and
    books a trained batch only after publishing the next version. Every trained group was
    admitted under a version at most max_staleness behind the policy trained on it."""
    rng = random.Random(max_staleness)
    group, batch_groups, steps = 2, 2, 300
    state = AdmissionState(batch_size=group * batch_groups, max_staleness=max_staleness)
    running: list[tuple[float, int, str]] = []  # (finish time, admitted under, lease)
    stream: list[tuple[int, str]] = []  # pushed groups, in push order
    batch: list[int] = []  # the admitted versions of the batch being trained
    trained_at = float("inf")
    now, lags, leases = 0.0, [], 0
    while state.version < steps:
        while state.capacity() >= group:
            lease = f"g{leases}"
            leases += 1
            state.admit(lease, group)
            running.append((now + rng.expovariate(1.0), state.version, lease))
        while stream and len(batch) < batch_groups:
            admitted, _ = stream.pop(0)
            if rng.random() < 0.2:  # discarded: booked at once, a replacement may start
                state.backlog -= group
                continue
            batch.append(admitted)
            if len(batch) == batch_groups:
                trained_at = now + rng.uniform(0.1, 1.0)
        assert running or batch or stream, "admission stalled"
        next_push = min(running)[0] if running else float("inf")
        if trained_at <= next_push:
            now = trained_at
            lags += [state.version - admitted for admitted in batch]
            state.backlog -= group * batch_groups
            state.trained_batch()
            batch, trained_at = [], float("inf")
        else:
            finished = min(running)
            running.remove(finished)
            now, admitted, lease = finished
            state.backlog += group
            state.finish(lease, group)
            stream.append((admitted, lease))
    assert max(lags) <= max_staleness
    assert max_staleness == 0 or max(lags) == max_staleness, "the bound is used, not undershot"
