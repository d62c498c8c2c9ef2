"""The driver's handles on a colocated job (cluster/colocated.py): the learner group of its one
actor, and the fleet of that actor's one in-process rollout worker. They answer the calls the
training loop, the SFT stage and the evaluation make of a LearnerGroup and a RolloutFleet."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryConsumer, TrajectoryProducer
from relayrl.cluster.colocated import ColocatedActor
from relayrl.cluster.controller import ControllerRefill
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.placement import in_bundle, learner_placement
from relayrl.cluster.rollout_fleet import ERRORS_KEPT, FleetDeadError
from relayrl.config import JobConfig, thread_count

log = logging.getLogger(__name__)


def colocated_cpus(config: JobConfig) -> float:
    """What Ray reserves for the actor: what a learner rank and one worker would have had."""
    return config.learner.cpus_per_rank + config.rollout.cpus_per_worker


class ColocatedLearnerGroup(LearnerGroup):
    """A learner group of one rank, the colocated actor; `threads` torch threads serve both
    its learner and its engine (the cores of the machine, on a local instance)."""

    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        consumer: TrajectoryConsumer,
        refill: ControllerRefill,
        call_timeout_s: float,
        cores: int,
    ) -> None:
        self.call_timeout_s = call_timeout_s
        cpus = colocated_cpus(config)
        self.placement = learner_placement(1, cpus, 0, call_timeout_s)
        # learner.torch_threads if set, else one per core the actor shares out by turns.
        threads = thread_count(config.learner.torch_threads, cores)
        log.info("colocated: one actor for the learner and its rollout engine, %d threads", threads)
        self.actor = ColocatedActor.options(num_cpus=cpus, **in_bundle(self.placement, 0)).remote(
            config, model_path, consumer, refill, threads
        )
        self.ranks = [self.actor]
        addr, port = ray.get(self.actor.rendezvous_address.remote(), timeout=call_timeout_s)
        self._all("setup", addr, port)


class ColocatedFleet:
    """One in-process worker on the colocated actor. A run loop that fails is started again
    in the same actor (its leases freed) until rollout.max_worker_restarts is spent; a
    worker target other than one is ignored, with the reason logged once per target."""

    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        start_step: int,
        producer: TrajectoryProducer,
        gate: AdmissionGate,
        controller: Any,
        actor: Any,
        call_timeout_s: float,
    ) -> None:
        self._config = config
        self._model_path = model_path
        self._start_step = start_step
        self._producer = producer
        self._gate = gate
        self._controller = controller
        self._actor = actor
        self._timeout_s = call_timeout_s
        self._worker_id: str | None = None
        self._run_ref: ray.ObjectRef | None = None
        self._serial = 0
        self.restarts = 0
        self.reports: list[dict[str, Any]] = []
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)

    @property
    def size(self) -> int:
        return 0 if self._worker_id is None else 1

    def worker_ids(self) -> list[str]:
        return [] if self._worker_id is None else [self._worker_id]

    def roster(self) -> list[dict[str, Any]]:
        return [
            {"worker_id": worker_id, "state": "running", "restarts": self.restarts}
            for worker_id in self.worker_ids()
        ]

    def handle(self, worker_id: str) -> Any:
        return self._actor

    def _start(self) -> str:
        worker_id = f"worker-{self._serial}"
        self._serial += 1
        ray.get(
            self._actor.start_rollout.remote(
                worker_id, self._model_path, self._start_step, self._producer, self._gate
            ),
            timeout=self._timeout_s,
        )
        self._worker_id = worker_id
        self._run_ref = self._actor.run_rollout.remote()
        return worker_id

    def scale_to(self, count: int) -> None:
        """Starts the one worker; job control refuses any other target (`relayrl scale`)."""
        if self._worker_id is None:
            self._start()

    def supervise(self) -> list[str]:
        if self._run_ref is None:
            return []
        done, _ = ray.wait([self._run_ref], timeout=0)
        if not done:
            return []
        worker_id = self._worker_id
        try:
            self.reports.append(ray.get(self._run_ref))
            cause = "its run loop returned before the job stopped"
        except RayActorError as exc:
            raise FleetDeadError(f"the colocated actor died: {exc}") from exc
        except RayTaskError as exc:
            cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
        self._worker_id = self._run_ref = None
        ray.get(self._controller.forget_worker.remote(worker_id))
        self.errors.append({"worker_id": worker_id, "error": cause, "at": time.time()})
        if self.restarts >= self._config.rollout.max_worker_restarts:
            raise FleetDeadError(f"{worker_id} died and the restart budget is spent: {cause}")
        self.restarts += 1
        replacement = self._start()
        event = f"{worker_id} died ({cause}); replaced by {replacement}"
        log.warning(event)
        return [event]

    def reports_now(self, timeout_s: float) -> list[dict[str, Any]]:
        if self._worker_id is None:
            return []
        ref = self._actor.report.remote()
        ready, _ = ray.wait([ref], timeout=timeout_s)
        try:
            return [ray.get(ready[0])] if ready else []
        except (RayActorError, RayTaskError):
            return []

    def stop(self, timeout_s: float) -> list[dict[str, Any]]:
        """The worker finishes its current groups after the controller stops admitting."""
        if self._run_ref is not None:
            try:
                self.reports.append(ray.get(self._run_ref, timeout=timeout_s))
                ray.get(self._actor.stop_rollout.remote(), timeout=timeout_s)
            except (GetTimeoutError, RayActorError, RayTaskError) as exc:
                log.warning("the colocated rollout worker did not stop cleanly: %s", exc)
        self._worker_id = self._run_ref = None
        return self.reports
