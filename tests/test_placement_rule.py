"""rollout.placement: what colocation refuses, and what auto picks on which machine."""

from __future__ import annotations

import pytest
import yaml

from relayrl.cluster import placement_rule
from relayrl.cluster.placement_rule import COLOCATE_MAX_CORES, resolve_placement
from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["learner.num_ranks=2"], "learner.num_ranks"),
        (["rollout.engine=vllm"], "sleep mode"),
        (["learner.gpus_per_rank=1"], "learner.gpus_per_rank"),
        (["rollout.autoscale.min_workers=1", "rollout.autoscale.max_workers=2"], "autoscale"),
    ],
)
def test_colocated_refuses_what_one_cpu_actor_cannot_hold(overrides: list[str], named: str) -> None:
    with pytest.raises(JobConfigError, match=r"rollout\.placement colocated") as refused:
        load_config(None, ["rollout.placement=colocated", *overrides])
    assert named in str(refused.value)


def test_auto_colocates_one_cpu_rank_on_a_small_local_machine() -> None:
    config = load_config(None, [])
    assert resolve_placement(config, cores=2, on_cluster=False) == "colocated"
    assert resolve_placement(config, COLOCATE_MAX_CORES, on_cluster=False) == "colocated"


@pytest.mark.parametrize(
    ("overrides", "cores", "on_cluster"),
    [
        ([], COLOCATE_MAX_CORES + 1, False),
        ([], 2, True),
        (["rollout.num_workers=2"], 2, False),
        (["learner.num_ranks=2"], 2, False),
        (["rollout.engine=vllm"], 2, False),
        (["rollout.autoscale.min_workers=1", "rollout.autoscale.max_workers=2"], 2, False),
    ],
)
def test_auto_keeps_separate_actors_where_overlap_can_pay_or_is_asked_for(
    overrides: list[str], cores: int, on_cluster: bool
) -> None:
    config = load_config(None, overrides)
    assert resolve_placement(config, cores, on_cluster) == "separate"


def test_an_explicit_placement_is_kept() -> None:
    separate = load_config(None, ["rollout.placement=separate"])
    colocated = load_config(None, ["rollout.placement=colocated", "rollout.num_workers=3"])
    assert resolve_placement(separate, cores=2, on_cluster=False) == "separate"
    assert resolve_placement(colocated, cores=64, on_cluster=True) == "colocated"


@pytest.mark.parametrize(
    ("cores", "placement"), [(2, "colocated"), (COLOCATE_MAX_CORES + 1, "separate")]
)
def test_a_saved_config_re_runs_at_the_placement_auto_resolved_to(
    cores: int, placement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.yaml lists every field, rollout.num_workers too; auto read from it would always
    be separate, so the run's placement is written there instead of auto."""
    monkeypatch.setattr(placement_rule, "local_cores", lambda: cores)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    resolved = placement_rule.with_placement_resolved(load_config(None, []))
    assert resolved.rollout.placement == placement
    saved = JobConfig.model_validate(
        yaml.safe_load(yaml.safe_dump(resolved.model_dump(mode="json")))
    )
    monkeypatch.setattr(placement_rule, "local_cores", lambda: 2)
    assert placement_rule.job_placement(saved) == placement
