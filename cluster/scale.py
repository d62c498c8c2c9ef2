"""`relayrl scale`: change the number of rollout workers of a running job."""

from __future__ import annotations

from pathlib import Path

import ray

from relayrl.cluster.job_control import reach_job
from relayrl.config import JobConfig
from relayrl.errors import JobConfigError


class ScaleRefusedError(JobConfigError):
    """The running job's fleet has a fixed size (rollout.placement colocated)."""


def scale_job(config: JobConfig, workers: int) -> int:
    """Set the job's target worker count; returns the previous target. The driver adds or
    removes workers within a few seconds, and new workers pull the current weights first."""
    if workers < 1:
        raise JobConfigError(f"workers must be at least 1, got {workers}")
    with reach_job(config.name, Path(config.output_dir)) as job_control:
        fixed = ray.get(job_control.fixed_fleet.remote(), timeout=60)
        if fixed is not None:
            raise ScaleRefusedError(f"job {config.name!r} cannot be scaled: {fixed}")
        return int(ray.get(job_control.set_desired_workers.remote(workers), timeout=60))
