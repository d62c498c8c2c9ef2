"""Gang placement on Ray: learner ranks packed into one placement group, and each rollout
engine in a bundle of its own that holds all its tensor-parallel GPUs on one node."""

from __future__ import annotations

from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from relayrl.errors import JobConfigError


class PlacementTimeout(JobConfigError):
    """The cluster could not place a gang of bundles in time."""


def bundle(cpus: float, gpus: float) -> dict[str, float]:
    # Ray refuses zero-valued bundle resources: a CPU-only bundle names no GPU.
    return {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}


def learner_placement(
    num_ranks: int, cpus_per_rank: float, gpus_per_rank: float, timeout_s: float
) -> PlacementGroup:
    """All ranks or none, packed onto as few nodes as possible (NCCL within a node is
    fastest); fails with the bundles it asked for when the cluster cannot hold them."""
    bundles = [bundle(cpus_per_rank, gpus_per_rank)] * num_ranks
    group = placement_group(bundles, strategy="PACK")
    if not group.wait(timeout_s):
        remove_placement_group(group)
        raise PlacementTimeout(
            f"learner.num_ranks {num_ranks} x {bundles[0]} (learner.cpus_per_rank, "
            f"learner.gpus_per_rank) could not be placed within {timeout_s:.0f} s; the "
            f"cluster has {ray.cluster_resources()}"
        )
    return group


def engine_placement(cpus: float, gpus: float) -> PlacementGroup:
    """One bundle with the engine's CPUs and all its GPUs; placed when the cluster can (an
    autoscaler sees the pending group), so adding a worker never blocks the driver."""
    return placement_group([bundle(cpus, gpus)], strategy="STRICT_PACK")


def on_driver_node() -> dict[str, Any]:
    """Actor options that keep a job's control actors (admission, job control, weight store,
    engine roster) on the driver's node: zero-CPU actors Ray would put anywhere, and a worker
    node lost mid-run must cost the job its workers there, never its control plane."""
    return {
        "scheduling_strategy": NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False
        )
    }


def in_bundle(group: PlacementGroup, index: int = 0) -> dict[str, Any]:
    """Actor options that put the actor in `group`'s bundle `index`; vLLM's own workers
    (tensor parallelism over Ray) are placed in the same group."""
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group,
            placement_group_bundle_index=index,
            placement_group_capture_child_tasks=True,
        )
    }
