from __future__ import annotations

from relayrl.cluster.controller import AdmissionState


def test_synchronous_mode_admits_one_batch_per_version() -> None:
    state = AdmissionState(batch_size=8, max_staleness=0)
    assert state.capacity() == 8
    state.admit("w0", 4)
    state.admit("w1", 4)
    assert state.capacity() == 0
    state.finish("w0", 4, produced=True)
    state.finish("w1", 4, produced=True)
    assert state.capacity() == 0  # nothing more until the learner moves to version 1
    state.version = 1
    assert state.capacity() == 8


def test_staleness_k_lets_generation_run_k_versions_ahead() -> None:
    state = AdmissionState(batch_size=4, max_staleness=2)
    assert state.capacity() == 12
    state.accepted = 12
    assert state.capacity() == 0
    state.version = 1
    assert state.capacity() == 4


def test_dead_worker_leases_are_released() -> None:
    state = AdmissionState(batch_size=4, max_staleness=0)
    state.admit("w0", 4)
    assert state.capacity() == 0
    assert state.forget_worker("w0") == 4
    assert state.capacity() == 4 and state.running == 0
    assert state.forget_worker("w0") == 0


def test_failed_samples_do_not_count_as_accepted() -> None:
    state = AdmissionState(batch_size=4, max_staleness=0)
    state.admit("w0", 4)
    state.finish("w0", 4, produced=False)
    assert state.accepted == 0 and state.capacity() == 4
