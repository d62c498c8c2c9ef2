"""The DeepSpeed learner: one instance per rank, hosted as a Ray actor by the cluster.

Rank 0 reads whole groups from the buffer and shares them with the other ranks; every rank
trains on its shard; rank 0 publishes the new weights and, after a checkpoint is durable,
acknowledges the entries the checkpointed steps used.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from relayrl.algorithm_config import AlgorithmConfig
from relayrl.buffer import BufferEntry, TrajectoryConsumer
from relayrl.learner import checkpoint
from relayrl.learner.algorithms.build import build_advantage_estimator, build_objective
from relayrl.learner.algorithms.logprobs import token_entropy, token_logprobs
from relayrl.learner.algorithms.types import AdvantageInputs, LossInputs
from relayrl.learner.batching import pad_rows, plan_micro_batches
from relayrl.learner.full_state import full_state_dict
from relayrl.learner.intake import BatchIntake
from relayrl.trajectory import Trajectory, decode, encode
from relayrl.weights import WeightPublisher

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class LearnerSettings:
    rank: int
    world_size: int
    model_path: str
    dtype: str
    zero_stage: int
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    warmup_steps: int
    grad_clip: float
    micro_batch_tokens: int
    gradient_checkpointing: bool
    torch_threads: int
    group_size: int
    prompts_per_step: int
    temperature: float
    algorithm: AlgorithmConfig
    checkpoint_dir: str
    keep_checkpoints: int
    batch_timeout_s: float
    read_block_ms: int
    # Groups older than this many versions at read time are discarded (counted, never silent).
    max_staleness: int | None = None
    seed: int = 0


def deepspeed_config(settings: LearnerSettings) -> dict[str, Any]:
    return {
        # Micro-batching and accumulation are ours (token-budget packing); DeepSpeed only
        # needs consistent numbers here.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": settings.world_size,
        "gradient_clipping": settings.grad_clip,
        "zero_optimization": {"stage": settings.zero_stage},
        "bf16": {"enabled": settings.dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
    }


def _warmup(steps: int):
    return lambda step: min(1.0, (step + 1) / steps) if steps else 1.0


class DeepSpeedLearner:
    def __init__(
        self,
        settings: LearnerSettings,
        consumer: TrajectoryConsumer | None,
        publisher: WeightPublisher | None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self.settings = settings
        self.consumer = consumer
        self.publisher = publisher
        self.version = 0
        self.step = 0
        self.intake = (
            BatchIntake(
                consumer,
                settings.group_size,
                settings.prompts_per_step,
                settings.max_staleness,
                settings.batch_timeout_s,
                settings.read_block_ms,
            )
            if consumer is not None
            else None
        )
        self.engine: Any = None
        self.estimator = build_advantage_estimator(settings.algorithm.advantage)
        self.objective = build_objective(settings.algorithm)

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group and build the engine; every rank calls this concurrently."""
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        import deepspeed
        from transformers import AutoModelForCausalLM

        s = self.settings
        torch.manual_seed(s.seed)
        torch.set_num_threads(s.torch_threads)
        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(s.rank),
            LOCAL_RANK=str(s.rank),
            WORLD_SIZE=str(s.world_size),
        )
        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        model = AutoModelForCausalLM.from_pretrained(s.model_path, dtype=torch.float32)
        if s.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model.config.use_cache = False
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=s.lr, betas=s.betas, weight_decay=s.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(s.warmup_steps))
        self.engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(s),
        )
        self.pad_id = model.config.pad_token_id or model.config.eos_token_id or 0
        if isinstance(self.pad_id, list):
            self.pad_id = self.pad_id[0]
        return {"rank": s.rank, "parameters": sum(p.numel() for p in model.parameters())}

    # ---- data -------------------------------------------------------------------------

    def _shared_batch(self) -> tuple[list[Trajectory], list[BufferEntry]]:
        """Rank 0 reads; the others receive the same trajectories in the same order."""
        entries = self.intake.next_batch(self.version) if self.intake is not None else []
        payload = [[encode(e.trajectory) for e in entries]]
        if self.settings.world_size > 1:
            dist.broadcast_object_list(payload, src=0)
        return [decode(raw) for raw in payload[0]], entries

    # ---- training -----------------------------------------------------------------------

    def _my_rows(self, count: int) -> slice:
        s = self.settings
        per_rank = math.ceil(count / s.world_size)
        return slice(min(s.rank * per_rank, count), min((s.rank + 1) * per_rank, count))

    def train_step(self) -> dict[str, Any]:
        s = self.settings
        started = time.perf_counter()
        trajectories, entries = self._shared_batch()
        waited = time.perf_counter() - started

        full = pad_rows(trajectories, slice(None), self.pad_id)
        rewards = torch.tensor([t.reward for t in trajectories], dtype=torch.float32)
        group_index = {g: i for i, g in enumerate(dict.fromkeys(t.group_id for t in trajectories))}
        group_ids = torch.tensor([group_index[t.group_id] for t in trajectories])
        advantages = self.estimator(
            AdvantageInputs(rewards=rewards, group_ids=group_ids, loss_mask=full.loss_mask)
        ).advantages
        normalizer = self.objective.aggregation.normalizer(full.loss_mask)

        mine = self._my_rows(len(trajectories))
        lengths = [len(t.tokens) for t in trajectories[mine]]
        plans = [
            slice(mine.start + p.start, mine.start + p.stop)
            for p in plan_micro_batches(lengths, s.micro_batch_tokens)
        ]
        self.engine.train()
        sums: dict[str, float] = {}
        weight_total = 0.0
        loss_total = 0.0
        for index, rows in enumerate(plans):
            micro = pad_rows(trajectories, rows, self.pad_id)
            width = micro.input_ids.shape[1]
            self.engine.set_gradient_accumulation_boundary(index == len(plans) - 1)
            logits = self.engine(
                input_ids=micro.input_ids, attention_mask=micro.attention_mask
            ).logits
            inputs = LossInputs(
                logprobs=token_logprobs(logits, micro.input_ids, s.temperature),
                loss_mask=micro.loss_mask,
                old_logprobs=micro.old_logprobs,
                advantages=advantages[rows, :width],
                entropy=token_entropy(logits, s.temperature) if self._needs_entropy else None,
            )
            out = self.objective(inputs, normalizer)
            # DeepSpeed averages gradients over ranks; the normalizer already spans them all.
            self.engine.backward(out.loss * s.world_size, scale_wrt_gas=False)
            loss_total += float(out.loss.detach())
            tokens = float(micro.loss_mask.sum())
            weight_total += tokens
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0.0) + value * tokens
        if not plans:
            self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        trained = time.perf_counter() - started - waited

        metrics = self._batch_metrics(trajectories)
        metrics.update({f"loss/{k}": v / max(weight_total, 1.0) for k, v in sums.items()})
        metrics["loss/total"] = self._sum_over_ranks(loss_total)
        grad_norm = self.engine.get_global_grad_norm()
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["lr"] = float(self.engine.get_lr()[0])
        self.version += 1
        self.step += 1
        if self.intake is not None:
            discarded = self.intake.record_step(self.step, entries)
            metrics.update({f"discarded/{reason}": n for reason, n in discarded.items()})
            metrics["discarded/total"] = sum(discarded.values())
        publish_started = time.perf_counter()
        self.publish()
        metrics.update(
            {
                "step": self.step,
                "version": self.version,
                "time/wait_batch_s": waited,
                "time/train_s": trained,
                "time/publish_s": time.perf_counter() - publish_started,
            }
        )
        return metrics

    @property
    def _needs_entropy(self) -> bool:
        return self.settings.algorithm.entropy is not None

    def _sum_over_ranks(self, value: float) -> float:
        if self.settings.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())

    def _batch_metrics(self, trajectories: list[Trajectory]) -> dict[str, Any]:
        rewards = np.array([t.reward for t in trajectories])
        lengths = np.array([t.num_sampled_tokens for t in trajectories])
        sampled_versions = np.concatenate([t.sampled_versions() for t in trajectories])
        staleness = self.version - sampled_versions
        metrics: dict[str, Any] = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            "response/length_mean": float(lengths.mean()),
            "response/truncated_fraction": float(
                np.mean([t.finish_reason == "length" for t in trajectories])
            ),
            "staleness/max": int(staleness.max()),
            "staleness/mean": float(staleness.mean()),
            "batch/trajectories": len(trajectories),
            "batch/sampled_tokens": int(lengths.sum()),
            "batch/total_tokens": int(sum(len(t.tokens) for t in trajectories)),
            "batch/min_token_version": int(sampled_versions.min()),
        }
        channels = sorted({name for t in trajectories for name in t.reward_channels})
        for name in channels:
            values = [t.reward_channels.get(name, 0.0) for t in trajectories]
            metrics[f"reward/{name}"] = float(np.mean(values))
        return metrics

    # ---- weights and checkpoints -------------------------------------------------------

    def publish(self) -> dict[str, Any]:
        """Publish the current weights as `self.version` (all ranks take part in gathering)."""
        state = full_state_dict(self.engine.module, self.settings.zero_stage, self.settings.rank)
        if self.settings.rank != 0 or self.publisher is None:
            return {}
        info = self.publisher.publish(self.version, state)
        return {"version": info.version, "checksum": info.checksum, "bytes": info.num_bytes}

    def save_checkpoint(self) -> str:
        """Write a checkpoint, then acknowledge the entries its steps used."""
        from transformers import AutoTokenizer

        s = self.settings
        root = Path(s.checkpoint_dir)
        folder = checkpoint.step_dir(root, self.step)
        state = full_state_dict(self.engine.module, s.zero_stage, s.rank)
        if s.rank == 0:
            (folder / "hf").mkdir(parents=True, exist_ok=True)
            self.engine.module.save_pretrained(folder / "hf", state_dict=state)
            AutoTokenizer.from_pretrained(s.model_path).save_pretrained(folder / "hf")
        self.engine.save_checkpoint(str(folder / "deepspeed"), tag="engine")
        if s.rank == 0:
            checkpoint.write_state(folder, {"step": self.step, "version": self.version})
            # Ledger first, then `latest`, then acks: a crash between any two of them
            # re-delivers entries that the restored ledger does not count as trained.
            if self.intake is not None:
                self.intake.write_ledger(root)
            checkpoint.mark_latest(root, folder)
            if self.intake is not None:
                self.intake.acknowledge()
            checkpoint.prune(root, s.keep_checkpoints)
        if s.world_size > 1:
            dist.barrier()
        return str(folder)

    def restore(self, folder: str) -> dict[str, Any]:
        """Resume from a checkpoint: engine and optimizer state, step, version, ledger."""
        path = Path(folder)
        state = checkpoint.read_state(path)
        self.engine.load_checkpoint(str(path / "deepspeed"), tag="engine")
        self.step = int(state["step"])
        self.version = int(state["version"])
        if self.intake is not None:
            self.intake.restore(path.parent, self.step)
        return {"step": self.step, "version": self.version}
