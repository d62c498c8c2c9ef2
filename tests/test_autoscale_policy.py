"""The autoscaling decision: grow on a starving learner, shrink on an oversupplied one, with
patience, a cool-down, hysteresis and bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relayrl.autoscale_config import AutoscaleConfig
from relayrl.cluster.autoscale_policy import AutoscalePolicy, FleetObservation
from relayrl.cluster.autoscaler import FleetAutoscaler, learner_bundles, worker_bundle
from relayrl.config_loader import load_config

BATCH = 8


def seen(workers: int, learner_idle: float, worker_idle: float = 0.0, backlog: int = 0):
    return FleetObservation(workers, learner_idle, worker_idle, backlog, BATCH)


STARVING = {"learner_idle": 0.8}
OVERSUPPLIED = {"learner_idle": 0.0, "worker_idle": 0.6, "backlog": BATCH}


def run(policy: AutoscalePolicy, workers: int, figures: dict, steps: int, start: float = 0.0):
    """Feed `steps` identical observations one second apart, applying each decision."""
    sizes = []
    for i in range(steps):
        target = policy.decide(seen(workers, **figures), now=start + i)
        workers = target if target is not None else workers
        sizes.append(workers)
    return sizes


def config(**fields) -> AutoscaleConfig:
    return AutoscaleConfig(
        **{"min_workers": 1, "max_workers": 4, "patience_steps": 2, "cooldown_s": 0.0, **fields}
    )


def test_grows_after_patience_up_to_the_maximum():
    policy = AutoscalePolicy(config(), now=0.0)
    assert run(policy, 1, STARVING, 8) == [1, 2, 2, 3, 3, 4, 4, 4]


def test_shrinks_only_while_a_batch_waits_and_workers_sit_on_admission():
    policy = AutoscalePolicy(config(), now=0.0)
    assert run(policy, 4, OVERSUPPLIED, 8) == [4, 3, 3, 2, 2, 1, 1, 1]
    # Idle workers but no full batch waiting: the learner would starve after a shrink.
    short_backlog = {**OVERSUPPLIED, "backlog": BATCH - 1}
    assert run(AutoscalePolicy(config(), now=0.0), 4, short_backlog, 6) == [4] * 6
    busy_workers = {**OVERSUPPLIED, "worker_idle": 0.1}
    assert run(AutoscalePolicy(config(), now=0.0), 4, busy_workers, 6) == [4] * 6


def test_between_the_thresholds_the_fleet_holds():
    policy = AutoscalePolicy(config(grow_learner_idle=0.3, shrink_learner_idle=0.05), now=0.0)
    middling = {"learner_idle": 0.2, "worker_idle": 0.9, "backlog": 3 * BATCH}
    assert run(policy, 2, middling, 10) == [2] * 10


def test_a_broken_streak_starts_over():
    policy = AutoscalePolicy(config(patience_steps=3), now=0.0)
    sizes = []
    for i, idle in enumerate([0.8, 0.8, 0.1, 0.8, 0.8, 0.8]):
        target = policy.decide(seen(1, idle), now=float(i))
        sizes.append(target)
    assert sizes == [None, None, None, None, None, 2]


def test_cooldown_spaces_changes_and_starts_at_construction():
    policy = AutoscalePolicy(config(cooldown_s=10.0, patience_steps=1), now=0.0)
    sizes = run(policy, 1, STARVING, 25)
    assert sizes.index(2) == 10 and sizes.index(3) == 20
    assert sizes[9] == 1 and sizes[19] == 2


def test_step_workers_and_bounds():
    policy = AutoscalePolicy(config(max_workers=5, step_workers=3, patience_steps=1), now=0.0)
    assert run(policy, 1, STARVING, 3) == [4, 5, 5]
    policy = AutoscalePolicy(config(min_workers=2, step_workers=3, patience_steps=1), now=0.0)
    assert run(policy, 4, OVERSUPPLIED, 3) == [2, 2, 2]


def test_a_target_set_out_of_bounds_is_corrected_at_once():
    policy = AutoscalePolicy(config(min_workers=2, max_workers=3, cooldown_s=100.0), now=0.0)
    assert policy.decide(seen(7, 0.0), now=1.0) == 3
    assert policy.decide(seen(1, 0.0), now=2.0) == 2


def test_config_refuses_inverted_bounds_and_thresholds():
    with pytest.raises(ValidationError, match="min_workers 5 is above max_workers 2"):
        AutoscaleConfig(min_workers=5, max_workers=2)
    with pytest.raises(ValidationError, match="must be below"):
        AutoscaleConfig(grow_learner_idle=0.2, shrink_learner_idle=0.2)
    with pytest.raises(ValidationError, match="extra"):
        AutoscaleConfig(max_worker=3)


def test_rollout_config_takes_autoscale_from_yaml_overrides():
    job = load_config(None, ["rollout.autoscale.min_workers=1", "rollout.autoscale.max_workers=3"])
    assert job.rollout.autoscale == AutoscaleConfig(min_workers=1, max_workers=3)
    assert load_config(None, []).rollout.autoscale is None


def test_for_job_requests_the_whole_jobs_shape():
    config = load_config(
        None,
        [
            "rollout.cpus_per_worker=0.5",
            "learner.cpus_per_rank=2",
            "learner.num_ranks=2",
            "rollout.autoscale.max_workers=4",
        ],
    )
    assert worker_bundle(config) == {"CPU": 0.5}
    assert learner_bundles(config) == [{"CPU": 2.0}, {"CPU": 2.0}]
    assert FleetAutoscaler.for_job(config) is not None
    assert FleetAutoscaler.for_job(load_config(None, [])) is None
    # A local Ray instance cannot grow: it is sized for the autoscaler's largest fleet.
    assert config.local_cpus == 2 * 2 + 4 * 0.5 + 1
