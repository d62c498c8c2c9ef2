"""The autoscaler's actuator: after each learner step it feeds the step's figures to the
policy, and when the fleet should change it asks Ray for the resources of the new size (a Ray
autoscaler adds or frees nodes for them) and returns the new target, which the driver applies
to the elastic fleet the way `relayrl scale` does."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import ray
from ray.autoscaler.sdk import request_resources

from relayrl import metric_keys as keys
from relayrl.autoscale_config import AutoscaleConfig
from relayrl.cluster.autoscale_policy import AutoscalePolicy, FleetObservation
from relayrl.cluster.job_runtime import CALL_TIMEOUT_S
from relayrl.cluster.training_loop import StepReport
from relayrl.config import JobConfig

log = logging.getLogger(__name__)


def worker_bundle(config: JobConfig) -> dict[str, float]:
    rollout = config.rollout
    bundle = {"CPU": rollout.cpus_per_worker}
    if rollout.gpus_per_worker:
        bundle["GPU"] = rollout.gpus_per_worker
    return bundle


def learner_bundles(config: JobConfig) -> list[dict[str, float]]:
    learner = config.learner
    bundle = {"CPU": learner.cpus_per_rank}
    if learner.gpus_per_rank:
        bundle["GPU"] = float(learner.gpus_per_rank)
    return [dict(bundle) for _ in range(learner.num_ranks)]


class FleetAutoscaler:
    def __init__(
        self,
        autoscale: AutoscaleConfig,
        batch_size: int,
        worker: Mapping[str, float],
        fixed: list[dict[str, float]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = AutoscalePolicy(autoscale, now=clock())
        self._batch_size = batch_size
        self._worker = dict(worker)
        self._fixed = fixed
        self._clock = clock

    @classmethod
    def for_job(cls, config: JobConfig) -> FleetAutoscaler | None:
        """The job's autoscaler, or None when `rollout.autoscale` is not set."""
        if config.rollout.autoscale is None:
            return None
        return cls(
            config.rollout.autoscale,
            config.batch_size,
            worker_bundle(config),
            learner_bundles(config),
        )

    def request(self, workers: int) -> None:
        """Ask Ray for the whole job's shape at `workers` workers (a standing request: it
        replaces the previous one)."""
        request_resources(bundles=[*self._fixed, *(dict(self._worker) for _ in range(workers))])

    def release(self) -> None:
        """Drop the standing request so a Ray autoscaler may free the job's nodes."""
        request_resources(bundles=[])

    def after_step(self, metrics: Mapping[str, Any], backlog: int, workers: int) -> int | None:
        """The fleet's new target after a learner step with `metrics`, or None to keep
        `workers`."""
        seen = FleetObservation(
            workers=workers,
            learner_idle_fraction=float(metrics.get(keys.PIPELINE_LEARNER_IDLE_FRACTION, 0.0)),
            worker_idle_fraction=float(metrics.get(keys.PIPELINE_WORKER_IDLE_FRACTION, 0.0)),
            backlog=backlog,
            batch_size=self._batch_size,
        )
        target = self._policy.decide(seen, self._clock())
        if target is None:
            return None
        log.info(
            "autoscale: rollout workers %d -> %d (learner idle %.0f%%, workers idle %.0f%%, "
            "backlog %d of batch %d)",
            workers,
            target,
            100 * seen.learner_idle_fraction,
            100 * seen.worker_idle_fraction,
            backlog,
            self._batch_size,
        )
        self.request(target)
        return target


class AutoscaleHook:
    """A `LoopHooks.on_step` presenter: after each step, sets the job's worker target (the
    one `relayrl scale` sets) when the autoscaler decides to change it."""

    def __init__(self, autoscaler: FleetAutoscaler, job_control: Any) -> None:
        self._autoscaler = autoscaler
        self._job_control = job_control

    def __call__(self, report: StepReport) -> None:
        metrics = report.metrics
        target = self._autoscaler.after_step(
            metrics,
            backlog=int(metrics[keys.BUFFER_BACKLOG]),
            workers=int(metrics[keys.ROLLOUT_WORKERS]),
        )
        if target is not None:
            ray.get(self._job_control.set_desired_workers.remote(target), timeout=CALL_TIMEOUT_S)


@contextmanager
def autoscaling(config: JobConfig, job_control: Any) -> Iterator[list[AutoscaleHook]]:
    """The job's autoscaling hooks (none without `rollout.autoscale`); the standing resource
    request is made at start and dropped when the job ends."""
    autoscaler = FleetAutoscaler.for_job(config)
    if autoscaler is None:
        yield []
        return
    autoscaler.request(config.rollout.num_workers)
    try:
        yield [AutoscaleHook(autoscaler, job_control)]
    finally:
        autoscaler.release()
