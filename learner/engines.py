"""DeepSpeed engines of the learner: the policy and the critic train, the reference only infers.

All of them share the ZeRO stage and dtype of the job, so under ZeRO-3 every model is sharded
over the ranks, not only the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from relayrl.config import JobConfig


# DeepSpeed's own bucket defaults (elements), sized for multi-billion-parameter GPU jobs.
DEEPSPEED_BUCKET = 500_000_000
DEEPSPEED_PREFETCH_BUCKET = 50_000_000
# Floor of a derived bucket: still one large message for the collectives.
MIN_BUCKET = 1 << 22


def bucket_sizes(parameters: int) -> dict[str, int]:
    """ZeRO bucket sizes (elements) from the model size: an eighth of the model, between
    MIN_BUCKET and DeepSpeed's default. Each gradient bucket is allocated twice (ZeRO-2 overlaps
    reduction with backward) and filled up to its size, so at the default a 135M model keeps a
    whole extra copy of its gradients; an eighth keeps the reductions few and large."""

    def derived(default: int) -> int:
        return max(MIN_BUCKET, min(default, parameters // 8))

    return {
        "reduce_bucket_size": derived(DEEPSPEED_BUCKET),
        "allgather_bucket_size": derived(DEEPSPEED_BUCKET),
        "stage3_prefetch_bucket_size": derived(DEEPSPEED_PREFETCH_BUCKET),
    }


def _common_config(config: JobConfig, zero_stage: int, parameters: int) -> dict[str, Any]:
    return {
        # Micro-batching and accumulation are ours (token-budget packing); DeepSpeed only
        # needs consistent numbers here.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.learner.num_ranks,
        "zero_optimization": {"stage": zero_stage} | bucket_sizes(parameters),
        "bf16": {"enabled": config.model.dtype == "bfloat16"},
        "steps_per_print": 1 << 30,
    }


def training_config(config: JobConfig, parameters: int) -> dict[str, Any]:
    return _common_config(config, config.learner.resolved_zero_stage, parameters) | {
        "gradient_clipping": config.learner.grad_clip,
        "zero_allow_untested_optimizer": True,
    }


def inference_config(config: JobConfig, parameters: int) -> dict[str, Any]:
    # Below ZeRO-3 there is nothing to shard without an optimizer: every rank keeps a copy.
    stage = config.learner.resolved_zero_stage
    return _common_config(config, 3 if stage == 3 else 0, parameters)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def warmup_schedule(steps: int) -> Callable[[int], float]:
    """Linear warm-up of the learning rate over `steps` optimizer steps, then constant."""
    return lambda step: min(1.0, (step + 1) / steps) if steps else 1.0


def training_engine(model: nn.Module, config: JobConfig, lr: float) -> Any:
    """AdamW with the warm-up schedule, gradient clipping and the job's ZeRO stage."""
    import deepspeed

    learner = config.learner
    # The fused kernel updates all parameters in one pass: 0.15 s a step for a 135M model on
    # two CPU cores against 0.65 s for the per-tensor loop (BENCHMARKS.md).
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=learner.betas,
        weight_decay=learner.weight_decay,
        fused=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_schedule(learner.warmup_steps))
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=training_config(config, _parameters(model)),
    )
    return engine


def inference_engine(model: nn.Module, config: JobConfig) -> Any:
    """A frozen model in eval mode, sharded like the policy under ZeRO-3."""
    import deepspeed

    model.requires_grad_(False)
    engine, *_ = deepspeed.initialize(
        model=model, config=inference_config(config, _parameters(model))
    )
    engine.eval()
    return engine


def step_and_grad_norm(engine: Any) -> float:
    """engine.step(); returns the gradient norm before clipping. ZeRO-0 in fp32 clips without
    keeping the norm, so there it is measured first (gradients are already averaged)."""
    measured = float("nan")
    if engine.zero_optimization_stage() == 0 and not engine.bfloat16_enabled():
        norms = [p.grad.norm() for p in engine.module.parameters() if p.grad is not None]
        if norms:
            measured = float(torch.stack(norms).norm())
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else measured
