"""Map the job config onto the settings each part is built from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from relayrl.actors.agent_loop import AgentSettings
from relayrl.actors.engine import SamplingSettings
from relayrl.actors.rollout_worker import WorkerSettings
from relayrl.config import JobConfig
from relayrl.learner.deepspeed_learner import LearnerSettings


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
        max_staleness=config.trainer.max_staleness,
        seed=config.trainer.seed,
    )


def worker_settings_factory(
    config: JobConfig, model_path: str, start_step: int
) -> Callable[[str], WorkerSettings]:
    sampling = config.rollout.sampling
    # A resumed job draws new tasks instead of replaying the ones it drew before the crash.
    seed = config.trainer.seed + 7919 * start_step

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
            agent=AgentSettings(**config.rollout.agent.model_dump()),
            weight_update=config.rollout.weight_update,
            seed=seed,
        )

    return make


def local_cpus(config: JobConfig) -> int:
    """Logical CPUs for a local Ray instance: enough to place every actor we ask for."""
    wanted = (
        config.learner.num_ranks * config.learner.cpus_per_rank
        + config.rollout.num_workers * config.rollout.cpus_per_worker
    )
    return config.ray.num_cpus or max(2, int(wanted + 0.999) + 1)
