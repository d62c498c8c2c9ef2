"""`rollout.placement: auto`, resolved once by the driver from the config and the machine."""

from __future__ import annotations

import logging
import os
from typing import Literal

from relayrl.config import JobConfig

log = logging.getLogger(__name__)

# Most cores a local instance may have for auto to colocate. Measured on 2 cores (the
# colocated job beats separate workers there, BENCHMARKS.md); with more cores than one learner
# and one engine can use, separate actors can overlap generation with training.
COLOCATE_MAX_CORES = 4

Placement = Literal["separate", "colocated"]


def local_cores() -> int:
    return len(os.sched_getaffinity(0))


def on_cluster() -> bool:
    """Whether a job started here joins a Ray cluster (RAY_ADDRESS) instead of its own."""
    return bool(os.environ.get("RAY_ADDRESS"))


def resolve_placement(config: JobConfig, cores: int, on_cluster: bool) -> Placement:
    """colocated or separate. auto colocates only what overlap cannot pay for: one CPU learner
    rank, the transformers engine, a local Ray on at most COLOCATE_MAX_CORES cores, and a
    fleet nobody sized by hand (rollout.num_workers left unset)."""
    placement = config.rollout.placement
    if placement != "auto":
        return placement
    reasons = [
        reason
        for reason, holds in (
            (config.colocation_refused, config.colocation_refused is not None),
            ("Ray runs on a cluster (RAY_ADDRESS)", on_cluster),
            (f"{cores} cores > {COLOCATE_MAX_CORES}", cores > COLOCATE_MAX_CORES),
            ("rollout.num_workers is set", "num_workers" in config.rollout.model_fields_set),
        )
        if holds
    ]
    if reasons:
        log.info("rollout.placement auto: separate (%s)", reasons[0])
        return "separate"
    log.info(
        "rollout.placement auto: colocated (one CPU learner rank on a local Ray with %d "
        "cores: generation and training take turns with all of them)",
        cores,
    )
    return "colocated"


def job_placement(config: JobConfig) -> Placement:
    """The placement of a job started from this process."""
    return resolve_placement(config, local_cores(), on_cluster())


def with_placement_resolved(config: JobConfig) -> JobConfig:
    """`config` with auto replaced by the placement this process resolves it to: the run's
    config.yaml then re-runs the same way (it lists rollout.num_workers, which auto reads as
    a fleet sized by hand)."""
    rollout = config.rollout.model_copy(update={"placement": job_placement(config)})
    return config.model_copy(update={"rollout": rollout})
