"""Gang placement on a real local Ray (CPU bundles): learner ranks packed in one group, an
engine in a bundle of its own, and a gang the cluster cannot hold refused with its size."""

from __future__ import annotations

import pytest
import ray
from ray.util.placement_group import placement_group_table, remove_placement_group

from relayrl.cluster.placement import (
    PlacementTimeout,
    bundle,
    engine_placement,
    in_bundle,
    learner_placement,
)

pytestmark = pytest.mark.slow


RAY_CPUS = 3  # the conftest's ray_instance


@ray.remote
class Where:
    def group(self) -> str | None:
        group = ray.util.get_current_placement_group()
        return group.id.hex() if group else None


def test_bundles_name_gpus_only_when_asked() -> None:
    assert bundle(1.0, 0) == {"CPU": 1.0}
    assert bundle(4.0, 2) == {"CPU": 4.0, "GPU": 2}


def test_learner_ranks_are_placed_together_in_their_bundles(ray_instance: None) -> None:
    group = learner_placement(2, 1.0, 0, timeout_s=60)
    try:
        table = placement_group_table(group)
        assert table["strategy"] == "PACK" and table["state"] == "CREATED"
        assert list(table["bundles"].values()) == [{"CPU": 1.0}, {"CPU": 1.0}]
        ranks = [Where.options(num_cpus=1, **in_bundle(group, i)).remote() for i in range(2)]
        assert ray.get([r.group.remote() for r in ranks], timeout=60) == [group.id.hex()] * 2
        for rank in ranks:
            ray.kill(rank)
    finally:
        remove_placement_group(group)


def test_a_learner_the_cluster_cannot_hold_is_refused_with_its_size(ray_instance: None) -> None:
    with pytest.raises(PlacementTimeout, match=r"learner.num_ranks 4 x \{'CPU': 1.0\}"):
        learner_placement(4, 1.0, 0, timeout_s=2)
    # The refused group was removed: its CPUs are free for the next one.
    group = learner_placement(3, 1.0, 0, timeout_s=60)
    remove_placement_group(group)


def test_an_engine_gets_one_bundle_of_its_own(ray_instance: None) -> None:
    group = engine_placement(0.5, 0)
    try:
        assert group.wait(60)
        table = placement_group_table(group)
        assert table["strategy"] == "STRICT_PACK"
        assert list(table["bundles"].values()) == [{"CPU": 0.5}]
        worker = Where.options(num_cpus=0.5, **in_bundle(group)).remote()
        assert ray.get(worker.group.remote(), timeout=60) == group.id.hex()
        ray.kill(worker)
    finally:
        remove_placement_group(group)
