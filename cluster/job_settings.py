"""Map the job config onto the settings each part is built from."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from relayrl.actors.agent_loop import AgentSettings
from relayrl.actors.engine import SamplingSettings
from relayrl.actors.rollout_worker import WorkerSettings
from relayrl.actors.vllm_settings import VLLMSettings
from relayrl.cluster.nccl_weights import NcclPushWeights
from relayrl.cluster.weight_store import ObjectStoreWeights
from relayrl.config import JobConfig
from relayrl.learner.deepspeed_learner import LearnerSettings


def torch_threads(setting: int | Literal["auto"], cpus: float) -> int:
    """Threads for an actor with `cpus` Ray CPUs; auto: one per whole core, at least one."""
    return max(1, math.floor(cpus)) if setting == "auto" else setting


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
        torch_threads=torch_threads(lc.torch_threads, lc.cpus_per_rank),
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
        gpus_per_rank=lc.gpus_per_rank,
    )


def weight_transport(
    config: JobConfig, store: Any, call_timeout_s: float
) -> ObjectStoreWeights | NcclPushWeights:
    """The publisher/subscriber pair `rollout.weight_transport` names, over `store`."""
    if config.rollout.weight_transport == "nccl":
        vc = config.rollout.vllm
        return NcclPushWeights(
            store,
            bucket_bytes=vc.weight_bucket_mib << 20,
            timeout_s=vc.weight_sync_timeout_s,
            call_timeout_s=call_timeout_s,
        )
    return ObjectStoreWeights(store, timeout_s=call_timeout_s)


def vllm_settings(config: JobConfig, model_path: str) -> VLLMSettings:
    vc = config.rollout.vllm
    return VLLMSettings(
        model=model_path,
        dtype=config.model.dtype,
        tensor_parallel_size=vc.tensor_parallel_size,
        gpu_memory_utilization=vc.gpu_memory_utilization,
        max_model_len=vc.max_model_len,
        seed=config.trainer.seed,
        weight_transport="nccl" if config.rollout.weight_transport == "nccl" else "shared_memory",
        cpu_kv_cache_bytes=int(vc.cpu_kv_cache_gib * (1 << 30)),
        weight_bucket_bytes=vc.weight_bucket_mib << 20,
        weight_sync_timeout_s=vc.weight_sync_timeout_s,
    )


def worker_settings_factory(
    config: JobConfig, model_path: str, start_step: int
) -> Callable[[str], WorkerSettings]:
    sampling = config.rollout.sampling
    # A resumed job draws new tasks instead of replaying the ones it drew before the crash.
    seed = config.trainer.seed + 7919 * start_step
    vllm = vllm_settings(config, model_path) if config.rollout.engine == "vllm" else None
    rollout = config.rollout
    concurrent_groups = (
        config.trainer.prompts_per_step
        if rollout.max_concurrent_groups == "auto"
        else rollout.max_concurrent_groups
    )

    def make(worker_id: str) -> WorkerSettings:
        return WorkerSettings(
            worker_id=worker_id,
            model_path=model_path,
            engine=config.rollout.engine,
            dtype=config.model.dtype,
            torch_threads=torch_threads(rollout.torch_threads, rollout.cpus_per_worker),
            group_size=rollout.group_size,
            max_concurrent_groups=concurrent_groups,
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
            vllm=vllm,
            # A joining worker waits at most one learner step plus the push itself.
            weight_wait_s=config.learner.batch_timeout_s
            + config.rollout.vllm.weight_sync_timeout_s,
        )

    return make


def local_cpus(config: JobConfig) -> int:
    """Logical CPUs for a local Ray instance: enough to place every actor we ask for."""
    wanted = (
        config.learner.num_ranks * config.learner.cpus_per_rank
        + config.rollout.num_workers * config.rollout.cpus_per_worker
    )
    return config.ray.num_cpus or max(2, int(wanted + 0.999) + 1)
