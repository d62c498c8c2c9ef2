"""`relayrl scale`: change the number of rollout workers of a running job."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from relayrl.cluster.controller import RAY_ADDRESS_FILE, controller_name
from relayrl.cluster.ray_runtime import connect_to_job
from relayrl.config import JobConfig
from relayrl.errors import JobConfigError


def scale_job(config: JobConfig, workers: int) -> int:
    """Set the job's target worker count; returns the previous target. The driver adds or
    removes workers within a few seconds, and new workers pull the current weights first."""
    if workers < 1:
        raise JobConfigError(f"workers must be at least 1, got {workers}")
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        address_file = Path(config.output_dir) / RAY_ADDRESS_FILE
        if not address_file.is_file():
            raise JobConfigError(f"no running job in output.dir {config.output_dir}")
        address = address_file.read_text().strip()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect_to_job(address)
    try:
        try:
            controller = ray.get_actor(controller_name(config.name))
        except ValueError:
            raise JobConfigError(f"job {config.name!r} is not running at {address}") from None
        return int(ray.get(controller.set_desired_workers.remote(workers), timeout=60))
    finally:
        ray.shutdown()
