"""The elastic fleet of rollout workers: start, scale, notice deaths and replace the dead."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError
from ray.util.placement_group import PlacementGroup, remove_placement_group

from relayrl.admission import AdmissionGate
from relayrl.buffer import TrajectoryProducer
from relayrl.cluster.placement import engine_placement, in_bundle
from relayrl.cluster.weights.roster import EngineRegistry
from relayrl.config import JobConfig

if TYPE_CHECKING:
    from relayrl.weights import WeightSubscriber

log = logging.getLogger(__name__)

# How long a killed worker may take to be gone before its replacement is started anyway.
KILL_WAIT_S = 60.0
# How many of the latest worker deaths the fleet remembers for `relayrl status`.
ERRORS_KEPT = 10


class FleetDeadError(RuntimeError):
    """Workers kept dying past the restart budget; the message carries the last cause."""


@dataclass
class _Member:
    worker_id: str
    handle: Any
    run_ref: ray.ObjectRef
    # Resolves once the actor's constructor (engine start-up included) has returned.
    ready_ref: ray.ObjectRef
    # The worker's bundle: its CPUs and all its engine's GPUs, on one node.
    placement: PlacementGroup
    # How many workers died before this one in its place in the fleet.
    restarts: int = 0
    ready_seen: bool = False


class RolloutFleet:
    def __init__(
        self,
        config: JobConfig,
        model_path: str,
        start_step: int,
        producer: TrajectoryProducer,
        weights: WeightSubscriber,
        gate: AdmissionGate,
        controller: Any,
        engine_roster: EngineRegistry | None = None,
    ) -> None:
        """Workers of `config.rollout` on `model_path`, in a job that starts at `start_step`;
        under a push transport, their engines are registered in `engine_roster` once started."""
        self._config = config
        self._model_path = model_path
        self._start_step = start_step
        self._producer = producer
        self._weights = weights
        self._engine_roster = engine_roster
        self._gate = gate
        self._controller = controller
        self._cpus = config.rollout.cpus_per_worker
        self._gpus = config.rollout.gpus_per_worker
        self._engine_world_size = config.rollout.vllm.tensor_parallel_size
        self._restart_budget = config.rollout.max_worker_restarts
        self._members: dict[str, _Member] = {}
        self._serial = 0
        self.restarts = 0
        self.reports: list[dict[str, Any]] = []
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)

    @property
    def size(self) -> int:
        return len(self._members)

    def worker_ids(self) -> list[str]:
        return list(self._members)

    def roster(self) -> list[dict[str, Any]]:
        """Each worker with its state and how many died before it in its place."""
        return [
            {
                "worker_id": m.worker_id,
                "state": "running" if m.ready_seen else "starting",
                "restarts": m.restarts,
            }
            for m in self._members.values()
        ]

    def add(self, restarts: int = 0) -> str:
        # Imported here: it needs torch and transformers, which only the worker's process loads.
        from relayrl.cluster.sandboxed_worker import RemoteRolloutWorker

        worker_id = f"worker-{self._serial}"
        self._serial += 1
        placement = engine_placement(self._cpus, self._gpus)
        handle = RemoteRolloutWorker.options(
            num_cpus=self._cpus, num_gpus=self._gpus, name=None, **in_bundle(placement)
        ).remote(
            self._config,
            worker_id,
            self._model_path,
            self._start_step,
            self._producer,
            self._weights,
            self._gate,
        )
        self._members[worker_id] = _Member(
            worker_id,
            handle,
            handle.run.remote(),
            handle.__ray_ready__.remote(),
            placement,
            restarts,
        )
        return worker_id

    def _attach_ready(self) -> None:
        """Register started engines in the engine roster. Only once the constructor returned: a
        push transport's rendezvous would time out on an engine still starting."""
        waiting = {m.ready_ref: m for m in self._members.values() if not m.ready_seen}
        if not waiting:
            return
        ready, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in ready:
            member = waiting[ref]
            member.ready_seen = True
            try:
                ray.get(ref)
            except (RayActorError, RayTaskError):
                continue  # the constructor failed: the run loop's error reports why
            if self._engine_roster is not None:
                self._engine_roster.join(member.worker_id, member.handle, self._engine_world_size)

    def scale_to(self, count: int) -> None:
        while self.size < count:
            self.add()
        while self.size > count:
            self.remove(next(reversed(self._members)))

    def remove(self, worker_id: str) -> None:
        member = self._members.pop(worker_id)
        self._leave_roster(worker_id)
        ray.kill(member.handle, no_restart=True)
        remove_placement_group(member.placement)
        lost = ray.get(self._controller.forget_worker.remote(worker_id))
        log.info("removed %s (%d admitted samples released)", worker_id, lost)

    def _leave_roster(self, worker_id: str) -> None:
        if self._engine_roster is not None:
            self._engine_roster.leave(worker_id)

    def handle(self, worker_id: str) -> Any:
        return self._members[worker_id].handle

    def supervise(self) -> list[str]:
        """Replace workers whose run loop ended with an error; returns what happened."""
        events = []
        self._attach_ready()
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
            self._leave_roster(member.worker_id)
            # A run loop that raised leaves its actor alive, holding its GPU memory (and a
            # half-loaded engine): it must be gone before the replacement asks for the GPU.
            _kill(member.handle, KILL_WAIT_S)
            remove_placement_group(member.placement)
            ray.get(self._controller.forget_worker.remote(member.worker_id))
            self.errors.append({"worker_id": member.worker_id, "error": cause, "at": time.time()})
            if self.restarts >= self._restart_budget:
                raise FleetDeadError(
                    f"{member.worker_id} died and the restart budget is spent: {cause}"
                )
            self.restarts += 1
            replacement = self.add(member.restarts + 1)
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
            remove_placement_group(member.placement)
        self._members.clear()
        return self.reports


def _kill(handle: Any, wait_s: float) -> None:
    """Kill an actor and wait (bounded) until Ray reports it dead: a call on a killed actor
    resolves, with an error, only then."""
    ray.kill(handle, no_restart=True)
    gone, _ = ray.wait([handle.__ray_ready__.remote()], timeout=wait_s)
    if not gone:
        log.warning("a killed rollout worker was still reported alive after %.0f s", wait_s)
