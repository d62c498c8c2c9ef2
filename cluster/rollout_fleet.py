"""The elastic fleet of rollout workers: start, scale, notice deaths and replace the dead."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from relayrl.actors.rollout_worker import RolloutWorker, WorkerSettings
from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryProducer
from relayrl.weights import WeightSubscriber

log = logging.getLogger(__name__)

RemoteRolloutWorker = ray.remote(max_restarts=0)(RolloutWorker)


class FleetDeadError(RuntimeError):
    """Workers kept dying past the restart budget; the message carries the last cause."""


@dataclass
class _Member:
    worker_id: str
    handle: Any
    run_ref: ray.ObjectRef


class RolloutFleet:
    def __init__(
        self,
        make_settings: Callable[[str], WorkerSettings],
        producer: TrajectoryProducer,
        weights: WeightSubscriber,
        gate: AdmissionGate,
        controller: Any,
        cpus_per_worker: float,
        restart_budget: int,
        gpus_per_worker: float = 0,
        engine_world_size: int = 1,
    ) -> None:
        self._make_settings = make_settings
        self._producer = producer
        self._weights = weights
        self._gate = gate
        self._controller = controller
        self._cpus = cpus_per_worker
        self._gpus = gpus_per_worker
        self._engine_world_size = engine_world_size
        self._restart_budget = restart_budget
        self._members: dict[str, _Member] = {}
        self._serial = 0
        self.restarts = 0
        self.reports: list[dict[str, Any]] = []

    @property
    def size(self) -> int:
        return len(self._members)

    def worker_ids(self) -> list[str]:
        return list(self._members)

    def add(self) -> str:
        worker_id = f"worker-{self._serial}"
        self._serial += 1
        handle = RemoteRolloutWorker.options(
            num_cpus=self._cpus, num_gpus=self._gpus, name=None
        ).remote(self._make_settings(worker_id), self._producer, self._weights, self._gate)
        # A push transport starts sending to the engine once it is built (calls queue until
        # the actor's constructor returns); pull transports ignore this.
        self._weights.attach(worker_id, handle, self._engine_world_size)
        self._members[worker_id] = _Member(worker_id, handle, handle.run.remote())
        return worker_id

    def scale_to(self, count: int) -> None:
        while self.size < count:
            self.add()
        while self.size > count:
            self.remove(next(reversed(self._members)))

    def remove(self, worker_id: str) -> None:
        member = self._members.pop(worker_id)
        self._weights.detach(worker_id)
        ray.kill(member.handle, no_restart=True)
        lost = ray.get(self._controller.forget_worker.remote(worker_id))
        log.info("removed %s (%d admitted samples released)", worker_id, lost)

    def handle(self, worker_id: str) -> Any:
        return self._members[worker_id].handle

    def supervise(self) -> list[str]:
        """Replace workers whose run loop ended with an error; returns what happened."""
        events = []
        refs = {member.run_ref: member for member in self._members.values()}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        for ref in done:
            member = refs[ref]
            try:
                self.reports.append(ray.get(ref))
                cause = "its run loop returned before the job stopped"
            except (RayActorError, RayTaskError) as exc:
                cause = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            self._members.pop(member.worker_id)
            self._weights.detach(member.worker_id)
            ray.get(self._controller.forget_worker.remote(member.worker_id))
            if self.restarts >= self._restart_budget:
                raise FleetDeadError(
                    f"{member.worker_id} died and the restart budget is spent: {cause}"
                )
            self.restarts += 1
            replacement = self.add()
            events.append(f"{member.worker_id} died ({cause}); replaced by {replacement}")
            log.warning(events[-1])
        return events

    def reports_now(self, timeout_s: float) -> list[dict[str, Any]]:
        """Each live worker's running counters (the run loop keeps going meanwhile)."""
        refs = [member.handle.report.remote() for member in self._members.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        reports = []
        for ref in ready:
            try:
                reports.append(ray.get(ref))
            except (RayActorError, RayTaskError):
                continue  # a dying worker; supervise() replaces it
        return reports

    def stop(self, timeout_s: float) -> list[dict[str, Any]]:
        """Workers finish their current group after the controller stops admitting."""
        refs = [member.run_ref for member in self._members.values()]
        try:
            self.reports.extend(ray.get(refs, timeout=timeout_s))
        except (GetTimeoutError, RayActorError, RayTaskError) as exc:
            log.warning("rollout workers did not stop cleanly: %s", exc)
        for member in self._members.values():
            ray.kill(member.handle, no_restart=True)
        self._members.clear()
        return self.reports
