"""`relayrl status` and `relayrl stop`: a running job is reached through Ray by its name, a
job that has ended is read from its output folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml

from relayrl.cluster.job_control import ENDED_STATES, StopMode, job_address, reach_job
from relayrl.cluster.job_status import status_from_output
from relayrl.config import JobConfig
from relayrl.config_loader import load_config
from relayrl.errors import JobConfigError

CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JobTarget:
    name: str
    output_dir: Path


def job_target(config_or_output: str, overrides: list[str]) -> JobTarget:
    """A job's config file, or the output folder it wrote (it keeps its config.yaml there)."""
    path = Path(config_or_output)
    if path.is_dir():
        written = path / "config.yaml"
        if not written.is_file():
            raise JobConfigError(f"{path} holds no config.yaml: not a relayrl output folder")
        name = yaml.safe_load(written.read_text())["name"]
        return JobTarget(name, path)
    config: JobConfig = load_config(config_or_output, overrides)
    return JobTarget(config.name, Path(config.output_dir))


def job_status(target: JobTarget) -> dict[str, Any]:
    """The live snapshot of a running job, else what its output folder says."""
    if job_address(target.output_dir) is not None:
        try:
            with reach_job(target.name, target.output_dir) as job_control:
                live = ray.get(job_control.status.remote(), timeout=CALL_TIMEOUT_S)
                return {**live, "live": True}
        except JobConfigError:
            pass  # the address answers but this job is not there: it has ended
    return {**status_from_output(target.output_dir), "job": target.name, "live": False}


def stop_job(target: JobTarget, mode: StopMode, timeout_s: float) -> dict[str, Any]:
    """Ask the job to stop and wait until its driver says the fleet is down; returns the
    job's status at that point (its state is not an ended one if the wait timed out)."""
    with reach_job(target.name, target.output_dir) as job_control:
        ray.get(job_control.request_stop.remote(mode), timeout=CALL_TIMEOUT_S)
        wait = job_control.wait_ended.remote(timeout_s)
        return ray.get(wait, timeout=timeout_s + CALL_TIMEOUT_S)


def has_ended(status: dict[str, Any]) -> bool:
    return status.get("state") in ENDED_STATES
