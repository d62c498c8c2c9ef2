"""Job control: the one named actor of a running job, through which the CLI reaches it by job
name (`relayrl scale`, `status`, `stop`), also when the job was submitted with `ray job submit`.
It holds what an operator asks for (the worker target, a stop request) and what the driver last
reported (the status snapshot); admission is the rollout controller's, not this actor's."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import ray

from relayrl.cluster.ray_runtime import connect_to_job
from relayrl.errors import JobConfigError

# In a job's output folder while it runs: the Ray address the CLI uses to reach it.
RAY_ADDRESS_FILE = "ray_address"
# How long the CLI waits for a job's Ray address to accept a connection.
PROBE_TIMEOUT_S = 2.0


class StopMode(StrEnum):
    GRACEFUL = "graceful"  # finish the current step, checkpoint, shut down
    NOW = "now"  # interrupt at once; resume from the last periodic checkpoint


class JobState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


ENDED_STATES = frozenset(
    {JobState.FINISHED, JobState.STOPPED, JobState.INTERRUPTED, JobState.FAILED}
)


@dataclass(frozen=True)
class JobOrders:
    """What the operator asked the driver for, read on every supervision tick."""

    desired_workers: int
    stop: StopMode | None


def job_control_name(job_name: str) -> str:
    return f"job:{job_name}"


@ray.remote(num_cpus=0, max_restarts=0)
class JobControl:
    def __init__(self, desired_workers: int, fixed_fleet: str | None = None) -> None:
        self._desired_workers = desired_workers
        # Why the fleet cannot be scaled (a colocated job's one in-process worker), if so.
        self._fixed_fleet = fixed_fleet
        self._stop: StopMode | None = None
        self._status: dict[str, Any] = {"state": JobState.STARTING.value}
        self._ended = asyncio.Event()

    async def set_desired_workers(self, count: int) -> int:
        """Ask the driver to grow or shrink the rollout fleet (it applies this on its next
        supervision tick); returns the previous target."""
        if count < 1:
            raise ValueError(f"a job needs at least one rollout worker, got {count}")
        if self._fixed_fleet is not None:
            raise ValueError(self._fixed_fleet)
        previous, self._desired_workers = self._desired_workers, count
        return previous

    async def fixed_fleet(self) -> str | None:
        """Why `relayrl scale` cannot change this job's fleet; None when it can."""
        return self._fixed_fleet

    async def request_stop(self, mode: StopMode) -> None:
        # An interrupt may overtake a graceful stop under way, never the other way round.
        if self._stop is not StopMode.NOW:
            self._stop = mode

    async def orders(self) -> JobOrders:
        return JobOrders(self._desired_workers, self._stop)

    async def report(self, status: dict[str, Any]) -> None:
        """The driver's latest snapshot; a partial one (the worker roster) updates its keys."""
        self._status.update(status)
        if self._status["state"] in ENDED_STATES:
            self._ended.set()

    async def status(self) -> dict[str, Any]:
        return {**self._status, "desired_workers": self._desired_workers}

    async def wait_ended(self, timeout_s: float) -> dict[str, Any]:
        """The status once the job has ended (fleet shut down), or as it stands at the timeout."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout_s)
        return await self.status()


def job_address(output_dir: Path) -> str | None:
    """The Ray address of the job writing to `output_dir` (RAY_ADDRESS wins), if it runs."""
    address = os.environ.get("RAY_ADDRESS")
    if address:
        return address
    address_file = output_dir / RAY_ADDRESS_FILE
    if not address_file.is_file():
        return None
    address = address_file.read_text().strip()
    # A killed driver leaves the file behind; a closed port means nobody is there to join.
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
            return address
    except OSError:
        return None


@contextmanager
def reach_job(job_name: str, output_dir: Path) -> Iterator[Any]:
    """Join the job's Ray instance as a client and yield its JobControl handle."""
    address = job_address(output_dir)
    if address is None:
        raise JobConfigError(f"no running job in output.dir {output_dir}")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    connect_to_job(address)
    try:
        try:
            handle = ray.get_actor(job_control_name(job_name))
        except ValueError:
            raise JobConfigError(f"job {job_name!r} is not running at {address}") from None
        yield handle
    finally:
        ray.shutdown()
