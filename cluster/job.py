"""The driver: wires Redis, Ray, the learner group, the controller and the rollout fleet, then
runs the one training loop. Its mode (synchronous or k-stale asynchronous) is only the
controller's admission rule; nothing here forks on it."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import yaml
from tqdm import tqdm

from relayrl.actors.engine import SamplingSettings
from relayrl.actors.rollout_worker import WorkerSettings
from relayrl.cluster.controller import ControllerGate, RolloutController
from relayrl.cluster.embedded_redis import EmbeddedRedis
from relayrl.cluster.learner_group import LearnerGroup
from relayrl.cluster.ray_runtime import ray_session
from relayrl.cluster.redis_buffer import RedisStreamBuffer
from relayrl.cluster.rollout_fleet import RolloutFleet
from relayrl.cluster.weight_store import ObjectStoreWeights, WeightStore
from relayrl.config import JobConfig
from relayrl.envs.registry import validate_env_params
from relayrl.learner.deepspeed_learner import LearnerSettings
from relayrl.metrics import MetricsWriter
from relayrl.models import resolve_model
from relayrl.plot import plot_rewards

log = logging.getLogger(__name__)

# How long a remote call that should be quick may take before the job reports it hung.
CALL_TIMEOUT_S = 900.0
SUPERVISE_EVERY_S = 2.0


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


def validate_job(config: JobConfig) -> None:
    """Checks that need more than the schema; raises ValueError naming the field."""
    validate_env_params(config.env.name, config.env.params)
    if config.batch_size < config.learner.num_ranks:
        raise ValueError(
            f"trainer.prompts_per_step x rollout.group_size = {config.batch_size} is smaller "
            f"than learner.num_ranks = {config.learner.num_ranks}"
        )
    if config.rollout.engine != "transformers":
        raise ValueError(f"rollout.engine {config.rollout.engine!r} is not available yet")


def learner_settings(config: JobConfig, model_path: str, output_dir: Path) -> LearnerSettings:
    lc = config.learner
    return LearnerSettings(
        rank=0,
        world_size=lc.num_ranks,
        model_path=model_path,
        dtype=config.model.dtype,
        zero_stage=lc.zero_stage,
        lr=lc.lr,
        betas=lc.betas,
        weight_decay=lc.weight_decay,
        warmup_steps=lc.warmup_steps,
        grad_clip=lc.grad_clip,
        micro_batch_tokens=lc.micro_batch_tokens,
        gradient_checkpointing=lc.gradient_checkpointing,
        torch_threads=lc.torch_threads,
        group_size=config.rollout.group_size,
        prompts_per_step=config.trainer.prompts_per_step,
        temperature=config.rollout.sampling.temperature,
        algorithm=lc.algorithm,
        checkpoint_dir=str(output_dir / "checkpoints"),
        keep_checkpoints=config.trainer.keep_checkpoints,
        batch_timeout_s=lc.batch_timeout_s,
        read_block_ms=config.buffer.read_block_ms,
        seed=config.trainer.seed,
    )


def worker_settings_factory(config: JobConfig, model_path: str):
    sampling = config.rollout.sampling

    def make(worker_id: str) -> WorkerSettings:
        return WorkerSettings(
            worker_id=worker_id,
            model_path=model_path,
            engine=config.rollout.engine,
            dtype=config.model.dtype,
            torch_threads=config.rollout.torch_threads,
            group_size=config.rollout.group_size,
            sampling=SamplingSettings(
                max_new_tokens=sampling.max_new_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
            ),
            env_name=config.env.name,
            env_params=dict(config.env.params),
            seed=config.trainer.seed,
        )

    return make


def local_cpus(config: JobConfig) -> int:
    """Logical CPUs for a local Ray instance: enough to place every actor we ask for."""
    wanted = (
        config.learner.num_ranks * config.learner.cpus_per_rank
        + config.rollout.num_workers * config.rollout.cpus_per_worker
    )
    return config.ray.num_cpus or max(2, int(wanted + 0.999) + 1)


@contextmanager
def progress(total: int, start: int) -> Iterator[Any]:
    bar = tqdm(
        total=total,
        initial=start,
        desc="train",
        unit="step",
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


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
        f"train={metrics['time/train_s']:.1f}s"
    )


def _train_step(learner: LearnerGroup, fleet: RolloutFleet) -> dict[str, Any]:
    """Run one learner step while keeping the rollout fleet supervised."""
    refs = [rank.train_step.remote() for rank in learner.ranks]
    # The learner itself gives up after batch_timeout_s; this bounds a hung collective.
    deadline = time.monotonic() + 2 * learner.call_timeout_s
    while True:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=SUPERVISE_EVERY_S)
        if len(done) == len(refs):
            return ray.get(refs)[0]
        fleet.supervise()
        if time.monotonic() > deadline:
            raise TimeoutError("learner step did not finish in time; see the learner logs")


def run_job(config: JobConfig) -> JobResult:
    validate_job(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    model_path = resolve_model(config.model.path)
    total = config.trainer.steps

    with ExitStack() as stack:
        if config.buffer.url:
            redis_url = config.buffer.url
        else:
            redis_url = stack.enter_context(EmbeddedRedis(output_dir / "redis")).url
        buffer = RedisStreamBuffer(
            redis_url,
            config.stream_name,
            maxlen=config.buffer.maxlen,
            trim_acknowledged=config.buffer.trim_acknowledged,
        )
        buffer.ensure_group()
        stack.enter_context(ray_session(local_cpus(config)))

        weights = ObjectStoreWeights(WeightStore.remote(), timeout_s=CALL_TIMEOUT_S)
        controller = RolloutController.remote(config.batch_size, config.trainer.max_staleness)
        log.info(
            "starting %d learner rank(s) (DeepSpeed ZeRO-%d)",
            config.learner.num_ranks,
            config.learner.zero_stage,
        )
        learner = LearnerGroup(
            learner_settings(config, model_path, output_dir),
            buffer.with_consumer("learner-0"),
            weights,
            cpus_per_rank=config.learner.cpus_per_rank,
            call_timeout_s=CALL_TIMEOUT_S,
        )
        learner.publish()
        fleet = RolloutFleet(
            worker_settings_factory(config, model_path),
            buffer,
            weights,
            ControllerGate(controller),
            controller,
            cpus_per_worker=config.rollout.cpus_per_worker,
            restart_budget=config.rollout.max_worker_restarts,
        )
        fleet.scale_to(config.rollout.num_workers)
        writer = MetricsWriter(output_dir, tensorboard=config.output.tensorboard)
        checkpoint: Path | None = None
        try:
            with progress(total, 0) as bar:
                for step in range(1, total + 1):
                    started = time.perf_counter()
                    metrics = _train_step(learner, fleet)
                    ray.get(controller.set_version.remote(metrics["version"]))
                    snapshot = ray.get(controller.snapshot.remote())
                    stats = buffer.stats()
                    metrics.update(
                        {
                            "time/step_s": time.perf_counter() - started,
                            "rollout/workers": fleet.size,
                            "rollout/restarts": fleet.restarts,
                            "rollout/in_flight": snapshot["running"],
                            "buffer/pending": stats.pending,
                            "buffer/undelivered": stats.undelivered,
                            "buffer/dead_letters": stats.dead_letters,
                        }
                    )
                    if (
                        config.trainer.checkpoint_every
                        and step % config.trainer.checkpoint_every == 0
                    ):
                        checkpoint = Path(learner.save_checkpoint())
                    writer.write(step, metrics)
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}")
                    log.info(_status_line(metrics, total))
            if checkpoint is None or not checkpoint.name.endswith(f"{total:06d}"):
                checkpoint = Path(learner.save_checkpoint())
        finally:
            ray.get(controller.stop.remote())
            worker_reports = fleet.stop(timeout_s=120.0)
            writer.close()
    plot = None
    if config.output.plot:
        plot = plot_rewards(writer.jsonl_path, output_dir / "reward_curve.png", config.name)
    return JobResult(
        output_dir=output_dir,
        checkpoint=checkpoint / "hf" if checkpoint else None,
        metrics=writer.jsonl_path,
        plot=plot,
        steps=total,
        redis_url=redis_url,
        stream=config.stream_name,
        worker_reports=worker_reports,
    )
