"""The one training loop, over parts that are already started. Its mode (synchronous or
k-stale asynchronous) is only the controller's admission rule; nothing here forks on it.
Features plug in through `LoopHooks`, never by editing the loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from relayrl import interrupts
from relayrl import metric_keys as keys
from relayrl.cluster.job_control import JobOrders, JobState, StopMode
from relayrl.cluster.job_runtime import CALL_TIMEOUT_S, JobRuntime
from relayrl.cluster.job_status import status_from_metrics, with_engine_versions, write_status_file
from relayrl.cluster.pipeline_meter import PipelineMeter
from relayrl.cluster.worker_metrics import WorkerMeter

log = logging.getLogger(__name__)

SUPERVISE_EVERY_S = 2.0
# How long the loop waits for the workers' running counters after a step.
REPORTS_TIMEOUT_S = 30.0


class JobInterrupted(KeyboardInterrupt):
    """`relayrl stop --now`: unwinds the job exactly as a stop signal would."""


@dataclass(frozen=True)
class StepReport:
    """One finished step, as presenters (log line, progress bar, live display) see it."""

    step: int
    total: int
    metrics: Mapping[str, Any]
    # The checkpoint written at this step, if one was.
    checkpoint: Path | None
    # The snapshot `relayrl status` shows (cluster/job_status.py).
    status: Mapping[str, Any]


@dataclass
class LoopHooks:
    """Where features plug into the loop; each list runs in order."""

    # After each learner step, before its record is written: extra metrics (an evaluation).
    step_metrics: list[Callable[[int, JobRuntime], Mapping[str, Any]]] = field(default_factory=list)
    # After each step's record is written: presenters.
    on_step: list[Callable[[StepReport], None]] = field(default_factory=list)


@dataclass(frozen=True)
class LoopOutcome:
    last_step: int
    checkpoint: Path | None
    # True when `relayrl stop` ended the run before trainer.steps.
    stopped: bool


class TrainingLoop:
    def __init__(self, runtime: JobRuntime, hooks: LoopHooks) -> None:
        self.runtime = runtime
        self.hooks = hooks
        self.total = runtime.config.trainer.steps
        self._meter = PipelineMeter()
        self._worker_meter = WorkerMeter()
        self._orders = JobOrders(runtime.config.rollout.num_workers, None)
        self._checkpoint = runtime.restored
        self._reports: list[dict[str, Any]] = []

    def run(self) -> LoopOutcome:
        """Run to trainer.steps or a stop request; tells the runtime how the run ended."""
        try:
            outcome = self._run()
        except KeyboardInterrupt:
            self.runtime.final_state = JobState.INTERRUPTED
            raise
        self.runtime.final_state = JobState.STOPPED if outcome.stopped else JobState.FINISHED
        return outcome

    def _run(self) -> LoopOutcome:
        runtime = self.runtime
        self._report({"job": runtime.config.name, "state": JobState.RUNNING.value,
                      "step": runtime.start_step, "total": self.total,
                      "version": runtime.start_version})  # fmt: skip
        step = runtime.start_step
        while step < self.total:
            step += 1
            self._step(step)
            if self._orders.stop is StopMode.GRACEFUL and step < self.total:
                log.info("stopped at step %d on request; resume with --resume", step)
                return LoopOutcome(step, self._checkpoint, stopped=True)
        return LoopOutcome(step, self._checkpoint, stopped=False)

    def _step(self, step: int) -> None:
        runtime = self.runtime
        started = time.perf_counter()
        metrics = self._on_learner("train_step")
        ray.get(runtime.controller.set_version.remote(metrics["version"]))
        self._reports = reports = runtime.fleet.reports_now(timeout_s=REPORTS_TIMEOUT_S)
        stats = runtime.buffer.stats()
        snapshot = ray.get(runtime.controller.snapshot.remote())
        metrics.update(self._meter.step(reports, metrics))
        metrics.update(self._worker_meter.step(reports))
        metrics.update(
            {
                keys.TIME_STEP_S: time.perf_counter() - started,
                keys.ROLLOUT_WORKERS: runtime.fleet.size,
                keys.ROLLOUT_RESTARTS: runtime.fleet.restarts,
                keys.ROLLOUT_IN_FLIGHT: snapshot["running"],
                keys.BUFFER_BACKLOG: snapshot["backlog"],
                keys.BUFFER_QUEUE_DEPTH: stats.undelivered,
                keys.BUFFER_PENDING: stats.pending,
                keys.BUFFER_DEAD_LETTERS: stats.dead_letters,
            }
        )
        for hook in self.hooks.step_metrics:
            metrics.update(hook(step, runtime))
        self._read_orders()
        checkpoint = None
        # The record goes before the commit: a SIGKILL between them leaves a record past the
        # checkpoint, which the resume drops and writes again, never a committed step without one.
        # A stop signal waits for both.
        with interrupts.deferred():
            runtime.writer.write(step, metrics)
            if self._checkpoint_due(step):
                checkpoint = self._checkpoint = Path(self._on_learner("save_checkpoint"))
                stats = runtime.buffer.stats()  # the checkpoint acknowledged what it holds
        stopping = self._orders.stop is StopMode.GRACEFUL
        status = {
            "job": runtime.config.name,
            "state": (JobState.STOPPING if stopping else JobState.RUNNING).value,
            "total": self.total,
            "checkpoint": str(self._checkpoint) if self._checkpoint else None,
            "workers": with_engine_versions(runtime.fleet.roster(), reports),
            "errors": list(runtime.fleet.errors),
            **status_from_metrics(metrics),
            "buffer": {
                "queue_depth": stats.undelivered,
                "pending": stats.pending,
                "dead_letters": stats.dead_letters,
            },
        }
        self._report(status)
        report = StepReport(step, self.total, metrics, checkpoint, status)
        for hook in self.hooks.on_step:
            hook(report)

    def _checkpoint_due(self, step: int) -> bool:
        every = self.runtime.config.trainer.checkpoint_every
        # Entries are trimmed once committed: a stream over its budget commits early.
        over_budget = (
            self.runtime.buffer.memory_bytes() > self.runtime.config.buffer.memory_budget_mb << 20
        )
        stopping = self._orders.stop is StopMode.GRACEFUL
        return bool(every and step % every == 0) or step == self.total or over_budget or stopping

    def _report(self, status: dict[str, Any]) -> None:
        """To job control (what `relayrl status` reads live) and status.json (once it ended)."""
        runtime = self.runtime
        runtime.final_status = {**runtime.final_status, **status}
        write_status_file(runtime.output_dir, runtime.final_status)
        ray.get(runtime.job_control.report.remote(status), timeout=CALL_TIMEOUT_S)

    def _read_orders(self) -> None:
        self._orders = ray.get(self.runtime.job_control.orders.remote(), timeout=CALL_TIMEOUT_S)
        if self._orders.stop is StopMode.NOW:
            raise JobInterrupted("relayrl stop --now")

    def _tick(self) -> None:
        runtime = self.runtime
        fleet = runtime.fleet
        fleet.supervise()
        self._read_orders()
        desired = self._orders.desired_workers
        if desired != fleet.size:
            log.info("scaling rollout workers %d -> %d", fleet.size, desired)
            fleet.scale_to(desired)
        # The roster changes between steps (deaths, scaling); `relayrl status` sees it live.
        runtime.job_control.report.remote(
            {
                "workers": with_engine_versions(fleet.roster(), self._reports),
                "errors": list(fleet.errors),
            }
        )

    def _on_learner(self, method: str) -> Any:
        """Call `method` on every learner rank, supervising workers and the embedded Redis
        while it runs (a learner waiting on a dead Redis needs the driver to restart it)."""
        self._tick()
        learner = self.runtime.learner
        refs = [getattr(rank, method).remote() for rank in learner.ranks]
        # The learner gives up by itself after batch_timeout_s; this bounds a hung collective.
        deadline = time.monotonic() + self.runtime.config.learner.batch_timeout_s + CALL_TIMEOUT_S
        while True:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=SUPERVISE_EVERY_S)
            if len(done) == len(refs):
                return ray.get(refs)[0]
            self._tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner {method} did not finish in time; see its logs")
