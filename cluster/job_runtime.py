"""The started parts of one job: Redis and the buffer, Ray, the weight store, the controllers,
the learner group and the rollout fleet. `started_job` starts them in order and tears them
down in reverse on any exit, so the training loop only ever sees parts that are running."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from relayrl.cluster.colocated_fleet import ColocatedFleet, ColocatedLearnerGroup, colocated_cpus
from relayrl.cluster.controller import ControllerGate, ControllerRefill, RolloutController
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.job_control import RAY_ADDRESS_FILE, JobControl, JobState, job_control_name
from relayrl.cluster.job_status import write_status_file
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.placement import on_driver_node
from relayrl.cluster.placement_rule import job_placement, local_cores, on_cluster
from relayrl.cluster.preflight import check_local_gpus
from relayrl.cluster.ray_runtime import ray_session
from relayrl.cluster.redis_buffer import RedisStreamBuffer, write_buffer_location
from relayrl.cluster.redis_password import RedisPassword
from relayrl.cluster.rollout_fleet import RolloutFleet
from relayrl.cluster.session_guard import (
    RaySessionGuard,
    end_session_left_behind,
    local_session_dir,
)
from relayrl.cluster.sft_stage import run_sft_stage
from relayrl.cluster.shared_output import check_shared_output
from relayrl.config import JobConfig
from relayrl.errors import JobConfigError
from relayrl.learner.checkpoint import check_resumable, latest_checkpoint, read_state
from relayrl.metrics import MetricsWriter
from relayrl.models import resolve_model
from relayrl.sft_config import sft_dir
from relayrl.trackers import open_trackers

if TYPE_CHECKING:
    from relayrl.cluster.weights.transport import WeightTransport

log = logging.getLogger(__name__)

# How long a remote call that should be quick may take before the job reports it hung.
CALL_TIMEOUT_S = 900.0
# How long stopping workers may take to finish the group they are playing.
FLEET_STOP_S = 120.0
COLOCATED_FLEET_IS_FIXED = (
    "rollout.placement is colocated: one in-process rollout worker shares the learner's actor; "
    "start the job with rollout.placement: separate to scale its workers"
)


class RunExistsError(JobConfigError):
    """A fresh run would mix with a previous run's checkpoints or buffer."""


@dataclass
class JobRuntime:
    """Handles on the running parts, and where the run starts from."""

    config: JobConfig
    output_dir: Path
    redis_url: str
    buffer: RedisStreamBuffer
    controller: Any
    job_control: Any
    learner: LearnerGroup
    fleet: RolloutFleet | ColocatedFleet
    writer: MetricsWriter
    start_step: int
    start_version: int
    restored: Path | None
    # Set by whoever runs the loop; reported to job control once the fleet is down.
    final_state: JobState = JobState.FAILED
    final_status: dict[str, Any] = field(default_factory=dict)


def _check_fresh(config: JobConfig, output_dir: Path, buffer: RedisStreamBuffer) -> None:
    held = buffer.stats().length
    if latest_checkpoint(output_dir / "checkpoints") or held:
        raise RunExistsError(
            f"output.dir {output_dir} (stream {buffer.stream!r}, {held} entries) holds "
            "a previous run: add --resume to continue it, or set output.dir and name for a "
            "new one"
        )


def _start_buffer(
    config: JobConfig, output_dir: Path, resume: bool, stack: ExitStack
) -> tuple[str, RedisStreamBuffer]:
    embedded = config.buffer.url is None
    if config.buffer.url:
        url = config.buffer.url
    else:
        redis = EmbeddedRedis(output_dir / "redis", fsync=config.buffer.fsync, watchdog_s=1.0)
        url = stack.enter_context(redis).url
    buffer = RedisStreamBuffer(
        url,
        config.stream_name,
        maxlen=config.buffer.maxlen,
        trim_acknowledged=config.buffer.trim_acknowledged,
        password=RedisPassword.from_config(config.buffer),
    )
    buffer.ensure_group()
    if not resume:
        _check_fresh(config, output_dir, buffer)
    write_buffer_location(output_dir, url if embedded else None, buffer.stream)
    return url, buffer


def _start_ray(config: JobConfig, output_dir: Path, stack: ExitStack) -> None:
    guard = stack.enter_context(RaySessionGuard(output_dir))
    if stack.enter_context(ray_session(config.local_cpus)):
        guard.watch(local_session_dir())
        check_local_gpus(config, ray.cluster_resources().get("GPU", 0))
    hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    check_shared_output(config.output_dir, hosts, Path("/proc/mounts").read_text())


def _publish_address(output_dir: Path, stack: ExitStack) -> None:
    """The CLI reads this file to reach the job; it goes when the job does."""
    address_file = output_dir / RAY_ADDRESS_FILE
    address_file.write_text(ray.get_runtime_context().gcs_address)
    stack.callback(address_file.unlink, missing_ok=True)


def _stop_fleet(controller: Any, fleet: RolloutFleet) -> None:
    ray.get(controller.stop.remote())
    fleet.stop(timeout_s=FLEET_STOP_S)


def _separate_fleet(
    config: JobConfig,
    model_path: str,
    start_step: int,
    buffer: RedisStreamBuffer,
    weights: WeightTransport,
    controller: Any,
) -> RolloutFleet:
    return RolloutFleet(
        config,
        model_path,
        start_step,
        buffer,
        weights.subscriber,
        ControllerGate(controller),
        controller,
        engine_roster=weights.roster,
    )


def _report_end(runtime: JobRuntime) -> None:
    workers = [{**w, "state": "stopped"} for w in runtime.final_status.get("workers", [])]
    status = {**runtime.final_status, "state": runtime.final_state.value, "workers": workers}
    write_status_file(runtime.output_dir, status)
    try:
        ray.get(runtime.job_control.report.remote(status), timeout=CALL_TIMEOUT_S)
    except RayError as exc:  # the run's own failure is the one to raise, not this
        log.warning("could not report the job's end to its job control actor: %s", exc)


@contextmanager
def started_job(config: JobConfig, output_dir: Path, resume: bool) -> Iterator[JobRuntime]:
    """Start every part of the job; on any exit, stop them in reverse order."""
    model_path = resolve_model(config.model.path)
    # The one place the placement forks: which learner group and fleet the loop is given.
    colocated = job_placement(config) == "colocated"
    workers = 1 if colocated else config.rollout.num_workers
    if resume:  # in milliseconds, before anything starts
        for root in (output_dir / "checkpoints", sft_dir(config.output_dir)):
            check_resumable(root, config.learner.resolved_zero_stage)
    with ExitStack() as stack:
        end_session_left_behind(output_dir)
        redis_url, buffer = _start_buffer(config, output_dir, resume, stack)
        _start_ray(config, output_dir, stack)
        weights: WeightTransport | None = None
        if not colocated:
            # Imported here: its weight store's module needs torch, which a colocated job's
            # driver never loads.
            from relayrl.cluster.weights.transport import build_weight_transport

            weights = build_weight_transport(config, CALL_TIMEOUT_S)
        controller = RolloutController.options(**on_driver_node()).remote(
            config.batch_size, config.trainer.max_staleness, buffer, version=None
        )
        job_control = JobControl.options(
            name=job_control_name(config.name), **on_driver_node()
        ).remote(workers, COLOCATED_FLEET_IS_FIXED if colocated else None)
        _publish_address(output_dir, stack)
        log.info(
            "starting %d learner rank(s) (DeepSpeed ZeRO-%d)",
            config.learner.num_ranks,
            config.learner.resolved_zero_stage,
        )
        consumer = buffer.with_consumer("learner-0")
        restored = latest_checkpoint(output_dir / "checkpoints") if resume else None
        step = read_state(restored)["step"] if restored is not None else 0
        fleet: RolloutFleet | ColocatedFleet | None = None
        # Stops early workers if the start fails; handed over to the stop registered below.
        start_failed = stack.enter_context(ExitStack())
        # Separate workers start while the learner sets up: admission stays closed until the
        # first publish, so they sample nothing before it. Not before an SFT stage, whose
        # weights the workers start from.
        if weights is not None and config.trainer.sft is None:
            fleet = _separate_fleet(config, model_path, step, buffer, weights, controller)
            start_failed.callback(_stop_fleet, controller, fleet)
        learner = (
            ColocatedLearnerGroup(
                config,
                model_path,
                consumer,
                ControllerRefill(controller),
                CALL_TIMEOUT_S,
                cores=int(colocated_cpus(config)) if on_cluster() else local_cores(),
            )
            if weights is None
            else LearnerGroup(
                config,
                model_path,
                consumer,
                weights.publisher,
                ControllerRefill(controller),
                call_timeout_s=CALL_TIMEOUT_S,
                while_setting_up=None if fleet is None else partial(fleet.scale_to, workers),
            )
        )
        stack.callback(learner.kill)
        version = 0
        if restored is not None:
            state = learner.restore(str(restored))
            step, version = state["step"], state["version"]
            log.info("resumed from %s (step %d, policy version %d)", restored, step, version)
        # With an SFT stage no worker has started yet: they start from the fine-tuned weights,
        # never sample the base model into the buffer.
        sft_model = run_sft_stage(config, learner, resume, restored)
        worker_model = str(sft_model) if sft_model is not None else model_path
        learner.publish()
        # Admission counts the stream's unbooked entries; a lost learner's bookings are void.
        buffer.reset_booked()
        # Opens admission: the controller admits nothing before it knows the version.
        ray.get(controller.set_version.remote(version), timeout=CALL_TIMEOUT_S)
        if isinstance(learner, ColocatedLearnerGroup):
            fleet = ColocatedFleet(
                config,
                worker_model,
                step,
                buffer,
                ControllerGate(controller),
                controller,
                learner.actor,
                CALL_TIMEOUT_S,
            )
        elif fleet is None:
            assert weights is not None
            fleet = _separate_fleet(config, worker_model, step, buffer, weights, controller)
        trackers = open_trackers(
            config.output.loggers, config.name, output_dir, config.model_dump(mode="json")
        )
        writer = MetricsWriter(output_dir, config.output.tensorboard, trackers, after_step=step)
        stack.callback(writer.close)
        runtime = JobRuntime(
            config=config,
            output_dir=output_dir,
            redis_url=redis_url,
            buffer=buffer,
            controller=controller,
            job_control=job_control,
            learner=learner,
            fleet=fleet,
            writer=writer,
            start_step=step,
            start_version=version,
            restored=restored,
        )
        # Reverse order: the fleet stops, then job control and status.json hear the end.
        start_failed.pop_all()
        stack.callback(_report_end, runtime)
        stack.callback(_stop_fleet, controller, fleet)
        fleet.scale_to(workers)
        yield runtime
