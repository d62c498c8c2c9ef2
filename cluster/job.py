"""The driver: wires Redis, Ray, the learner group, the controller and the rollout fleet, then
runs the one training loop. Its mode (synchronous or k-stale asynchronous) is only the
controller's admission rule; nothing here forks on it."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
import yaml
from tqdm import tqdm

from relayrl.cluster.controller import (
    RAY_ADDRESS_FILE,
    ControllerGate,
    ControllerRefill,
    RolloutController,
    controller_name,
)
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.job_settings import (
    learner_settings,
    local_cpus,
    weight_transport,
    worker_settings_factory,
)
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.pipeline_meter import PipelineMeter
from relayrl.cluster.preflight import preflight
from relayrl.cluster.ray_runtime import ray_session
from relayrl.cluster.redis_buffer import RedisStreamBuffer, write_buffer_location
from relayrl.cluster.redis_password import RedisPassword
from relayrl.cluster.rollout_fleet import RolloutFleet
from relayrl.cluster.session_guard import (
    RaySessionGuard,
    end_session_left_behind,
    local_session_dir,
)
from relayrl.cluster.shared_output import check_shared_output
from relayrl.cluster.weight_store import WeightStore
from relayrl.config import JobConfig
from relayrl.errors import JobConfigError
from relayrl.learner.checkpoint import latest_checkpoint
from relayrl.metrics import MetricsWriter
from relayrl.models import resolve_model
from relayrl.plot import plot_rewards

log = logging.getLogger(__name__)

# How long a remote call that should be quick may take before the job reports it hung.
CALL_TIMEOUT_S = 900.0
SUPERVISE_EVERY_S = 2.0


class RunExistsError(JobConfigError):
    """A fresh run would mix with a previous run's checkpoints or buffer."""


@dataclass(frozen=True)
class JobResult:
    output_dir: Path
    checkpoint: Path | None
    metrics: Path
    plot: Path | None
    steps: int
    redis_url: str
    stream: str
    worker_reports: list[dict[str, Any]]


def check_local_gpus(config: JobConfig, available: float) -> None:
    """A local Ray instance never grows: asking it for GPUs it lacks would wait forever."""
    wanted = (
        config.learner.num_ranks * config.learner.gpus_per_rank
        + config.rollout.num_workers * config.rollout.gpus_per_worker
    )
    if wanted > available:
        raise JobConfigError(
            f"the job asks for {wanted:g} GPUs (learner.gpus_per_rank x learner.num_ranks + "
            f"rollout.gpus_per_worker x rollout.num_workers) and this machine's Ray has "
            f"{available:g}; set RAY_ADDRESS to a cluster with GPUs or drop the GPU settings"
        )


def _status_line(metrics: dict[str, Any], total: int) -> str:
    channels = " ".join(
        f"{k.removeprefix('reward/')}={v:.2f}"
        for k, v in sorted(metrics.items())
        if k.startswith("reward/") and k not in ("reward/mean", "reward/std")
    )
    return (
        f"step {metrics['step']}/{total} reward={metrics['reward/mean']:.3f} {channels} "
        f"len={metrics['response/length_mean']:.0f} loss={metrics['loss/total']:+.4f} "
        f"stale<={metrics['staleness/max']} wait={metrics['time/wait_batch_s']:.1f}s "
        f"train={metrics['time/train_s']:.1f}s step={metrics['time/step_s']:.1f}s"
    )


class Job:
    """One run of the training loop over parts that are already started."""

    def __init__(self, config: JobConfig, output_dir: Path, resume: bool) -> None:
        self.config = config
        self.output_dir = output_dir
        self.resume = resume
        self.redis: EmbeddedRedis | None = None

    def _check_fresh(self, buffer: RedisStreamBuffer) -> None:
        if self.resume:
            return
        held = buffer.stats().length
        if latest_checkpoint(self.output_dir / "checkpoints") or held:
            raise RunExistsError(
                f"output.dir {self.output_dir} (stream {buffer.stream!r}, {held} entries) holds "
                "a previous run: add --resume to continue it, or set output.dir and name for a "
                "new one"
            )

    def _start_buffer(self, stack: ExitStack) -> tuple[str, RedisStreamBuffer]:
        config = self.config
        if config.buffer.url:
            url = config.buffer.url
        else:
            self.redis = EmbeddedRedis(
                self.output_dir / "redis", fsync=config.buffer.fsync, watchdog_s=1.0
            )
            url = stack.enter_context(self.redis).url
        buffer = RedisStreamBuffer(
            url,
            config.stream_name,
            maxlen=config.buffer.maxlen,
            trim_acknowledged=config.buffer.trim_acknowledged,
            password=RedisPassword.from_config(config.buffer),
        )
        buffer.ensure_group()
        self._check_fresh(buffer)
        write_buffer_location(self.output_dir, url if self.redis else None, buffer.stream)
        return url, buffer

    def _supervise(self, fleet: RolloutFleet, controller: Any) -> None:
        fleet.supervise()
        desired = ray.get(controller.desired_workers.remote(), timeout=CALL_TIMEOUT_S)
        if desired != fleet.size:
            log.info("scaling rollout workers %d -> %d", fleet.size, desired)
            fleet.scale_to(desired)

    def _on_learner(
        self, method: str, learner: LearnerGroup, fleet: RolloutFleet, controller: Any
    ) -> Any:
        """Call `method` on every learner rank, supervising workers and the embedded Redis
        while it runs (a learner waiting on a dead Redis needs the driver to restart it)."""
        self._supervise(fleet, controller)
        refs = [getattr(rank, method).remote() for rank in learner.ranks]
        # The learner gives up by itself after batch_timeout_s; this bounds a hung collective.
        deadline = time.monotonic() + self.config.learner.batch_timeout_s + CALL_TIMEOUT_S
        while True:
            done, _ = ray.wait(refs, num_returns=len(refs), timeout=SUPERVISE_EVERY_S)
            if len(done) == len(refs):
                return ray.get(refs)[0]
            self._supervise(fleet, controller)
            if time.monotonic() > deadline:
                raise TimeoutError(f"learner {method} did not finish in time; see its logs")

    def run(self) -> JobResult:
        config = self.config
        total = config.trainer.steps
        model_path = resolve_model(config.model.path)
        with ExitStack() as stack:
            end_session_left_behind(self.output_dir)
            redis_url, buffer = self._start_buffer(stack)
            guard = stack.enter_context(RaySessionGuard(self.output_dir))
            if stack.enter_context(ray_session(local_cpus(config))):
                guard.watch(local_session_dir())
                check_local_gpus(config, ray.cluster_resources().get("GPU", 0))
            hosts = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
            check_shared_output(config.output_dir, hosts, Path("/proc/mounts").read_text())
            weights = weight_transport(config, WeightStore.remote(), CALL_TIMEOUT_S)
            log.info(
                "starting %d learner rank(s) (DeepSpeed ZeRO-%d)",
                config.learner.num_ranks,
                config.learner.zero_stage,
            )
            controller = RolloutController.options(name=controller_name(config.name)).remote(
                config.batch_size,
                config.trainer.max_staleness,
                buffer,
                desired_workers=config.rollout.num_workers,
            )
            # `relayrl scale` reads this to reach the controller of a running job.
            (self.output_dir / RAY_ADDRESS_FILE).write_text(ray.get_runtime_context().gcs_address)
            learner = LearnerGroup(
                learner_settings(config, model_path, self.output_dir),
                buffer.with_consumer("learner-0"),
                weights,
                ControllerRefill(controller),
                cpus_per_rank=config.learner.cpus_per_rank,
                call_timeout_s=CALL_TIMEOUT_S,
                gpus_per_rank=config.learner.gpus_per_rank,
            )
            step = version = 0
            latest = latest_checkpoint(self.output_dir / "checkpoints")
            if self.resume and latest is not None:
                restored = learner.restore(str(latest))
                step, version = restored["step"], restored["version"]
                log.info("resumed from %s (step %d, policy version %d)", latest, step, version)
            learner.publish()
            # Admission counts the stream's unbooked entries; a lost learner's bookings are void.
            buffer.reset_booked()
            ray.get(controller.set_version.remote(version), timeout=CALL_TIMEOUT_S)
            fleet = RolloutFleet(
                worker_settings_factory(config, model_path, step),
                buffer,
                weights,
                ControllerGate(controller),
                controller,
                cpus_per_worker=config.rollout.cpus_per_worker,
                restart_budget=config.rollout.max_worker_restarts,
                gpus_per_worker=config.rollout.gpus_per_worker,
                engine_world_size=config.rollout.vllm.tensor_parallel_size,
            )
            fleet.scale_to(config.rollout.num_workers)
            writer = MetricsWriter(self.output_dir, tensorboard=config.output.tensorboard)
            checkpoint = latest
            try:
                checkpoint = self._loop(step, total, learner, fleet, controller, buffer, writer)
            finally:
                ray.get(controller.stop.remote())
                worker_reports = fleet.stop(timeout_s=120.0)
                writer.close()
        plot = None
        if config.output.plot:
            plot = plot_rewards(
                writer.jsonl_path, self.output_dir / "reward_curve.png", config.name
            )
        return JobResult(
            output_dir=self.output_dir,
            checkpoint=checkpoint / "hf" if checkpoint else None,
            metrics=writer.jsonl_path,
            plot=plot,
            steps=total,
            redis_url=redis_url,
            stream=config.stream_name,
            worker_reports=worker_reports,
        )

    def _loop(
        self,
        start: int,
        total: int,
        learner: LearnerGroup,
        fleet: RolloutFleet,
        controller: Any,
        buffer: RedisStreamBuffer,
        writer: MetricsWriter,
    ) -> Path | None:
        every = self.config.trainer.checkpoint_every
        meter = PipelineMeter()
        checkpoint: Path | None = None
        bar = tqdm(total=total, initial=start, desc="train", unit="step",
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)  # fmt: skip
        with bar:
            for step in range(start + 1, total + 1):
                started = time.perf_counter()
                metrics = self._on_learner("train_step", learner, fleet, controller)
                ray.get(controller.set_version.remote(metrics["version"]))
                reports = fleet.reports_now(timeout_s=30.0)
                stats = buffer.stats()
                snapshot = ray.get(controller.snapshot.remote())
                metrics.update(meter.step(reports, metrics))
                metrics.update(
                    {
                        "time/step_s": time.perf_counter() - started,
                        "rollout/workers": fleet.size,
                        "rollout/restarts": fleet.restarts,
                        "rollout/in_flight": snapshot["running"],
                        "buffer/queue_depth": stats.undelivered,
                        "buffer/pending": stats.pending,
                        "buffer/dead_letters": stats.dead_letters,
                    }
                )
                # Entries are trimmed once committed: a stream over its budget commits early.
                over_budget = buffer.memory_bytes() > self.config.buffer.memory_budget_mb << 20
                if (every and step % every == 0) or step == total or over_budget:
                    checkpoint = Path(
                        self._on_learner("save_checkpoint", learner, fleet, controller)
                    )
                writer.write(step, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
                log.info(_status_line(metrics, total))
        return checkpoint


def run_job(config: JobConfig, resume: bool = False) -> JobResult:
    preflight(config)  # the CLI ran it already; library callers get it here, in milliseconds
    output_dir = Path(config.output_dir)
    if config.buffer.url and urlsplit(config.buffer.url).password:
        log.warning(
            "buffer.url carries a password: config.yaml and logs show it redacted, but it "
            "stays wherever the URL was typed; use buffer.password_env or buffer.password_file"
        )
    # The dump redacts any password in buffer.url; password_env/file name only where it is.
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return Job(config, output_dir, resume).run()
